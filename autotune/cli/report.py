"""`autotune report`: a study's Pareto front, parameter slices and edit grid as PNGs, with an index.html.

Example:
    autotune report --study shapes--change_color--1a2b3c4d --out reports/color
    autotune report --study sd15-color --storage postgresql://user:password@db:5432/autotune --out reports/sd15
"""

from __future__ import annotations

import argparse

from autotune.cli._common import HelpFormatter
from autotune.errors import InputError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="write a study's front, slices and edit grid (PNG) and an index.html",
        description="Pictures of a tuning study: the Pareto front with the paper points and the preset picks, "
        "parameter slices, and an edit grid (source | paper default | conservative | balanced | aggressive) on a "
        "few of the study's tasks, with the model the study recorded.",
        formatter_class=HelpFormatter)
    parser.add_argument("--study", required=True, help="study name")
    parser.add_argument("--storage", help="a .journal path or postgresql://...; unset: <project-dir>/studies.journal")
    parser.add_argument("--project-dir", default=".autotune", help="embedded storage location")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--edit-tasks", type=int, default=4, help="tasks shown in the edit grid")
    parser.add_argument("--no-edits", action="store_true", help="skip the edit grid (no model needed)")
    parser.add_argument("--device", help="device for the edit grid (default: cuda when available)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import optuna

    from autotune.report import write_report
    from autotune.tuning.storage import open_storage

    store = open_storage(args.storage, project_dir=args.project_dir)
    names = optuna.get_all_study_names(store.storage)
    if args.study not in names:
        raise InputError(f"no study named {args.study!r} in {store.url}; studies there: "
                         f"{', '.join(sorted(names)) or 'none'}")
    study = optuna.load_study(study_name=args.study, storage=store.storage)
    if not args.no_edits:
        from autotune import threads

        threads.configure(None)  # the edit grid runs the model
    index = write_report(study, args.out, edit_tasks=args.edit_tasks, edits=not args.no_edits, device=args.device)
    print(index)
    return 0
