"""The preset file format: strict parsing, validation, schema migrations and the content hash.

A preset file is untrusted data: it is read with `json` only (no NaN, no duplicate keys, at most
`MAX_PRESET_BYTES`), every field is checked by type and range with an error that names the file and the field,
older schema versions are migrated step by step, unknown keys are warned about and dropped, and the stored
content hash is checked against the content. `check_preset` turns a parsed dict into the fields a `Preset` is
built from; nothing here builds one (see `autotune.presets.preset`).
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from autotune import atomic
from autotune.errors import PresetError
from autotune.params import EditParams
from autotune.redact import has_password, redact_url
from autotune.task import category_name

SCHEMA_VERSION = 1
MAX_PRESET_BYTES = 4 * 1024 * 1024  # a front of a few thousand points fits; anything bigger is refused unread
MAX_TASK_DIGESTS = 50_000  # tuning tasks a preset lists (26 bytes each as written: 1.3 MB at most)
TASK_DIGEST = re.compile(r"[0-9a-f]{16}")  # `autotune.task.task_digest`
SPLITS = ("tune", "heldout", "all")
STYLES = ("conservative", "balanced", "aggressive")
OBJECTIVES = ("fidelity", "edit_strength")
DIRECTIONS = ("maximize", "minimize")
PROVENANCE_KINDS = ("tuned", "paper_default", "hand_made")

# Scheduler settings that change the noise schedule itself: a difference refuses the preset.
SCHEDULER_STRICT_KEYS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "rescale_betas_zero_snr",
    "shift",  # rectified flow (FlowMatchEulerDiscreteScheduler): the noise schedule's shift
    "use_dynamic_shifting",
)
# Settings that shift timesteps slightly: a difference is reported as a warning.
SCHEDULER_LOOSE_KEYS = ("steps_offset", "timestep_spacing", "set_alpha_to_one", "clip_sample", "_class_name")

_TOP_KEYS = {
    "schema_version",
    "category",
    "model",
    "method",
    "steps",
    "default_style",
    "picks",
    "front",
    "references",
    "objectives",
    "scorer",
    "provenance",
    "predictor",
    "content_hash",
}
_MODEL_KEYS = {"id", "revision", "file_hash", "applies_to", "scheduler", "scheduler_mode", "notes"}
_POINT_KEYS = {"params", "values", "metrics", "trial", "paper_point"}
_PICK_KEYS = {"params", "front_index"}
PROVENANCE_KEYS = (  # in the order `autotune presets show` prints them
    "kind",
    "study",
    "sampler",
    "n_trials",
    "n_complete",
    "task_fingerprint",
    "task_count",
    "task_source",
    "task_digests",
    "created",
    "author",
    "autotune_version",
    "citation",
    "notes",
    "search_space",
    "base_params",
    "migrated_from",
)


class PresetWarning(UserWarning):
    """Something in a preset worth knowing that does not stop it from being used."""



def canonical_json(data: Any) -> str:
    """The byte-stable JSON form that the content hash is taken over: sorted keys, no spaces, no NaN."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def content_hash_of(data: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a preset dict without its `content_hash` field."""
    body = {k: v for k, v in data.items() if k != "content_hash"}
    return "sha256:" + hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def atomic_write_text(path: str | Path, text: str, what: str = "file") -> Path:
    """Write `text` atomically (`autotune.atomic`); a failure is a PresetError saying what and where, and
    leaves `path` untouched."""
    path = Path(path)
    try:
        return atomic.write_text(path, text)
    except OSError as exc:
        raise PresetError(_write_error(exc, path.parent, what)) from None


def _write_error(exc: OSError, directory: Path, what: str) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "the directory is read-only or not yours: choose another with --out / $AUTOTUNE_PRESETS_DIR"
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "the disk is full: free space and try again"
    else:
        hint = exc.strerror or type(exc).__name__
    return (
        f"cannot write the {what} in {directory}: {hint} ({exc.strerror}); "
        "nothing was written, any previous file is unchanged"
    )


def read_capped(path: str | Path, limit: int, what: str) -> bytes:
    """Read a regular file, refusing it before reading when it is bigger than `limit` bytes."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise PresetError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise PresetError(f"cannot read {what} {path}: {exc.strerror}") from None
    import stat as _stat

    if not _stat.S_ISREG(info.st_mode):
        raise PresetError(f"{what} {path} is not a regular file")
    if info.st_size > limit:
        raise PresetError(f"{what} {path} is {info.st_size} bytes, over the {limit}-byte limit: refused unread")
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise PresetError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise PresetError(f"{what} {path} grew past the {limit}-byte limit while being read: refused")
    return data


def parse_json(text: str, source: str) -> Any:
    """Strict JSON: no NaN/Infinity, no duplicate keys; errors name the file, line and column."""

    def no_constants(name: str) -> Any:
        raise PresetError(f"{source}: {name} is not allowed (JSON numbers must be finite; write null for 'unknown')")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise PresetError(f"{source}: key {key!r} appears twice in the same object")
            out[key] = value
        return out

    try:
        return json.loads(text, parse_constant=no_constants, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise PresetError(f"{source}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise PresetError(f"{source}: JSON nested too deeply") from None



# ---------------------------------------------------------------------------------------------------------------------
# Schema migration


def _migrate_0_to_1(data: dict[str, Any]) -> dict[str, Any]:
    """Version 0 (hypothetical, never released): a flat hand-written file
    `{"schema_version": 0, "category", "model_id", "method", "w_src", "w_tgt", "steps"}`.
    It becomes a version-1 hand-made preset whose three picks are that one parameter set."""
    param_keys = {"method", "w_src", "w_tgt", "steps", "cross_replace", "self_replace", "reweight", "blend_threshold"}
    params = {k: data[k] for k in param_keys if k in data}
    pick = {"params": params, "front_index": None}
    return {
        "schema_version": 1,
        "category": data.get("category"),
        "model": {"id": data.get("model_id"), "scheduler": {}},
        "default_style": "balanced",
        "picks": {style: copy.deepcopy(pick) for style in STYLES},
        "front": [],
        "objectives": [],
        "scorer": {},
        "provenance": {"kind": "hand_made", "migrated_from": 0, "notes": data.get("notes", "")},
    }


# MIGRATIONS[v] turns a version-v dict into a version-(v+1) dict. To introduce version 2: bump SCHEMA_VERSION,
# write `_migrate_1_to_2(data) -> data` (pure data in, data out) and register it here; add a test with a v1 file.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: _migrate_0_to_1}


def migrate(data: dict[str, Any], source: str = "<preset>") -> dict[str, Any]:
    """Bring a parsed preset dict up to SCHEMA_VERSION, one step at a time."""
    version = data.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise PresetError(
            f"{source}: schema_version must be a whole number (this autotune writes {SCHEMA_VERSION}), got {version!r}"
        )
    if version > SCHEMA_VERSION:
        raise PresetError(
            f"{source}: schema_version {version} was written by a newer autotune (this one reads up to "
            f"{SCHEMA_VERSION}); upgrade autotune to use it"
        )
    while version < SCHEMA_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise PresetError(f"{source}: schema_version {version} is not supported and cannot be migrated")
        data = step(data)
        version = data["schema_version"]
    return data



# ---------------------------------------------------------------------------------------------------------------------
# Validation helpers: each raises PresetError naming the file and the field


def _fail(source: str, where: str, message: str) -> PresetError:
    return PresetError(f"{source}: {where}: {message}")


def _warn_unknown(source: str, where: str, data: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        warnings.warn(f"{source}: {where}: unknown key(s) {', '.join(unknown)} ignored", PresetWarning, stacklevel=4)


def _dict(value: Any, source: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(source, where, f"must be an object, got {type(value).__name__}")
    return value


def _opt_str(value: Any, source: str, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _fail(source, where, f"must be a string or null, got {type(value).__name__}")
    return value


def _number(value: Any, source: str, where: str, allow_null: bool = False) -> float | None:
    if value is None and allow_null:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(source, where, f"must be a finite number{' or null' if allow_null else ''}, got {value!r}")
    return float(value)


def _count(value: Any, source: str, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(source, where, f"must be a whole number >= 0, got {value!r}")
    return value


def _edit_params(value: Any, source: str, where: str) -> EditParams:
    data = _dict(value, source, where)
    try:
        return EditParams.from_dict(data)
    except (ValueError, TypeError, KeyError) as exc:
        raise _fail(source, where, str(exc)) from None



def directions_of(objectives: Sequence[Mapping[str, Any]], where: str, source: str = "<preset>") -> tuple[str, str]:
    by_name: dict[str, str] = {}
    for i, objective in enumerate(objectives):
        name, direction = objective.get("name"), objective.get("direction")
        if name not in OBJECTIVES:
            raise _fail(source, f"{where}[{i}].name", f"{name!r} is not one of {', '.join(OBJECTIVES)}")
        if direction not in DIRECTIONS:
            raise _fail(source, f"{where}[{i}].direction", f"{direction!r} must be maximize or minimize")
        metrics = objective.get("metrics", {})
        if not isinstance(metrics, dict) or not all(
            isinstance(k, str) and not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
            for k, v in metrics.items()
        ):
            raise _fail(source, f"{where}[{i}].metrics", "must map metric names to finite weights")
        by_name[name] = direction
    if set(by_name) != set(OBJECTIVES) or len(objectives) != 2:
        raise _fail(source, where, f"must list exactly the objectives {', '.join(OBJECTIVES)}, once each")
    return by_name["fidelity"], by_name["edit_strength"]



def _check_model(value: Any, source: str) -> dict[str, Any]:
    model = _dict(value, source, "model")
    _warn_unknown(source, "model", model, _MODEL_KEYS)
    if not isinstance(model.get("id"), str) or not model["id"].strip():
        raise _fail(source, "model.id", "must be the model's hub id, folder or file name")
    for key in ("revision", "file_hash", "scheduler_mode", "notes"):
        _opt_str(model.get(key), source, f"model.{key}")
    applies = model.get("applies_to", [])
    if not isinstance(applies, list) or not all(isinstance(a, str) for a in applies):
        raise _fail(source, "model.applies_to", "must be a list of model ids")
    _dict(model.get("scheduler") or {}, source, "model.scheduler")
    return {k: copy.deepcopy(v) for k, v in model.items() if k in _MODEL_KEYS}



def _check_provenance(value: Any, source: str) -> dict[str, Any]:
    prov = dict(_dict(value if value is not None else {}, source, "provenance"))
    _warn_unknown(source, "provenance", prov, set(PROVENANCE_KEYS))
    kind = prov.get("kind")
    if kind not in PROVENANCE_KINDS:
        raise _fail(source, "provenance.kind", f"{kind!r} must be one of {', '.join(PROVENANCE_KINDS)}")
    for key in ("autotune_version", "task_fingerprint", "created", "author", "citation", "notes"):
        _opt_str(prov.get(key), source, f"provenance.{key}")
    for key in ("n_trials", "n_complete", "task_count"):
        _count(prov.get(key), source, f"provenance.{key}")
    for key in ("study", "sampler", "search_space", "base_params"):
        if prov.get(key) is not None:
            _dict(prov[key], source, f"provenance.{key}")
    _check_task_source(prov.get("task_source"), source)
    _check_task_digests(prov.get("task_digests"), source)
    study = prov.get("study") or {}
    if has_password(study.get("storage")):
        warnings.warn(
            f"{source}: provenance.study.storage holds a password; it is redacted", PresetWarning, stacklevel=4
        )
        prov["study"] = {**study, "storage": redact_url(study["storage"])}
    return {k: v for k, v in prov.items() if k in set(PROVENANCE_KEYS)}

def _check_task_source(value: Any, source: str) -> None:
    """`provenance.task_source`: where the tuning tasks came from (`--tasks`, `--split`, the held-out fraction)."""
    if value is None:
        return
    task_source = _dict(value, source, "provenance.task_source")
    _opt_str(task_source.get("spec"), source, "provenance.task_source.spec")
    split = task_source.get("split")
    if split is not None and split not in SPLITS:
        raise _fail(source, "provenance.task_source.split", f"{split!r} must be one of {', '.join(SPLITS)}")
    fraction = _number(task_source.get("heldout_fraction"), source, "provenance.task_source.heldout_fraction",
                       allow_null=True)
    if fraction is not None and not 0 < fraction < 1:
        raise _fail(source, "provenance.task_source.heldout_fraction", f"{fraction!r} must lie between 0 and 1")
    version = task_source.get("world_version")  # shapes tasks of a later world (the flow shapes model's)
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        raise _fail(source, "provenance.task_source.world_version", f"{version!r} must be a whole number >= 1")


def _check_task_digests(value: Any, source: str) -> None:
    """`provenance.task_digests`: the digest of every tuning task (optional: presets before them lack it)."""
    if value is None:
        return
    where = "provenance.task_digests"
    if not isinstance(value, list):
        raise _fail(source, where, f"must be a list of task digests, got {type(value).__name__}")
    if len(value) > MAX_TASK_DIGESTS:
        raise _fail(source, where, f"lists {len(value)} tasks, over the {MAX_TASK_DIGESTS} a preset may list")
    for i, digest in enumerate(value):
        if not isinstance(digest, str) or not TASK_DIGEST.fullmatch(digest):
            raise _fail(source, f"{where}[{i}]", f"{digest!r} is not a task digest (16 lowercase hex digits)")


# ---------------------------------------------------------------------------------------------------------------------
# The whole file


def check_point(data: Any, source: str = "<preset>", where: str = "point") -> dict[str, Any]:
    """A front or reference point's fields (`FrontPoint`'s), checked."""
    data = _dict(data, source, where)
    _warn_unknown(source, where, data, _POINT_KEYS)
    if "params" not in data:
        raise _fail(source, where, "missing 'params'")
    params = _edit_params(data["params"], source, f"{where}.params")
    values = data.get("values")
    if values is not None:
        values = _dict(values, source, f"{where}.values")
        bad = sorted(set(values) - set(OBJECTIVES))
        if bad:
            raise _fail(
                source, f"{where}.values", f"unknown objective(s) {', '.join(bad)}; use {', '.join(OBJECTIVES)}"
            )
        values = {k: _number(v, source, f"{where}.values.{k}") for k, v in values.items()}
    metrics = _dict(data.get("metrics") or {}, source, f"{where}.metrics")
    metrics = {str(k): _number(v, source, f"{where}.metrics.{k}", allow_null=True) for k, v in metrics.items()}
    trial = _count(data.get("trial"), source, f"{where}.trial")
    paper_point = _opt_str(data.get("paper_point"), source, f"{where}.paper_point")
    return {"params": params, "values": values, "metrics": metrics, "trial": trial, "paper_point": paper_point}


def check_preset(data: Any, source: str = "<preset>", strict: bool = False) -> dict[str, Any]:
    """Migrate and validate a parsed preset dict; the fields a `Preset` is built from (points as `check_point`
    dicts). `strict` turns a stale content hash into an error (else a warning)."""
    data = _dict(data, source, "top level")
    original_version = data.get("schema_version")
    data = migrate(data, source)
    _warn_unknown(source, "top level", data, _TOP_KEYS)

    try:
        category = category_name(data.get("category"))  # type: ignore[arg-type]
    except ValueError as exc:
        raise _fail(source, "category", str(exc)) from None
    model = _check_model(data.get("model"), source)

    if not isinstance(data.get("objectives") or [], list):
        raise _fail(source, "objectives", "must be a list")
    objectives = tuple(_dict(o, source, f"objectives[{i}]") for i, o in enumerate(data.get("objectives") or []))
    directions = directions_of(objectives, "objectives", source) if objectives else None

    front_raw = data.get("front") or []
    refs_raw = data.get("references") or []
    for name, raw in (("front", front_raw), ("references", refs_raw)):
        if not isinstance(raw, list):
            raise _fail(source, name, "must be a list of points")
    front = [check_point(p, source, f"front[{i}]") for i, p in enumerate(front_raw)]
    references = [check_point(p, source, f"references[{i}]") for i, p in enumerate(refs_raw)]
    if front and directions is None:
        raise _fail(source, "objectives", "a preset with a front must say each objective's direction")
    for i, point in enumerate(front):
        if point["values"] is None or set(point["values"]) != set(OBJECTIVES):
            raise _fail(source, f"front[{i}].values", f"a front point needs values for {', '.join(OBJECTIVES)}")

    picks = _check_picks(data.get("picks"), [p["params"] for p in front], source)
    default_style = data.get("default_style", "balanced")
    if default_style not in picks:
        raise _fail(source, "default_style", f"{default_style!r} is not one of the picks ({', '.join(picks)})")
    chosen = picks[default_style]["params"]
    for key, actual in (("method", chosen.method), ("steps", chosen.steps)):
        if key in data and data[key] != actual:
            raise _fail(
                source, key, f"says {data[key]!r} but the {default_style} pick uses {actual!r}; make them agree"
            )

    provenance = _check_provenance(data.get("provenance"), source)
    if original_version != SCHEMA_VERSION:
        provenance.setdefault("migrated_from", original_version)
    scorer = _dict(data.get("scorer") or {}, source, "scorer")
    stale = _check_content_hash(data, source, strict, stored_is_current=original_version == SCHEMA_VERSION)
    predictor, predictor_error = _check_predictor_section(data, source, strict, stale)
    return {
        "category": category,
        "model": model,
        "picks": picks,
        "front": front,
        "references": references,
        "objectives": objectives,
        "scorer": scorer,
        "provenance": provenance,
        "default_style": default_style,
        "predictor": predictor,
        "predictor_error": predictor_error,
    }


def _check_predictor_section(data: Mapping[str, Any], source: str, strict: bool, stale: bool
                             ) -> tuple[dict[str, Any] | None, str | None]:
    """The optional `predictor` section: (validated section, None), or (None, why it was refused). A predictor is
    refused, unlike the rest of the file, when the content hash does not match (a model's numbers edited by hand are
    not to be trusted), and when it fails validation or names a model kind this version does not read; the preset's
    picks still load (with a warning). In strict mode any of these refuses the file."""
    raw = data.get("predictor")
    if raw is None:
        return None, None
    from autotune.presets.predictor import check_predictor

    try:
        if data.get("content_hash") is None:
            raise PresetError(f"{source}: predictor: refused: the file has no content_hash to cover it; re-save the "
                              "preset with autotune (`autotune presets fit-predictor`)")
        if stale:
            raise PresetError(f"{source}: predictor: refused: the content_hash does not match the content, so the "
                              "predictor's numbers may have been altered; re-fit it (`autotune presets fit-predictor`)")
        return check_predictor(raw, source), None
    except PresetError as exc:
        if strict:
            raise
        warnings.warn(f"{exc} (the picks are used; style 'auto' is unavailable)", PresetWarning, stacklevel=4)
        return None, str(exc)


def _check_picks(value: Any, front_params: Sequence[EditParams], source: str) -> dict[str, dict[str, Any]]:
    picks_raw = _dict(value, source, "picks")
    missing = [s for s in STYLES if s not in picks_raw]
    if missing:
        raise _fail(
            source, "picks", f"missing pick(s) {', '.join(missing)}; a preset names all of {', '.join(STYLES)}"
        )
    picks: dict[str, dict[str, Any]] = {}
    for style, raw in picks_raw.items():
        where = f"picks.{style}"
        if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", style):
            raise _fail(source, where, "pick names are lowercase words (letters, digits, _)")
        raw = _dict(raw, source, where)
        _warn_unknown(source, where, raw, _PICK_KEYS)
        if "params" not in raw:
            raise _fail(source, where, "missing 'params'")
        params = _edit_params(raw["params"], source, f"{where}.params")
        index = raw.get("front_index")
        if index is not None:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(front_params):
                raise _fail(
                    source,
                    f"{where}.front_index",
                    f"{index!r} is not an index into the front (0..{len(front_params) - 1})",
                )
            if front_params[index] != params:
                warnings.warn(
                    f"{source}: {where}: params differ from front[{index}] (edited by hand?); "
                    "the pick's params are used",
                    PresetWarning,
                    stacklevel=4,
                )
        picks[style] = {"params": params, "front_index": index}
    return picks


def _check_content_hash(data: Mapping[str, Any], source: str, strict: bool, stored_is_current: bool) -> bool:
    """A hash written by this schema version must match the content; a migrated file's old hash is not checked.
    Returns whether the stored hash is stale (a file without a hash is not)."""
    stored = data.get("content_hash")
    if stored is None or not stored_is_current:
        return False
    if not isinstance(stored, str):
        raise _fail(source, "content_hash", "must be a string like 'sha256:...'")
    if stored != content_hash_of(data):
        message = f"{source}: content_hash does not match the content (edited or damaged after it was written)"
        if strict:
            raise PresetError(message)
        warnings.warn(message, PresetWarning, stacklevel=4)
        return True
    return False
