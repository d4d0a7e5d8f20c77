"""Replay the tuner's pruning on a study run without it: the work it would save, and what it would have cut.

Run a study with every trial measured on every task, then replay:

    autotune tune --model shapes --tasks shapes:change_color --trials 32 --no-prune --project-dir runs
    .venv/bin/python examples/replay_pruning.py --storage runs/studies.journal
    .venv/bin/python examples/replay_pruning.py --storage runs/studies.journal --confidence 0.95 --min-effect 0.1
    .venv/bin/python examples/replay_pruning.py --storage runs/studies.journal --shuffles 20  # 20 task orders

Each trial is compared, task by task, with the front of the trials finished before its batch, as `tune` does.
"Edits left" is the candidate-task edits the pruned run would have made over the unpruned run's; "front cut" lists
trials of the study's final front that the pruner would have stopped (its mistakes; the tuner would then have
lost them); "hypervolume kept" is that of the trials not stopped over that of all (objectives scaled to [0, 1]).
`--shuffles N` replays each study with its tasks in N random orders as well, since the outcome depends on which
tasks come first.
"""

from __future__ import annotations

import argparse

import numpy as np
import optuna

from autotune.tuning.pruning import DominationPruner, replay
from autotune.tuning.storage import open_storage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", required=True, help="a .journal path or a postgresql:// URL")
    parser.add_argument("--study", action="append", help="study name (repeatable); default: every study there")
    parser.add_argument("--batch", type=int, default=4, help="the batch the study was tuned with")
    defaults = DominationPruner()
    parser.add_argument("--confidence", type=float, default=defaults.confidence)
    parser.add_argument("--min-tasks", type=int, default=defaults.min_tasks)
    parser.add_argument("--min-effect", type=float, default=defaults.min_effect)
    parser.add_argument("--shuffles", type=int, default=0, help="also replay with the tasks in N random orders")
    parser.add_argument("--task-batch", type=int, default=1,
                        help="tasks between the pruner's decisions; 0: the tuner's default groups (--max-batch)")
    parser.add_argument("--max-batch", type=int, default=16, help="the editor's max_batch (with --task-batch 0)")
    args = parser.parse_args(argv)
    groups = {"task_batch": args.task_batch or None, "max_batch": args.max_batch}

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(args.storage).storage
    names = args.study or [s.study_name for s in optuna.get_all_study_summaries(storage)]
    pruner = DominationPruner(args.confidence, args.min_tasks, args.min_effect)
    print(f"pruner: confidence {pruner.confidence}, min_tasks {pruner.min_tasks}, min_effect {pruner.min_effect}")
    print("| study | trials | tasks | stopped | edits left | final front | front cut | hypervolume kept |")
    print("|---|---|---|---|---|---|---|---|")
    shuffled = []
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        result = replay(study, pruner, batch=args.batch, **groups)
        print(f"| {name} | {result.trials} | {result.tasks} | {len(result.stopped)} | {result.cost:.2f} | "
              f"{result.front} | {result.front_cut or 'none'} | {result.hypervolume_kept:.3f} |")
        for seed in range(args.shuffles):
            order = np.random.default_rng(seed).permutation(result.tasks).tolist()
            shuffled.append(replay(study, pruner, batch=args.batch, order=order, **groups))
    if shuffled:
        cut = [r for r in shuffled if r.front_cut]
        fronts = sum(len(r.front) for r in shuffled)
        lost = [1 - r.hypervolume_kept for r in cut]
        print(f"\nshuffled task orders: {len(shuffled)} replays; front trials cut: "
              f"{sum(len(r.front_cut) for r in cut)} of {fronts}, in {len(cut)} replays; edits left: "
              f"{np.mean([r.cost for r in shuffled]):.2f} on average"
              + (f"; hypervolume lost where a front trial was cut: median {np.median(lost):.1%}, "
                 f"at most {max(lost):.1%}" if lost else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
