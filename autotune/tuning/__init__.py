"""The tuner: a multi-objective Optuna study over editing parameters, its samplers, pruner and storage."""
