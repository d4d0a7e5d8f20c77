"""`autotune tune`: search the guidance pair (and any other knob) for one model and edit category.

Examples:
    autotune tune --model shapes --tasks shapes:change_color --category change_color --trials 32
    autotune tune --model sd15 --tasks piebench/ --category change_color --trials 200 --batch 8 \\
        --storage postgresql://user:password@db:5432/autotune --study sd15-color
    autotune tune --model sd3 --tasks piebench/ --category change_color --trials 100 --method flowedit
Run the same command again to resume: completed trials are kept, the study continues up to --trials.
"""

from __future__ import annotations

import argparse
import sys

from autotune.errors import InputError


def register(subparsers) -> None:
    from autotune.cli._common import HelpFormatter, add_model_arguments, add_param_arguments, add_split_arguments
    from autotune.tuning.samplers import DEFAULT_SAMPLER, SAMPLERS

    parser = subparsers.add_parser(
        "tune",
        help="tune the guidance pair for one edit category (a multi-objective Optuna study)",
        description="Search (w_src, w_tgt) and any opened knob on the tasks of one category, trading fidelity "
        "against edit strength; write the category's preset. Resumable: re-run the same command.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--tasks", required=True,
                        help="shapes:<category>[:<count>], a PIE-Bench directory (mapping_file.json), "
                        "or a .jsonl/.csv")
    parser.add_argument("--category", help="edit category (id 0-9 or name); unset: the one of shapes:<category>")
    add_split_arguments(parser, default="tune")
    parser.add_argument("--trials", type=int, required=True, help="the study's total trial budget")
    parser.add_argument("--batch", type=int, default=4, help="trials evaluated together")
    parser.add_argument("--task-batch", type=int, metavar="N",
                        help="tasks edited in one engine call (the pruner decides between calls); unset: as many "
                        "as the editor's max_batch target branches hold, 4 tasks at --batch 4")
    parser.add_argument("--no-invert-ahead", dest="invert_ahead", action="store_false",
                        help="invert each chunk of tasks when it is edited, not all of a batch's tasks at once "
                        "(fewer wasted inversions of pruned trials, more and smaller UNet calls)")
    parser.add_argument("--storage", help="a .journal path or postgresql://user:password@host:5432/db; "
                        "unset: <project-dir>/studies.journal")
    parser.add_argument("--study", help="study name; unset: <model>--<category>--<task fingerprint>")
    parser.add_argument("--sampler", choices=SAMPLERS, default=DEFAULT_SAMPLER,
                        help="Optuna sampler; tpe counts a new w_src's inversion cost, tpe-plain does not "
                        "(docs/tuning.md, Samplers)")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (other workers derive their own)")
    parser.add_argument("--presets-dir", help="where the preset is written; a preset it replaces is kept in its "
                        "history/ folder. Unset: your presets directory ($AUTOTUNE_PRESETS_DIR, else "
                        "~/.config/autotune/presets), searched before the presets shipped with autotune")
    parser.add_argument("--project-dir", default=".autotune", help="embedded storage and artifacts")
    parser.add_argument("--space", action="append", default=[], metavar="KNOB=RANGE",
                        help="search a knob: w_src=0:2:0.1 (the default on SD 1.x/2.x), w_tgt=1:12, steps=10:50:10, "
                        "cross_replace=0.2:0.8, method=siminversion,ddim; on SD3 / FLUX.1 n_max=0.3:1, n_avg=1:4 "
                        "(repeatable; w_src and w_tgt are searched by default, with n_max and n_min for FlowEdit)")
    parser.add_argument("--fidelity", metavar="DIR:METRIC[=W],...", help="e.g. minimize:structure_distance=1,lpips=1")
    parser.add_argument("--strength", metavar="DIR:METRIC[=W],...", help="e.g. maximize:clip_edited")
    parser.add_argument("--scorer", choices=("auto", "piebench", "shapes"), default="auto",
                        help="auto: the shapes world's scorer for shapes tasks, else PIE-Bench's metrics")
    parser.add_argument("--no-prune", action="store_true", help="score every candidate on every task")
    parser.add_argument("--prune-confidence", type=float, default=0.9, metavar="C",
                        help="stop a candidate once a front trial dominates it with this confidence (0.5-1; higher "
                             "stops later and cuts fewer front trials; docs/tuning.md)")
    parser.add_argument("--no-inversion-cache", action="store_true",
                        help="do not keep inversions in <project-dir>/inversions for re-runs and other workers")
    parser.add_argument("--cache-mb", type=int, default=2048, metavar="MB",
                        help="memory for cached inversions and recorded source branches; a source branch record "
                        "over a quarter of it is not kept (docs/tuning.md)")
    parser.add_argument("--predictor", action="store_true",
                        help="at the end, fit the preset's per-image predictor on the study's per-task scores (style "
                        "'auto'; `autotune presets fit-predictor` does the same later)")
    parser.add_argument("--report", action="store_true",
                        help="at the end, compare the front with the paper points and write the visual report "
                        "(front, slices, edit grid, index.html) to <project-dir>/reports/<study>; print its path")
    add_param_arguments(parser, "base editing parameters (every knob the study does not search; default: the "
                                "model's published setting)")
    add_model_arguments(parser)
    parser.set_defaults(handler=run)


def _space(args: argparse.Namespace, editor, overrides: dict):
    """The editor's family's default space for the method asked for, the --space knobs added or replaced, on the base
    parameters the command line gives (the published setting otherwise)."""
    from autotune.cli._common import param_overrides
    from autotune.tuning.search_space import SearchSpace, family_defaults

    params = param_overrides(args)
    base = family_defaults(editor, params.get("method")).params.with_(**params)
    return SearchSpace.for_editor(editor, base, **overrides)


def _objectives(args: argparse.Namespace, scorer):
    from autotune.scoring.objectives import Objectives, default_objectives, parse_objective_arg

    if not args.fidelity and not args.strength:
        return None
    base = default_objectives(scorer.metrics()) if not (args.fidelity and args.strength) else None
    fid = parse_objective_arg("fidelity", args.fidelity) if args.fidelity else base.fidelity
    strength = parse_objective_arg("edit_strength", args.strength) if args.strength else base.edit_strength
    return Objectives(fid, strength)


def report(result) -> str:
    """The front, the paper points and how far tuning moved from them."""
    from autotune import pareto

    lines = [result.summary()]
    signs = pareto.signs([d.name.lower() for d in result.study.directions])
    for name, trial in result.paper_points().items():
        better = [t for t in result.front if pareto.weakly_dominates(signs * t.values, signs * trial.values)]
        lines.append(f"paper point {name} (trial {trial.number}): fidelity {trial.values[0]:.4g}, edit strength "
                     f"{trial.values[1]:.4g}; {len(better)} front point(s) dominate or match it")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from autotune.cli._common import check_overrides, load_editor, make_scorer, param_overrides, task_source
    from autotune.task import category_name
    from autotune.tasks.sources import load_tasks, shapes_spec, shapes_world_of
    from autotune.tuning.pruning import DominationPruner
    from autotune.tuning.tuner import tune

    pruner = None if args.no_prune else DominationPruner(confidence=args.prune_confidence)
    if args.cache_mb < 1:
        raise InputError(f"--cache-mb {args.cache_mb}: give the memory for the cache in MB, at least 1")
    if args.task_batch is not None and args.task_batch < 1:
        raise InputError(f"--task-batch {args.task_batch}: give the tasks per engine call, at least 1")
    category = args.category or (shapes_spec(args.tasks)[0] if args.tasks.startswith("shapes:") else None)
    if not category:
        raise InputError("--category is required (an id 0-9 or a name such as change_color)")
    try:
        category = category_name(category)
    except ValueError as exc:  # name the option the category came from
        raise InputError(f"{'--category' if args.category else '--tasks ' + args.tasks}: {exc}") from None
    from pathlib import Path

    from autotune.presets.store import check_presets_dir, user_presets_dir
    from autotune.tuning.search_space import parse_knob_arg
    from autotune.tuning.storage import open_storage

    knobs = dict(parse_knob_arg(text) for text in args.space)  # checked now; the space needs the model's defaults
    check_overrides(param_overrides(args))
    presets_dir = Path(args.presets_dir) if args.presets_dir else user_presets_dir()
    check_presets_dir(presets_dir)  # found now, not when the preset is written hours later
    store = open_storage(args.storage, project_dir=args.project_dir)  # a bad URL fails before any model loads
    tasks = load_tasks(args.tasks, category, args.split, args.heldout_fraction, shapes_world_of(args.model))
    editor = load_editor(args)
    space = _space(args, editor, knobs)
    editor.progress = False  # the tuner's own bar says what matters; per-edit bars would drown it
    if getattr(editor, "cache", None) is not None:
        from autotune.engine.cache import TensorCache

        # Inversions on disk: re-runs, retries and other workers on this machine reuse them.
        keep_on_disk = not args.no_inversion_cache and editor.cache.directory is None
        directory = Path(args.project_dir) / "inversions" if keep_on_disk else editor.cache.directory
        editor.cache = TensorCache(max_bytes=args.cache_mb << 20, directory=directory)
    scorer = make_scorer(args, editor)
    result = tune(editor, tasks, category=category, trials=args.trials, batch=args.batch, storage=store,
                  study_name=args.study, sampler=args.sampler, seed=args.seed, scorer=scorer,
                  objectives=_objectives(args, scorer), search_space=space, presets_dir=presets_dir,
                  progress=not args.quiet, prune=pruner or False, project_dir=args.project_dir,
                  task_source=task_source(args), task_batch=args.task_batch,
                  invert_ahead=args.invert_ahead)
    print(report(result) if args.report else result.summary())
    if result.preset_path is None:
        print("no trial completed: no preset written")
    preset = result.preset
    if result.preset_path is not None and args.predictor:
        from autotune.errors import PresetError
        from autotune.tuning.fit_predictor import preset_with_predictor

        try:
            preset, fit = preset_with_predictor(result.study, editor, tasks, storage_label=result.storage)
        except (InputError, PresetError) as exc:  # the study and preset are saved; say how to fit it later
            name = result.study.study_name
            storage = f"--storage {args.storage}" if args.storage else \
                f"--storage {Path(args.project_dir) / 'studies.journal'}"
            print(f"error: no predictor fitted: {exc}. The study and the preset are saved; fit it later with: autotune "
                  f"presets fit-predictor {storage} --study {name} --out {presets_dir}", file=sys.stderr)
            return 1
        from autotune.presets.store import save_preset

        # Over the preset tune just wrote (or kept): an older predictor of the same result goes to history/.
        saved = save_preset(preset, presets_dir, same_result_only=True)
        print("predictor:\n" + "\n".join(f"  {line}" for line in fit.lines()))
        print(f"preset with its predictor written to {saved.path}"
              + (f" (the previous file kept as {saved.previous})" if saved.previous else ""))
    if preset is not None:
        from autotune.report.dashboard import annotate

        annotate(result.study, preset, result.preset_path)  # the preset's provenance, in `autotune dashboard`
    if result.preset_path is not None and args.report:
        from autotune.report import write_report

        name = result.study.study_name
        out = Path(args.project_dir) / "reports" / name
        try:
            index = write_report(result.study, out, editor=editor, tasks=tasks)
        except Exception as exc:  # the study and preset are saved; say so rather than end on a traceback
            storage = f" --storage {args.storage}" if args.storage else f" --project-dir {args.project_dir}"
            print(f"error: the report could not be drawn ({type(exc).__name__}: {exc}). The study and the preset "
                  f"are saved; draw the report again with: autotune report --study {name}{storage} --out {out}",
                  file=sys.stderr)
            return 1
        print(f"report: {index}")
    return 0
