"""Editing a batch of candidates over tasks and scoring them; evaluating fixed parameters on a task set."""
