"""A preset: for one model and one edit category, the parameters to use and the record to trust them.

A preset is a plain JSON file (see docs/presets.md for every field). It holds the Pareto front the
tuner measured (each point's parameters and scores), three named picks along it (`conservative`,
`balanced`, `aggressive`), the model and scheduler it was made for, the metric definitions, and
provenance. Loading validates every field, warns on unknown keys, migrates older schema versions and
never executes anything: the file is data, read with `json` and checked by `EditParams`.

Example:
    >>> preset = Preset.load("presets/stable-diffusion-v1-5--stable-diffusion-v1-5__change_color.json")
    >>> preset.check_compatible(editor.model_info())
    >>> params = preset.params("aggressive")
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import errno
import getpass
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune import atomic
from autotune.errors import PresetError
from autotune.params import EditParams
from autotune.tasks import category_name

SCHEMA_VERSION = 1
MAX_PRESET_BYTES = 4 * 1024 * 1024  # a front of a few thousand points fits; anything bigger is refused unread
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
    "content_hash",
}
_MODEL_KEYS = {"id", "revision", "file_hash", "applies_to", "scheduler", "scheduler_mode", "notes"}
_POINT_KEYS = {"params", "values", "metrics", "trial", "paper_point"}
_PICK_KEYS = {"params", "front_index"}
_PROVENANCE_KEYS = {
    "kind",
    "autotune_version",
    "study",
    "sampler",
    "n_trials",
    "n_complete",
    "task_fingerprint",
    "task_count",
    "created",
    "author",
    "citation",
    "notes",
    "search_space",
    "base_params",
    "migrated_from",
}


class PresetWarning(UserWarning):
    """Something in a preset worth knowing that does not stop it from being used."""


# ---------------------------------------------------------------------------------------------------------------------
# Small helpers shared by the preset modules


def canonical_json(data: Any) -> str:
    """The byte-stable JSON form that the content hash is taken over: sorted keys, no spaces, no NaN."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def content_hash_of(data: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a preset dict without its `content_hash` field."""
    body = {k: v for k, v in data.items() if k != "content_hash"}
    return "sha256:" + hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


_URL_PASSWORD = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<password>[^/\s]*)@")


_QUERY_PASSWORD = re.compile(r"(?i)(?P<key>[?&](?:password|passwd|pwd)=)(?P<password>[^&#\s]*)")


def redact_url(url: str | None) -> str | None:
    """A storage URL with its password (userinfo or `password=` query) replaced by `***`."""
    if url is None:
        return None
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", str(url))
    return _QUERY_PASSWORD.sub(lambda m: f"{m['key']}***", text)


def has_password(url: str | None) -> bool:
    text = str(url or "")
    return any(
        m["password"] not in ("", "***") for pattern in (_URL_PASSWORD, _QUERY_PASSWORD) for m in pattern.finditer(text)
    )


def current_author() -> str:
    """`$AUTOTUNE_AUTHOR`, else the git user name, else the OS user."""
    author = os.environ.get("AUTOTUNE_AUTHOR", "").strip()
    if author:
        return author
    git = shutil.which("git")
    if git:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([git, "config", "user.name"], capture_output=True, text=True, timeout=5, check=False)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
    with contextlib.suppress(Exception):
        return getpass.getuser()
    return "unknown"


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def make_provenance(kind: str = "tuned", **fields_: Any) -> dict[str, Any]:
    """Provenance with the autotune version, creation date (UTC) and author filled in; storage URLs redacted."""
    from autotune import __version__

    out: dict[str, Any] = {
        "kind": kind,
        "autotune_version": __version__,
        "created": utc_now(),
        "author": current_author(),
    }
    out.update({k: v for k, v in fields_.items() if v is not None})
    study = out.get("study")
    if isinstance(study, dict) and "storage" in study:
        out["study"] = {**study, "storage": redact_url(study["storage"])}
    return out


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


# ---------------------------------------------------------------------------------------------------------------------
# The value objects


@dataclass(frozen=True)
class FrontPoint:
    """One measured parameter set: its objective values (`fidelity`, `edit_strength`) and metric means."""

    params: EditParams
    values: dict[str, float] | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    trial: int | None = None
    paper_point: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "params": self.params.to_dict(),
            "values": dict(self.values) if self.values is not None else None,
            "metrics": dict(self.metrics),
            "trial": self.trial,
        }
        if self.paper_point:
            out["paper_point"] = self.paper_point
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str = "<preset>", where: str = "point") -> FrontPoint:
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
        return cls(params, values, metrics, trial, paper_point)


@dataclass(frozen=True)
class Preset:
    """Parameters for one (model, edit category), the front they were picked from, and their provenance.

    Build one with `Preset.from_front` (the tuner), `presets_from_study` (an existing study),
    `Preset.paper_default` or `Preset.load`. Use it with `preset.params(style)`.
    """

    category: str
    model: dict[str, Any]
    picks: dict[str, dict[str, Any]]  # style -> {"params": EditParams, "front_index": int | None}
    front: tuple[FrontPoint, ...] = ()
    references: tuple[FrontPoint, ...] = ()
    objectives: tuple[dict[str, Any], ...] = ()
    scorer: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=lambda: {"kind": "hand_made"})
    default_style: str = "balanced"
    source: str | None = field(default=None, compare=False)  # where it was loaded from, for messages

    # -- using it ------------------------------------------------------------------------------------------------

    def params(self, style: str | None = None) -> EditParams:
        """The parameters of a named pick (`conservative`, `balanced`, `aggressive`; default: `default_style`)."""
        style = style or self.default_style
        if style not in self.picks:
            raise PresetError(f"{self.label}: no pick named {style!r}; choose one of {', '.join(self.picks)}")
        return self.picks[style]["params"]

    def params_for(
        self, category: str | int, style: str | None, model_info: Mapping[str, Any] | str, override: bool = False
    ) -> EditParams:
        """What `Editor.edit(category=..., style=...)` asks: this preset's pick, after the category and
        compatibility checks (so one explicit Preset can stand in for a whole store)."""
        try:
            wanted = category_name(category)
        except ValueError as exc:
            raise PresetError(str(exc)) from None
        if wanted != self.category:
            raise PresetError(f"{self.label} is a {self.category} preset, not {wanted}; load the {wanted} preset")
        self.check_compatible(model_info, override=override)
        return self.params(style)

    @property
    def label(self) -> str:
        return self.source or f"preset {self.category} for {self.model.get('id')}"

    @property
    def method(self) -> str:
        return self.params().method

    @property
    def steps(self) -> int:
        return self.params().steps

    @property
    def kind(self) -> str:
        return str(self.provenance.get("kind", "hand_made"))

    @property
    def task_fingerprint(self) -> str | None:
        return self.provenance.get("task_fingerprint")

    @property
    def content_hash(self) -> str:
        return content_hash_of(self.to_dict(with_hash=False))

    # -- compatibility -------------------------------------------------------------------------------------------

    def matches_model(self, model_info: Mapping[str, Any] | str) -> bool:
        """True when this preset was made for that model: same weights hash, or the same id (or an alias)."""
        other = _model_view(model_info)
        mine = _model_view(self.model)
        if mine["file_hash"] and other["file_hash"]:
            return mine["file_hash"] == other["file_hash"]
        names = {_norm_id(mine["id"])} | {_norm_id(a) for a in self.model.get("applies_to", [])}
        return _norm_id(other["id"]) in names

    def check_compatible(self, model_info: Mapping[str, Any] | str, override: bool = False) -> list[str]:
        """Refuse (PresetError) a preset made for another model or noise schedule unless `override`.

        Returns the warnings (also emitted as PresetWarning): minor scheduler differences, a different
        revision, and, with `override`, the problems that were overridden.
        """
        other = _model_view(model_info)
        mine = _model_view(self.model)
        problems: list[str] = []
        notes: list[str] = []
        if not self.matches_model(model_info):
            if mine["file_hash"] and other["file_hash"] and _norm_id(mine["id"]) == _norm_id(other["id"]):
                problems.append(f"it was made for weights {mine['file_hash']}, these are {other['file_hash']}")
            else:
                problems.append(f"it was made for model {mine['id']!r}, not {other['id']!r}")
        if mine["revision"] and other["revision"] and mine["revision"] != other["revision"]:
            notes.append(f"it was made for revision {mine['revision']}, this model is at {other['revision']}")
        for key in (*SCHEDULER_STRICT_KEYS, *SCHEDULER_LOOSE_KEYS):
            if key in mine["scheduler"] and key in other["scheduler"]:
                a, b = mine["scheduler"][key], other["scheduler"][key]
                if not _same_setting(a, b):
                    text = f"scheduler {key} is {b!r} here but the preset was made with {a!r}"
                    (problems if key in SCHEDULER_STRICT_KEYS else notes).append(text)
        if problems and not override:
            raise PresetError(
                f"{self.label} does not fit this model: {'; '.join(problems)}. Use a preset made for this model "
                f"(`autotune presets list`), tune one (`autotune tune`), or override the check "
                f"(override=True / --ignore-preset-mismatch) to use it anyway"
            )
        messages = [f"{self.label}: {m} (overridden)" for m in problems] + [f"{self.label}: {m}" for m in notes]
        for message in messages:
            warnings.warn(message, PresetWarning, stacklevel=2)
        return messages

    def improves_on(self, other: Preset) -> tuple[bool, str]:
        """Whether this preset scores better than `other` on the same tasks, and why (or why not).

        Comparable only when both were tuned on the same task fingerprint with the same objectives and
        scorer. Better means a larger 2-D hypervolume of the front, both measured from a common reference
        point (the worst value of each objective over both fronts, less 10% of its range).
        """
        if not self.task_fingerprint or self.task_fingerprint != other.task_fingerprint:
            return False, "tuned on a different task set (task fingerprints differ)"
        if list(self.objectives) != list(other.objectives):
            return False, "measured with different objectives"
        if _scorer_identity(self.scorer) != _scorer_identity(other.scorer):
            return False, "measured with a different scorer"
        mine, theirs = _oriented(self), _oriented(other)
        if not mine or not theirs:
            return False, "one of the two has no measured front"
        both = mine + theirs
        ref = []
        for axis in range(2):
            lo, hi = min(p[axis] for p in both), max(p[axis] for p in both)
            ref.append(lo - (0.1 * (hi - lo) if hi > lo else 1.0))
        hv_mine, hv_theirs = hypervolume(mine, ref), hypervolume(theirs, ref)
        if hv_mine > hv_theirs * (1 + 1e-12):
            return True, f"same task set, larger front hypervolume ({hv_mine:.6g} > {hv_theirs:.6g})"
        return False, f"same task set, front hypervolume not larger ({hv_mine:.6g} <= {hv_theirs:.6g})"

    # -- building ------------------------------------------------------------------------------------------------

    @classmethod
    def from_front(
        cls,
        points: Iterable[FrontPoint],
        *,
        category: str | int,
        model: Mapping[str, Any],
        objectives: Sequence[Mapping[str, Any]],
        scorer: Mapping[str, Any] | None = None,
        provenance: Mapping[str, Any] | None = None,
        references: Iterable[FrontPoint] = (),
        default_style: str = "balanced",
    ) -> Preset:
        """A preset from measured points (any set: the dominated ones are dropped, the picks computed).

        `points` carry `values={"fidelity": f, "edit_strength": e}`; `objectives` give each objective's
        direction and metric weights (the study's `autotune.objectives`). The front is stored best-fidelity
        first. Picks: `conservative` = highest fidelity, `aggressive` = highest edit strength, `balanced` =
        the point nearest the ideal after scaling, the knee of a bulging front (see `pick_indices`).
        """
        objectives = tuple(dict(o) for o in objectives)
        directions = _directions(objectives, "objectives")
        measured = [p for p in points if p.values and all(math.isfinite(p.values.get(n, math.nan)) for n in OBJECTIVES)]
        if not measured:
            raise PresetError("cannot build a preset: no point has finite fidelity and edit_strength values")
        front = pareto_front(measured, directions)
        picks = {
            style: {"params": front[index].params, "front_index": index}
            for style, index in pick_indices([p.values for p in front], directions).items()  # type: ignore[misc]
        }
        return cls(
            category=category_name(category),
            model=_model_record(model),
            picks=picks,
            front=tuple(front),
            references=tuple(references),
            objectives=objectives,
            scorer=copy.deepcopy(dict(scorer or {})),
            provenance=_redacted(provenance or make_provenance("tuned")),
            default_style=default_style,
        )

    @classmethod
    def paper_default(
        cls, category: str | int, model: Mapping[str, Any], params: EditParams, citation: str, notes: str = ""
    ) -> Preset:
        """An untuned preset: published default parameters for every pick, no measured front."""
        pick = {"params": params, "front_index": None}
        return cls(
            category=category_name(category),
            model=_model_record(model),
            picks={style: dict(pick) for style in STYLES},
            provenance=make_provenance("paper_default", citation=citation, notes=notes or None),
        )

    # -- serialising ---------------------------------------------------------------------------------------------

    def to_dict(self, with_hash: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "category": self.category,
            "model": copy.deepcopy(self.model),
            "method": self.method,
            "steps": self.steps,
            "default_style": self.default_style,
            "picks": {
                style: {"params": pick["params"].to_dict(), "front_index": pick.get("front_index")}
                for style, pick in self.picks.items()
            },
            "front": [p.to_dict() for p in self.front],
            "references": [p.to_dict() for p in self.references],
            "objectives": copy.deepcopy(list(self.objectives)),
            "scorer": copy.deepcopy(self.scorer),
            "provenance": copy.deepcopy(self.provenance),
        }
        if with_hash:
            data["content_hash"] = content_hash_of(data)
        return data

    def dumps(self) -> str:
        """Pretty JSON, fields in schema order, with the content hash."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file in the same directory, fsync, rename): readers never see a partial file."""
        return atomic_write_text(path, self.dumps(), what="preset")

    @classmethod
    def load(cls, path: str | Path, strict: bool = False) -> Preset:
        """Read and validate a preset file; files over MAX_PRESET_BYTES are refused before being read."""
        data = read_capped(path, MAX_PRESET_BYTES, "preset file")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PresetError(f"{path}: not UTF-8 text (byte {exc.start}); a preset is a JSON file") from None
        return cls.loads(text, source=str(path), strict=strict)

    @classmethod
    def loads(cls, text: str, source: str = "<preset>", strict: bool = False) -> Preset:
        """Parse and validate preset JSON. `strict` turns a stale content hash into an error (else a warning)."""
        if len(text) > MAX_PRESET_BYTES or len(text.encode("utf-8")) > MAX_PRESET_BYTES:
            raise PresetError(f"{source}: over the {MAX_PRESET_BYTES}-byte preset limit: refused")
        return cls.from_dict(parse_json(text, source), source=source, strict=strict)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<preset>", strict: bool = False) -> Preset:
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
        directions = _directions(objectives, "objectives", source) if objectives else None

        front_raw = data.get("front") or []
        refs_raw = data.get("references") or []
        for name, raw in (("front", front_raw), ("references", refs_raw)):
            if not isinstance(raw, list):
                raise _fail(source, name, "must be a list of points")
        front = tuple(FrontPoint.from_dict(p, source, f"front[{i}]") for i, p in enumerate(front_raw))
        references = tuple(FrontPoint.from_dict(p, source, f"references[{i}]") for i, p in enumerate(refs_raw))
        if front and directions is None:
            raise _fail(source, "objectives", "a preset with a front must say each objective's direction")
        for i, point in enumerate(front):
            if point.values is None or set(point.values) != set(OBJECTIVES):
                raise _fail(source, f"front[{i}].values", f"a front point needs values for {', '.join(OBJECTIVES)}")

        picks_raw = _dict(data.get("picks"), source, "picks")
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
                if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(front):
                    raise _fail(
                        source,
                        f"{where}.front_index",
                        f"{index!r} is not an index into the front (0..{len(front) - 1})",
                    )
                if front[index].params != params:
                    warnings.warn(
                        f"{source}: {where}: params differ from front[{index}] (edited by hand?); "
                        "the pick's params are used",
                        PresetWarning,
                        stacklevel=3,
                    )
            picks[style] = {"params": params, "front_index": index}

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

        preset = cls(
            category=category,
            model=model,
            picks=picks,
            front=front,
            references=references,
            objectives=objectives,
            scorer=scorer,
            provenance=provenance,
            default_style=default_style,
            source=source,
        )
        stored = data.get("content_hash")
        if stored is not None and original_version == SCHEMA_VERSION:
            if not isinstance(stored, str):
                raise _fail(source, "content_hash", "must be a string like 'sha256:...'")
            actual = content_hash_of(data)
            if stored != actual:
                message = f"{source}: content_hash does not match the content (edited or damaged after it was written)"
                if strict:
                    raise PresetError(message)
                warnings.warn(message, PresetWarning, stacklevel=3)
        return preset


def presets_from_study(study: Any, storage_label: str | None = None) -> list[Preset]:
    """Presets rebuilt from a study's stored record (see `autotune.preset_from_study`); the tuner's hook."""
    from autotune.preset_from_study import presets_from_study as build

    return build(study, storage_label=storage_label)


# ---------------------------------------------------------------------------------------------------------------------
# The front and its picks


def _directions(objectives: Sequence[Mapping[str, Any]], where: str, source: str = "<preset>") -> tuple[str, str]:
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


def _orient(values: Mapping[str, float], directions: tuple[str, str]) -> tuple[float, float]:
    """(fidelity, edit_strength) turned so that larger is better for both."""
    f, e = values["fidelity"], values["edit_strength"]
    return (f if directions[0] == "maximize" else -f, e if directions[1] == "maximize" else -e)


def pareto_front(points: Sequence[FrontPoint], directions: tuple[str, str]) -> list[FrontPoint]:
    """The non-dominated points (duplicates of the same parameters kept once), highest fidelity first."""
    scored = [(_orient(p.values, directions), p) for p in points]  # type: ignore[arg-type]
    front: list[tuple[tuple[float, float], FrontPoint]] = []
    for s, p in scored:
        dominated = any(o[0] >= s[0] and o[1] >= s[1] and (o[0] > s[0] or o[1] > s[1]) for o, _ in scored)
        if not dominated and not any(q.params == p.params and t == s for t, q in front):
            front.append((s, p))
    front.sort(key=lambda item: (-item[0][0], -item[0][1], item[1].trial if item[1].trial is not None else -1))
    return [p for _, p in front]


def pick_indices(values: Sequence[Mapping[str, float]], directions: tuple[str, str]) -> dict[str, int]:
    """Indices of the three picks in a front.

    conservative: the highest fidelity (ties: higher edit strength). aggressive: the highest edit strength
    (ties: higher fidelity). balanced, the compromise: scale each objective to [0, 1] over the front (1 = best),
    so the extremes sit at (fidelity 1, strength 0) and (0, 1); take the point nearest the ideal (1, 1), ties
    going to the larger x + y, then to higher fidelity. On a bulging front that is the knee; on a straight or
    slightly sagging one it is the middle, not an end (the largest-x + y rule picked an end there, so
    `balanced` equalled `conservative`). A two-point front has no middle: `balanced` = `conservative`.
    """
    oriented = [_orient(v, directions) for v in values]
    n = len(oriented)
    conservative = max(range(n), key=lambda i: (oriented[i][0], oriented[i][1]))
    aggressive = max(range(n), key=lambda i: (oriented[i][1], oriented[i][0]))
    scaled = []
    for axis in range(2):
        lo, hi = min(o[axis] for o in oriented), max(o[axis] for o in oriented)
        scaled.append([(o[axis] - lo) / (hi - lo) if hi > lo else 1.0 for o in oriented])
    fid, strength = scaled

    def compromise_key(i: int) -> tuple[float, float, float]:
        nearness = -round(math.hypot(1 - fid[i], 1 - strength[i]), 12)
        return (nearness, round(fid[i] + strength[i], 12), oriented[i][0])

    balanced = max(range(n), key=compromise_key)
    return {"conservative": conservative, "balanced": balanced, "aggressive": aggressive}


def _oriented(preset: Preset) -> list[tuple[float, float]]:
    if not preset.front or not preset.objectives:
        return []
    directions = _directions(preset.objectives, "objectives", preset.label)
    return [_orient(p.values, directions) for p in preset.front if p.values]  # type: ignore[arg-type]


def hypervolume(points: Sequence[Sequence[float]], ref: Sequence[float]) -> float:
    """Area dominated by `points` (both axes maximised) above the reference point."""
    area, best_y = 0.0, ref[1]
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if y > best_y and x > ref[0]:
            area += (x - ref[0]) * (y - best_y)
            best_y = y
    return area


def _scorer_identity(scorer: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in scorer.items() if k not in ("device", "dtype", "batch_size")}


# ---------------------------------------------------------------------------------------------------------------------
# Model records


def _norm_id(model_id: Any) -> str:
    return str(model_id or "").strip().rstrip("/").lower()


def _model_view(info: Mapping[str, Any] | str) -> dict[str, Any]:
    """The fields compatibility looks at, from a preset's model record or `editor.model_info()`."""
    if isinstance(info, str):
        info = {"id": info}
    return {
        "id": info.get("id") or info.get("model_id") or info.get("name") or "",
        "revision": info.get("revision"),
        "file_hash": info.get("file_hash") or info.get("weights") or info.get("sha256"),
        "scheduler": dict(info.get("scheduler") or info.get("scheduler_config") or {}),
    }


def _model_record(model: Mapping[str, Any]) -> dict[str, Any]:
    """The model part of a preset from `editor.model_info()` (or a preset's own record)."""
    view = _model_view(model)
    if not view["id"]:
        raise PresetError("the model record needs an 'id' (the hub id, folder or file the preset was made for)")
    record: dict[str, Any] = {"id": str(view["id"]), "revision": view["revision"], "file_hash": view["file_hash"]}
    if model.get("applies_to"):
        record["applies_to"] = list(model["applies_to"])
    record["scheduler"] = copy.deepcopy(view["scheduler"])
    if model.get("scheduler_mode"):
        record["scheduler_mode"] = model["scheduler_mode"]
    if model.get("notes"):
        record["notes"] = model["notes"]
    return record


def _same_setting(a: Any, b: Any) -> bool:
    if (
        isinstance(a, (int, float))
        and isinstance(b, (int, float))
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


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


def _redacted(provenance: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(provenance))
    study = out.get("study")
    if isinstance(study, dict) and study.get("storage") is not None:
        study["storage"] = redact_url(str(study["storage"]))
    return out


def _check_provenance(value: Any, source: str) -> dict[str, Any]:
    prov = dict(_dict(value if value is not None else {}, source, "provenance"))
    _warn_unknown(source, "provenance", prov, _PROVENANCE_KEYS)
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
    study = prov.get("study") or {}
    if has_password(study.get("storage")):
        warnings.warn(
            f"{source}: provenance.study.storage holds a password; it is redacted", PresetWarning, stacklevel=4
        )
        prov["study"] = {**study, "storage": redact_url(study["storage"])}
    return {k: v for k, v in prov.items() if k in _PROVENANCE_KEYS}
