"""`autotune presets`: list, show, diff, export, import, verify, from-study.

Examples:
    autotune presets list
    autotune presets show change_color:aggressive --model stable-diffusion-v1-5/stable-diffusion-v1-5
    autotune presets export --out team-presets.zip presets/
    autotune presets import team-presets.zip            # into the user's presets directory
    autotune presets from-study --study shapes-change_color --storage postgresql://user@db/autotune --out presets/
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from autotune.errors import PresetError, StorageError
from autotune.presets.preset import Preset, PresetWarning
from autotune.presets.schema import PROVENANCE_KEYS
from autotune.presets.store import InstallResult, PresetStore, load_entry, user_presets_dir
from autotune.redact import redact_url


def register(subparsers: argparse._SubParsersAction) -> None:
    from autotune.cli._common import add_split_arguments

    parser = subparsers.add_parser(
        "presets",
        help="list, inspect, share and rebuild presets",
        description="Presets are looked up in: a path you give, ./presets, the user directory "
        "($AUTOTUNE_PRESETS_DIR or ~/.config/autotune/presets), then the presets shipped with autotune.",
    )
    parser.set_defaults(handler=lambda args: (parser.print_help(), 2)[1])
    sub = parser.add_subparsers(dest="presets_command", metavar="ACTION")

    p = sub.add_parser("list", help="the presets found, in lookup order")
    p.add_argument("--model", help="only presets made for this model id")
    p.add_argument("--category", help="only this edit category")
    p.add_argument(
        "--dir", action="append", type=Path, help="list this directory instead of the lookup path (repeatable)"
    )
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser("show", help="one preset: picks, front and provenance")
    p.add_argument("spec", help="CATEGORY[:STYLE] or PATH.json[:STYLE]")
    p.add_argument("--model", help="model id, to choose among presets of the same category")
    p.add_argument("--json", action="store_true", help="print the preset file as JSON")
    p.set_defaults(handler=cmd_show)

    p = sub.add_parser("diff", help="field-by-field differences between two presets")
    p.add_argument("a", help="CATEGORY or PATH.json")
    p.add_argument("b", help="CATEGORY or PATH.json")
    p.add_argument("--model", help="model id for category specs")
    p.set_defaults(handler=cmd_diff)

    p = sub.add_parser("export", help="write presets as a pack (a directory or .zip with an index of sha256 hashes)")
    p.add_argument("--out", required=True, type=Path, help="PACK.zip or a new directory")
    p.add_argument("sources", nargs="*", type=Path, help="preset files or directories (default: ./presets)")
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("import", help="verify a pack and add its presets (never overwrites silently)")
    p.add_argument("pack", type=Path, help="a pack made by `autotune presets export`: PACK.zip or its directory")
    p.add_argument("--into", type=Path, help=f"target directory (default: {user_presets_dir()})")
    p.add_argument("--force", action="store_true", help="replace existing presets even when not better")
    p.set_defaults(handler=cmd_import)

    p = sub.add_parser("verify", help="check packs, preset files or directories (hashes, validation); with no path, "
                       "every preset in the lookup order")
    p.add_argument("paths", nargs="*", type=Path,
                   help="PACK.zip, pack directories, preset files or directories; default: every directory of the "
                   "lookup order, each file with where it came from")
    p.set_defaults(handler=cmd_verify)

    p = sub.add_parser("from-study", help="rebuild presets from a study's stored trials (nothing is re-run)")
    p.add_argument("--study", action="append", help="study name (repeatable; default: every autotune study)")
    p.add_argument("--storage", required=True, help="storage URL or journal file, e.g. postgresql://user@host/db")
    p.add_argument("--out", required=True, type=Path, help="presets directory to write into")
    p.add_argument("--force", action="store_true", help="replace existing presets even when not better")
    p.set_defaults(handler=cmd_from_study)

    p = sub.add_parser("fit-predictor", help="fit the per-image predictor of a study's preset (style 'auto')",
                       description="Rebuild a study's preset and fit its per-image predictor on the study's "
                       "per-task scores (scikit-learn, cross-validated by image), then write the preset with its "
                       "predictor into --out. Loads the study's model to compute the tasks' features.")
    p.add_argument("--study", action="append", help="study name (repeatable; default: every autotune study)")
    p.add_argument("--storage", required=True, help="storage URL or journal file, e.g. postgresql://user@host/db")
    p.add_argument("--out", type=Path, help="presets directory to write into (default: your presets directory, "
                   "searched before the shipped presets; a file replaced there is kept in history/)")
    p.add_argument("--tasks", help="the study's tasks, as given to `autotune tune --tasks` (default: the source "
                   "the study recorded; checked against its task fingerprint)")
    add_split_arguments(p, "tune")
    p.add_argument("--model", help="the study's model (default: the one the study recorded)")
    p.add_argument("--device", help="cuda, cpu... (default: cuda when available)")
    p.add_argument("--trade-off", default="balanced", choices=("conservative", "balanced", "aggressive"),
                   help="the pick each image's own best is judged by, and its fallback")
    p.add_argument("--no-inversion-features", dest="inversion_features", action="store_false",
                   help="leave out the inversion's reconstruction error (cheaper 'auto' edits: no probe inversion)")
    p.add_argument("--max-candidates", type=int, default=8, metavar="N",
                   help="settings the predictor chooses among: the pick, then the study's settings that most help "
                   "choosing per image")
    p.add_argument("--seed", type=int, default=0, help="cross-validation folds and permutation seed")
    p.add_argument("--force", action="store_true", help="replace a preset in --out that another study made")
    p.set_defaults(handler=cmd_fit_predictor)


@contextlib.contextmanager
def _show_warnings() -> Iterator[None]:
    """Print preset warnings as one line each on stderr, without file/line noise."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PresetWarning)
        try:
            yield
        finally:
            for w in caught:
                if issubclass(w.category, PresetWarning):
                    print(f"autotune presets: warning: {w.message}", file=sys.stderr)


def _params_brief(params: Any) -> str:
    from autotune.params import FLOW_METHODS, window_steps

    text = f"{params.method} w_src={params.w_src} w_tgt={params.w_tgt} steps={params.steps}"
    if params.method in FLOW_METHODS:  # the window is half of a flow setting
        text += f" n_max={window_steps(params.n_max, params.steps)}/{params.steps}"
        if params.method == "flowedit":
            text += f" n_min={window_steps(params.n_min, params.steps)}/{params.steps} n_avg={params.n_avg}"
    return text


# ---------------------------------------------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    store = PresetStore([("dir", d) for d in args.dir]) if args.dir else PresetStore()
    category = None
    if args.category:
        from autotune.task import category_name

        try:
            category = category_name(args.category)
        except ValueError as exc:
            raise PresetError(str(exc)) from None
    print("lookup order: " + ", ".join(f"{o}={d}" for o, d in store.dirs))
    seen: set[tuple[str, str]] = set()
    rows = 0
    for entry in store.entries():
        if entry.preset is None:
            print(f"  BROKEN  {entry.path}: {entry.error}")
            continue
        preset = entry.preset
        if category and preset.category != category:
            continue
        if args.model and not preset.matches_model(args.model):
            continue
        key = (preset.model["id"], preset.category)
        shadowed = " (shadowed)" if key in seen else ""
        seen.add(key)
        rows += 1
        kind = preset.kind + _trials_note(preset.provenance)
        kind += ", auto" if preset.predictor is not None else ""
        print(f"  {entry.origin:7s} {preset.category:17s} {preset.model['id']}  [{kind}]{shadowed}")
        print(f"          balanced: {_params_brief(preset.params())}  ({entry.path})")
    if not rows:
        print("  no presets found")
    return 0


def _trials_note(provenance: dict[str, Any]) -> str:
    """", 15 of 32 trials complete": the completed trials are what the front stands on, the rest were pruned or
    failed."""
    complete, total = provenance.get("n_complete"), provenance.get("n_trials")
    if complete is None:
        return ""
    return f", {complete} of {total} trials complete" if total is not None else f", {complete} trials complete"


def _resolve(spec: str, model: str | None) -> tuple[Preset, str]:
    return PresetStore().resolve(spec, model)


# provenance fields `show` prints on their own lines before the rest (or not at all: the space, the base params)
_SHOWN_ABOVE = ("kind", "study", "citation", "search_space", "base_params", "migrated_from", "task_source",
                "task_digests")


def cmd_show(args: argparse.Namespace) -> int:
    with _show_warnings():
        preset, style = _resolve(args.spec, args.model)
    if args.json:
        print(preset.dumps(), end="")
        return 0
    prov = preset.provenance
    print(f"preset      {preset.label}")
    print(f"category    {preset.category}")
    print(
        f"model       {preset.model['id']}  revision={preset.model.get('revision')}  "
        f"weights={preset.model.get('file_hash')}"
    )
    if preset.model.get("applies_to"):
        print(f"applies to  {', '.join(preset.model['applies_to'])}")
    print(f"scheduler   {json.dumps(preset.model.get('scheduler', {}), sort_keys=True)}")
    print(f"kind        {preset.kind}" + (f"  ({prov['citation']})" if prov.get("citation") else ""))
    study = prov.get("study") or {}
    if study:
        print(f"study       {study.get('name')} @ {redact_url(study.get('storage'))}")
    if prov.get("task_source") or prov.get("task_digests") is not None:
        source = prov.get("task_source") or {}
        listed = prov.get("task_digests")
        where = ", ".join(f"{k} {source[k]}" for k in ("spec", "split", "heldout_fraction") if k in source)
        print(f"tuned on    {where or 'tasks of unrecorded origin'}"
              + (f"; {len(listed)} task digests listed" if listed is not None else ""))
    for key in (k for k in PROVENANCE_KEYS if k not in _SHOWN_ABOVE):
        if prov.get(key) is not None:
            print(f"{key:11s} {prov[key] if not isinstance(prov[key], dict) else json.dumps(prov[key])}")
    for objective in preset.objectives:
        print(f"objective   {objective['name']} ({objective['direction']}) = {objective.get('metrics')}")
    print("picks:")
    for name, pick in preset.picks.items():
        mark = "*" if name == style else " "
        print(f" {mark} {name:13s} {_params_brief(pick['params'])}  front[{pick.get('front_index')}]")
    if preset.front:
        print(f"front ({len(preset.front)} points, best fidelity first):")
        for i, point in enumerate(preset.front):
            values = point.values or {}
            tags = [n for n, p in preset.picks.items() if p.get("front_index") == i]
            print(
                f"  [{i}] fidelity={values.get('fidelity'):.4g} edit_strength={values.get('edit_strength'):.4g}  "
                f"{_params_brief(point.params)}  trial {point.trial}" + (f"  <- {', '.join(tags)}" if tags else "")
            )
    for point in preset.references:
        values = point.values or {}
        print(
            f"  reference {point.paper_point}: fidelity={values.get('fidelity'):.4g} "
            f"edit_strength={values.get('edit_strength'):.4g}"
        )
    _show_predictor(preset)
    print(f"content     {preset.content_hash}")
    return 0


def _show_predictor(preset: Preset) -> None:
    """What style 'auto' would use: the model, its candidates, its cross-validated gain and fallback."""
    if preset.predictor is None:
        if preset.predictor_error:
            print(f"predictor   refused: {preset.predictor_error}")
        return
    pred, fit = preset.predictor, preset.predictor.fit
    study = (fit.get("study") or {}).get("name")
    print(f"predictor   {fit.get('selected', pred.kind)}  (style auto; trade-off {pred.trade_off})")
    print(f"            fitted on study {study} ({fit.get('tasks')} tasks of {fit.get('images')} images); "
          f"fallback beyond distance {pred.threshold:.3g}")
    gain = fit.get("cv_gain") or {}
    if gain:
        print(f"            cross-validated gain over the {pred.trade_off} pick: fidelity {gain.get('fidelity'):+.4g}, "
              f"edit strength {gain.get('edit_strength'):+.4g}")
    for i, params in enumerate(pred.candidates):
        mark = "  <- fallback" if i == pred.pick_index else ""
        print(f"  candidate [{i}] {_params_brief(params)}{mark}")


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(data, list):
        out = {}
        for i, value in enumerate(data):
            out.update(_flatten(value, f"{prefix}[{i}]"))
        return out or {prefix: []}
    return {prefix: data}


def preset_diff(a: Preset, b: Preset) -> list[str]:
    """Differences as `field: a -> b` lines (the content hash and creation stamp left out)."""
    ignore = ("content_hash", "provenance.created")
    da, db = a.to_dict(), b.to_dict()
    lines = []
    ta, tb = da["provenance"].pop("task_digests", None), db["provenance"].pop("task_digests", None)
    if ta != tb:  # a list of digests, one a task: say how many, and how many in common, not each one
        shared = len(set(ta or []) & set(tb or []))
        lines.append(f"provenance.task_digests: {_tasks_listed(ta)} -> {_tasks_listed(tb)} ({shared} in common)")
    fa, fb = _flatten(da), _flatten(db)
    for key in sorted(set(fa) | set(fb)):
        if key in ignore:
            continue
        va, vb = fa.get(key, "<absent>"), fb.get(key, "<absent>")
        if va != vb:
            lines.append(f"{key}: {json.dumps(va)} -> {json.dumps(vb)}")
    return lines


def _tasks_listed(digests: list[str] | None) -> str:
    return "<absent>" if digests is None else f"{len(digests)} tasks"


def cmd_diff(args: argparse.Namespace) -> int:
    with _show_warnings():
        a, _ = _resolve(args.a, args.model)
        b, _ = _resolve(args.b, args.model)
    print(f"--- {a.label}\n+++ {b.label}")
    lines = preset_diff(a, b)
    for line in lines:
        print(line)
    if not lines:
        print("no differences")
    return 0 if not lines else 1


def cmd_export(args: argparse.Namespace) -> int:
    from autotune.presets.pack import export_pack

    sources = args.sources or [Path("presets")]
    for source in sources:
        if not source.exists():
            raise PresetError(f"{source} does not exist; give preset files or directories to export")
    with _show_warnings():
        report = export_pack(sources, args.out)
    for line in report.lines():
        print(line)
    print(f"wrote {args.out}: {report.count('exported')} preset(s)")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from autotune.presets.pack import import_pack

    target = args.into or user_presets_dir()
    with _show_warnings():
        report = import_pack(args.pack, target, force=args.force)
    for line in report.lines():
        print(line)
    if not report.ok:
        print(f"{args.pack} failed verification: nothing was imported", file=sys.stderr)
        return 1
    summary = ", ".join(f"{report.count(a)} {a}" for a in ("added", "replaced", "unchanged", "kept") if report.count(a))
    print(f"imported into {target}: {summary or 'nothing'}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from autotune.presets.pack import INDEX_NAME, verify_pack

    if not args.paths:
        return _verify_lookup_order()
    bad = 0
    for path in args.paths:
        if path.suffix.lower() == ".zip" or (path / INDEX_NAME).is_file():
            report = verify_pack(path)
            for line in report.lines():
                print(f"{path}: {line}")
            bad += sum(1 for i in report.items if i.action == "rejected")
            continue
        if not path.exists():
            raise PresetError(f"{path} does not exist; give preset files, directories or packs to verify "
                              "(or nothing: every preset in the lookup order)")
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        bad += sum(not _verify_file(file) for file in files)
    return 0 if bad == 0 else 1


def _verify_lookup_order() -> int:
    """Every preset that `edit --preset` and `Editor(presets=True)` could load, with the directory it came from."""
    store = PresetStore()
    print("lookup order: " + ", ".join(f"{o}={d}" for o, d in store.dirs))
    bad = files = 0
    for origin, directory in store.dirs:
        found = sorted(p for p in directory.glob("*.json") if not p.name.startswith(".")) if directory.is_dir() else []
        files += len(found)
        bad += sum(not _verify_file(file, origin) for file in found)
    print(f"{files} preset file(s) checked, {bad} rejected")
    return 0 if bad == 0 else 1


def _verify_file(file: Path, origin: str = "") -> bool:
    """Print `ok` or `rejected` for one preset file, loaded strictly (a stale content hash is an error)."""
    where = f"{origin:8s}" if origin else ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PresetWarning)
            preset = Preset.load(file, strict=True)
    except PresetError as exc:
        print(f"rejected  {where}{file}  ({exc})")
        return False
    note = "; ".join(load_entry(file, origin or "verify").warnings)  # unknown keys and the like, shown not fatal
    warning = f"  warning: {note}" if note else ""
    print(f"ok        {where}{file}  ({preset.category}, {preset.model['id']}){warning}")
    return True


def _open_storage(url: str) -> tuple[Any, str]:
    """(optuna storage, redacted label) through the tuner's storage module when present."""
    from sqlalchemy.exc import SQLAlchemyError

    label = redact_url(url) or ""
    try:
        from autotune.tuning.storage import open_storage
    except ModuleNotFoundError:
        open_storage = None
    try:
        if open_storage is not None:
            opened = open_storage(url)
            return opened.storage, opened.url
        if "://" in url:
            import optuna

            return optuna.storages.RDBStorage(url), label
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        if not Path(url).is_file():
            raise StorageError(f"storage {label!r} is neither a database URL nor an existing journal file")
        return JournalStorage(JournalFileBackend(url)), label
    except StorageError:
        raise
    except (ImportError, OSError, ValueError, RuntimeError, SQLAlchemyError) as exc:  # never echo the password
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        message = message.replace(url, label)
        raise StorageError(f"cannot open storage {label}: {redact_url(message)}") from None


def cmd_from_study(args: argparse.Namespace) -> int:
    from autotune.tuning.to_preset import presets_from_storage

    storage, label = _open_storage(args.storage)
    with _show_warnings():
        presets = presets_from_storage(storage, args.study, storage_label=label)
        store = PresetStore([])
        for preset in presets:
            result = store.add(preset, args.out, force=args.force)
            print(f"{result}  [study {preset.provenance.get('study', {}).get('name')}]")
    return 0


def cmd_fit_predictor(args: argparse.Namespace) -> int:
    import optuna

    from autotune.tuning import contract
    from autotune.tuning.to_preset import presets_from_storage  # noqa: F401 - fails early if optuna is missing

    storage, label = _open_storage(args.storage)
    names = args.study or [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
                           if contract.written_by_autotune(s.user_attrs)]
    if not names:
        raise PresetError(f"no study written by `autotune tune` in {label}")
    for name in names:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            raise PresetError(f"no study named {name!r} in {label}") from None
        with _show_warnings():
            preset, report = fit_study_predictor(study, args, label)
            saved = write_with_predictor(preset, args.out, force=args.force)
        print(f"study {name!r}:")
        for line in report.lines():
            print(f"  {line}")
        print(f"  wrote {saved.path}" + (f" (the previous file kept as {saved.previous})" if saved.previous else ""))
    return 0


def fit_study_predictor(study: Any, args: argparse.Namespace, label: str | None) -> tuple[Preset, Any]:
    """The study's preset with its predictor: the tasks from --tasks or the study's record, the model likewise."""
    from autotune.errors import InputError
    from autotune.report.read import study_editor, study_tasks
    from autotune.tuning import contract
    from autotune.tuning.fit_predictor import preset_with_predictor

    category = study.user_attrs.get(contract.CATEGORY)
    if args.tasks:
        from autotune.tasks.sources import load_tasks, shapes_world_of

        recorded = study.user_attrs.get(contract.TASK_SOURCE)
        version = (recorded or {}).get("world_version") if isinstance(recorded, dict) else None
        version = int(version or shapes_world_of(args.model))
        tasks = sorted((t for t in load_tasks(args.tasks, category, args.split, args.heldout_fraction, version)
                        if t.category == category),
                       key=lambda t: t.id)
    else:
        found, why = study_tasks(study)
        if found is None:
            raise InputError(f"study {study.study_name!r}: its tasks cannot be found ({why}); give --tasks")
        tasks = found
    if args.model:
        from autotune.engine.editor import Editor

        editor = Editor.from_pretrained(args.model, device=args.device, progress=False)
    else:
        editor = study_editor(study, args.device)
    if args.max_candidates < 2:
        raise InputError(f"--max-candidates {args.max_candidates}: a predictor chooses among at least 2 settings")
    return preset_with_predictor(study, editor, tasks, trade_off=args.trade_off,
                                 inversion_features=args.inversion_features, seed=args.seed, storage_label=label,
                                 max_candidates=args.max_candidates)


def write_with_predictor(preset: Preset, directory: Path | None, force: bool = False) -> InstallResult:
    """Write `preset` (carrying a predictor) into `directory` (default: the user's presets directory) over the same
    preset (with or without an older predictor), keeping the file it replaces in history/; another preset is
    replaced only with `force`. The shipped presets are refused."""
    from autotune.presets.store import save_preset

    return save_preset(preset, directory, same_result_only=not force)
