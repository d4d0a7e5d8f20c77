"""A preset: for one model and one edit category, the parameters to use and the record to trust them.

A preset is a plain JSON file (see docs/presets.md for every field). It holds the Pareto front the
tuner measured (each point's parameters and scores), three named picks along it (`conservative`,
`balanced`, `aggressive`), the model and scheduler it was made for, the metric definitions, and
provenance. Loading validates every field, warns on unknown keys, migrates older schema versions and
never executes anything: the file is data, read with `json` and checked by `EditParams` (`autotune.presets.schema`).

Example:
    >>> preset = Preset.load("presets/stable-diffusion-v1-5--stable-diffusion-v1-5__change_color.json")
    >>> preset.check_compatible(editor.model_info())
    >>> params = preset.params("aggressive")
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune import pareto
from autotune.errors import PresetError
from autotune.params import EditParams
from autotune.presets.predictor import AUTO_STYLE, AutoChoice, Predictor, choose_index
from autotune.presets.provenance import make_provenance, redacted
from autotune.presets.schema import (
    MAX_PRESET_BYTES,
    OBJECTIVES,
    SCHEDULER_LOOSE_KEYS,
    SCHEDULER_STRICT_KEYS,
    SCHEMA_VERSION,
    STYLES,
    PresetWarning,
    atomic_write_text,
    check_point,
    check_preset,
    content_hash_of,
    directions_of,
    parse_json,
    read_capped,
)
from autotune.task import category_name

__all__ = ["MAX_PRESET_BYTES", "SCHEMA_VERSION", "STYLES", "FrontPoint", "Preset", "PresetWarning", "pareto_front",
           "pick_indices"]




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
        return cls(**check_point(data, source, where))


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
    predictor: Predictor | None = field(default=None, compare=False)  # per-image choice (style "auto"), optional
    source: str | None = field(default=None, compare=False)  # where it was loaded from, for messages
    predictor_error: str | None = field(default=None, compare=False)  # why a stored predictor was refused

    # -- using it ------------------------------------------------------------------------------------------------

    def params(self, style: str | None = None) -> EditParams:
        """The parameters of a named pick (`conservative`, `balanced`, `aggressive`; default: `default_style`)."""
        style = style or self.default_style
        if style == AUTO_STYLE:
            raise PresetError(f"{self.label}: style 'auto' chooses per image; use Editor.edit(..., style='auto') or "
                              "Preset.choose(features)")
        if style not in self.picks:
            raise PresetError(f"{self.label}: no pick named {style!r}; choose one of {', '.join(self.picks)}")
        return self.picks[style]["params"]

    def check_auto(self) -> Predictor:
        """The predictor style "auto" uses, or a PresetError saying why there is none and what to do."""
        if self.predictor is not None:
            return self.predictor
        if self.predictor_error:
            raise PresetError(f"{self.predictor_error}; use a named style ({', '.join(self.picks)}) meanwhile")
        raise PresetError(f"{self.label} has no predictor, so style 'auto' cannot choose per image; fit one from the "
                          "preset's study (`autotune presets fit-predictor --storage ... --study ...`) or use a named "
                          f"style ({', '.join(self.picks)})")

    def choose(self, features: Mapping[str, float]) -> AutoChoice:
        """Style "auto": this image's setting from its features (`Editor.task_features`), or the preset's pick for
        the predictor's trade-off when the image lies outside the training data or no model beat the pick."""
        predictor = self.check_auto()
        pick = self.params(predictor.trade_off)
        prediction = predictor.predict(features)
        common = {"trade_off": predictor.trade_off, "distance": prediction.distance, "threshold": predictor.threshold}
        if predictor.kind == "pick":
            return AutoChoice(pick, fallback=True, reason="no model beat the preset's pick in cross-validation on its "
                              "study", candidate=predictor.pick_index, **common)
        if prediction.distance > predictor.threshold:
            return AutoChoice(pick, fallback=True, reason=f"the image lies outside the training data (distance "
                              f"{prediction.distance:.3g} > {predictor.threshold:.3g})", candidate=predictor.pick_index,
                              **common)
        index = choose_index(prediction, predictor)
        return AutoChoice(predictor.candidates[index], fallback=False, reason=f"{predictor.kind}, distance "
                          f"{prediction.distance:.3g} <= {predictor.threshold:.3g}", candidate=index, **common)

    def with_predictor(self, predictor: Predictor | None) -> Preset:
        """This preset carrying `predictor` (None: without one)."""
        if predictor is not None and predictor.candidates[predictor.pick_index] != self.params(predictor.trade_off):
            raise PresetError(f"{self.label}: the predictor's fallback is not this preset's {predictor.trade_off} "
                              "pick; fit it on the study this preset was built from")
        return dataclasses.replace(self, predictor=predictor, predictor_error=None)

    def params_for(
        self, category: str | int, style: str | None, model_info: Mapping[str, Any] | str, override: bool = False
    ) -> EditParams:
        """What `Editor.edit(category=..., style=...)` asks: this preset's pick, after the category and
        compatibility checks (so one explicit Preset can stand in for a whole store)."""
        return self.preset_for(category, model_info, override).params(style)

    def preset_for(self, category: str | int, model_info: Mapping[str, Any] | str, override: bool = False) -> Preset:
        """This preset, after the category and compatibility checks (as `PresetStore.preset_for`)."""
        try:
            wanted = category_name(category)
        except ValueError as exc:
            raise PresetError(str(exc)) from None
        if wanted != self.category:
            raise PresetError(f"{self.label} is a {self.category} preset, not {wanted}; load the {wanted} preset")
        self.check_compatible(model_info, override=override)
        return self

    def find_preset(self, category: str | int, model_info: Mapping[str, Any] | str) -> Preset | None:
        """This preset when it is the one `params_for` uses for `category`, else None; unchecked (as
        `PresetStore.find_preset`), for reading what a finished run used."""
        return self if category_name(category) == self.category else None

    @property
    def tuning_tasks(self) -> frozenset[str] | None:
        """The digests of the tasks it was tuned on (`autotune.task.task_digest`); None when it does not list
        them (hand-made, paper defaults, or tuned before autotune recorded them)."""
        digests = self.provenance.get("task_digests")
        return frozenset(digests) if isinstance(digests, list) else None

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
        hv_mine, hv_theirs = pareto.hypervolume(mine, ref), pareto.hypervolume(theirs, ref)
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
        directions = directions_of(objectives, "objectives")
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
            provenance=redacted(provenance or make_provenance("tuned")),
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
        if self.predictor is not None:  # absent otherwise, so presets without one keep their content hash
            data["predictor"] = self.predictor.to_dict()
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
        """Validate a parsed preset (`schema.check_preset`: migrations, fields, content hash), then build it."""
        fields_ = check_preset(data, source, strict)
        fields_["front"] = tuple(FrontPoint(**point) for point in fields_["front"])
        fields_["references"] = tuple(FrontPoint(**point) for point in fields_["references"])
        if fields_["predictor"] is not None:
            predictor = Predictor(fields_["predictor"])
            pick = fields_["picks"].get(predictor.trade_off, {}).get("params")
            if predictor.candidates[predictor.pick_index] == pick:
                fields_["predictor"] = predictor
            else:
                fields_["predictor"] = None
                fields_["predictor_error"] = (f"{source}: predictor: refused: its fallback is not the preset's "
                                              f"{predictor.trade_off} pick (picks edited after it was fitted?); "
                                              "re-fit it")
                warnings.warn(fields_["predictor_error"], PresetWarning, stacklevel=2)
        return cls(**fields_, source=source)


# ---------------------------------------------------------------------------------------------------------------------
# The front and its picks


def _orient(values: Mapping[str, float], directions: tuple[str, str]) -> tuple[float, float]:
    """(fidelity, edit_strength) turned so that larger is better for both."""
    return pareto.orient((values["fidelity"], values["edit_strength"]), directions)  # type: ignore[return-value]


def pareto_front(points: Sequence[FrontPoint], directions: tuple[str, str]) -> list[FrontPoint]:
    """The non-dominated points (duplicates of the same parameters kept once), highest fidelity first."""
    scored = [(_orient(p.values, directions), p) for p in points]  # type: ignore[arg-type]
    front: list[tuple[tuple[float, float], FrontPoint]] = []
    for i in pareto.front_indices([s for s, _ in scored]):
        s, p = scored[i]
        if not any(q.params == p.params and t == s for t, q in front):
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
    directions = directions_of(preset.objectives, "objectives", preset.label)
    return [_orient(p.values, directions) for p in preset.front if p.values]  # type: ignore[arg-type]


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

