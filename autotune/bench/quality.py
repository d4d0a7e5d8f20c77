"""4. Quality on a fresh held-out set: every named pick of the tuned presets against SimInversion's (0.5, 7.5) and
against DDIM (`--method ddim`), with paired bootstrap 95% intervals on the differences, per category. On a
rectified-flow model (the flow shapes model): the balanced pick of each method's tuned preset (FlowEdit, flow
inversion) against the model's published FlowEdit setting and flow inversion at SimInversion's (0.5, 7.5).

The held-out tasks come from a split seed that no tuning run, benchmark or design decision has read (`HELDOUT_SEED`);
any scene that the held-out tasks of earlier seeds show is left out, so "held out" holds even where two seeds
happen to draw the same scene. Every setting edits the same tasks, so the differences are paired: the bootstrap
resamples tasks, each with all of its settings' scores.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autotune.bench import markdown
from autotune.bench.efficiency import GridTable
from autotune.params import FLOW_METHODS, EditParams, window_steps
from autotune.task import EditTask, task_digest

HELDOUT_SEED = 20261205  # issue 22's fresh held-out seed: no tuning or design decision has seen its tasks
SEEN_SEEDS = (0,)  # held-out seeds read before (benchmarks, tuning checks): their scenes are left out
PICKS = ("conservative", "balanced", "aggressive")
BASELINES = {
    "(0.5, 7.5)": {"method": "siminversion", "w_src": 0.5, "w_tgt": 7.5},  # SimInversion's prescription
    "ddim": {"method": "ddim", "w_src": 1.0, "w_tgt": 7.5},  # DDIM inversion at 1, both branches at 7.5
}
FLOW_PICKS = ("balanced",)  # a flow edit costs several UNet edits on this CPU: one pick per method
METRICS = {"edit_success": "edit success", "full_success": "full success", "background_psnr": "background PSNR"}
RESAMPLES = 10_000
CONFIDENCE = 0.95


# ---------------------------------------------------------------------------------------------------------------------
# Intervals


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    def verdict(self) -> str:
        """'better' or 'worse' when the interval excludes 0, else 'no clear difference'."""
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "no clear difference"


def paired_bootstrap(a: Sequence[float], b: Sequence[float] | None = None, *, resamples: int = RESAMPLES,
                     confidence: float = CONFIDENCE, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of mean(a - b) (of mean(a) without `b`): tasks are resampled with replacement,
    each keeping its pair of scores, so what the two settings share (an easy or a hard task) cancels. Pairs with a
    non-finite score are left out."""
    a = np.asarray(a, dtype=float)
    b = np.zeros_like(a) if b is None else np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores must be two sequences of one length, got shapes {a.shape} and {b.shape}")
    diff = (a - b)[np.isfinite(a) & np.isfinite(b)]
    if diff.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(resamples, diff.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(float(diff.mean()), float(low), float(high), int(diff.size))


# ---------------------------------------------------------------------------------------------------------------------
# Tasks and presets


@dataclass
class PresetUsed:
    """Which preset a category's picks came from: where, and its content hash (what the figures stand for)."""

    category: str
    source: str
    content_hash: str
    kind: str
    picks: dict[str, dict[str, Any]]  # style -> EditParams.to_dict()


def baselines_for(editor: Any) -> dict[str, dict[str, Any]]:
    """The baselines the picks are measured against: SimInversion's (0.5, 7.5) and DDIM on the UNet family; on the
    flow family the loaded model's published settings (SD3: FlowEdit's (3.5, 13.5), n_max 33 of 50; flow inversion at
    SimInversion's (0.5, 7.5), full depth), whole, steps included."""
    if getattr(getattr(editor, "family", None), "name", "unet") != "flow":
        return dict(BASELINES)
    return {f"published {method}": editor.default_params(method).to_dict() for method in ("flowedit",
                                                                                       "flow_siminversion")}


def tuned_preset(editor: Any, category: str, presets: Any = None) -> tuple[Any, str] | None:
    """The tuned preset for `category` and this model in the preset lookup order (or in `presets`, a directory), with
    where it was found; None if there is none. A named folder that is not there is an error, not "no preset": a
    typo would otherwise drop a method from an hour-long comparison without a word."""
    from autotune.errors import InputError, PresetError
    from autotune.presets.store import PresetStore

    if presets is not None and not Path(presets).is_dir():
        raise InputError(f"presets folder {presets} does not exist or is not a folder; check the path given to "
                         "--presets (several folders are comma-separated)")
    try:
        store = PresetStore([Path(presets)]) if presets is not None else PresetStore()
        entry = store.find(category, editor.model_info())
    except PresetError:
        return None
    if entry.preset is None or entry.preset.kind != "tuned":
        return None
    return entry.preset, f"preset {_shown_path(entry.path)}"


def grid_preset(editor: Any, category: str, grid: GridTable) -> tuple[Any, str]:
    """For a model without tuned presets: the picks of the dense grid's Pareto front (`Preset.from_front`, the rule
    the tuner's presets follow), the grid measured on tune-split tasks."""
    from autotune.presets.preset import FrontPoint, Preset

    points = []
    for i, s in enumerate(grid.w_src):
        for j, t in enumerate(grid.w_tgt):
            f, e = grid.fidelity[i][j], grid.strength[i][j]
            if math.isfinite(f) and math.isfinite(e):
                points.append(FrontPoint(EditParams(w_src=s, w_tgt=t, steps=grid.steps),
                                         {"fidelity": f, "edit_strength": e}))
    objectives = [{"name": "fidelity", "direction": grid.directions[0], "metrics": {}},
                  {"name": "edit_strength", "direction": grid.directions[1], "metrics": {}}]
    preset = Preset.from_front(points, category=category, model=editor.model_info(), objectives=objectives)
    return preset, (f"the picks of the {len(grid.w_src)}x{len(grid.w_tgt)} grid's Pareto front on {grid.tasks} "
                    "tune-split tasks (no tuned preset for this model)")


def tuned_on_count(preset: Any, tasks: Sequence[EditTask]) -> int | None:
    """How many of `tasks` the preset lists as tuned on (by task digest, the check `autotune evaluate` makes);
    None when it lists none."""
    listed = getattr(preset, "tuning_tasks", None)
    return None if listed is None else sum(task_digest(t) in listed for t in tasks)


def _shown_path(path: Any) -> str:
    """Relative to the working directory when under it: the section is committed and read on other machines."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, TypeError):
        return str(path)


# ---------------------------------------------------------------------------------------------------------------------
# The benchmark


@dataclass
class SettingScores:
    """One setting's scores on every held-out task of a category, in task order."""

    category: str
    setting: str  # a pick's name (with its method's when a category has presets of several) or a baseline's
    params: dict[str, Any]
    scores: dict[str, list[float]]  # metric -> per task


@dataclass
class QualityResult:
    seed: int
    tasks: dict[str, int]  # category -> held-out tasks
    left_out: dict[str, int]  # category -> tasks left out as seen before
    presets: list[PresetUsed]
    settings: list[SettingScores]
    resamples: int = RESAMPLES
    seen_seeds: list[int] = field(default_factory=lambda: list(SEEN_SEEDS))
    # category -> held-out tasks among the tasks its preset lists as tuned on (by task digest, as `autotune
    # evaluate` checks); None: the preset lists none (tuned before autotune recorded them, or a grid's picks)
    tuned_on: dict[str, int | None] = field(default_factory=dict)
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))

    def tuning_check(self) -> str:
        """What the presets' own task lists say about the held-out set, one sentence or two."""
        shared = {c: n for c, n in self.tuned_on.items() if n}
        unlisted = [c for c, n in self.tuned_on.items() if n is None]
        checked = [c for c, n in self.tuned_on.items() if n == 0]
        parts = []
        if shared:
            parts.append("**Not held out:** " + "; ".join(f"{c}: {n} of {self.tasks[c]} tasks are among the tasks "
                                                          "its preset was tuned on" for c, n in shared.items())
                         + " (by task digest); those rows measure tuning tasks.")
        if checked:
            parts.append(f"Checked by task digest against the presets' lists of tuning tasks ({', '.join(checked)}): "
                         "none of the held-out tasks was tuned on.")
        if unlisted:
            parts.append(f"The presets for {', '.join(unlisted)} list no tuning tasks (tuned before autotune recorded "
                         "them, or a grid's picks), so no digest check: these tasks are held out by the shapes "
                         "world's split, which puts each scene in tune or heldout by its hash.")
        return " ".join(parts)

    def of(self, category: str, setting: str) -> SettingScores:
        return next(s for s in self.settings if s.category == category and s.setting == setting)

    def difference(self, category: str, setting: str, baseline: str, metric: str) -> Interval:
        seed = int(hashlib.sha256(f"{category}/{setting}/{baseline}/{metric}".encode()).hexdigest()[:8], 16)
        return paired_bootstrap(self.of(category, setting).scores[metric], self.of(category, baseline).scores[metric],
                                resamples=self.resamples, seed=seed)

    def losses(self) -> list[str]:
        """Every pick whose interval lies below zero against a baseline, with the metrics it loses on."""
        out = []
        for s in self.settings:
            if s.setting in self.baselines:
                continue
            for baseline in self.baselines:
                lost = [f"{label} {_delta(d, metric)}" for metric, label in METRICS.items()
                        if (d := self.difference(s.category, s.setting, baseline, metric)).verdict() == "worse"]
                if lost:
                    out.append(f"{s.category} {s.setting} against {baseline}: {', '.join(lost)}")
        return out

    def markdown(self) -> str:
        absolute = []
        for s in self.settings:
            cells = [_value(paired_bootstrap(s.scores[m], resamples=self.resamples), m) for m in METRICS]
            absolute.append([s.category, s.setting, _params(s.params), *cells, len(s.scores["edit_success"])])
        setting = "(w_src, w_tgt)" + (", window" if _is_flow(self) else "")
        table = markdown.table(["category", "setting", setting, *[f"{v} [95% CI]" for v in METRICS.values()],
                                "tasks"], absolute)
        deltas = []
        for s in self.settings:
            if s.setting in self.baselines:
                continue
            for baseline in self.baselines:
                ds = {m: self.difference(s.category, s.setting, baseline, m) for m in METRICS}
                reading = "; ".join(f"{'loses' if d.verdict() == 'worse' else 'gains'} {METRICS[m]}"
                                    for m, d in ds.items() if d.verdict() != "no clear difference")
                if s.params == self.of(s.category, baseline).params:
                    reading = "the same setting"
                deltas.append([s.category, s.setting, baseline, *[_delta(d, m) for m, d in ds.items()],
                               reading or "no clear difference"])
        delta_table = markdown.table(["category", "pick", "against", *[f"Δ {v} [95% CI]" for v in METRICS.values()],
                                      "reading"], deltas)
        losses = self.losses()
        loss_text = ("**Where a preset loses** (the interval below zero): " + "; ".join(losses) + "."
                     if losses else "**No pick loses** on any metric against either baseline (no interval below 0).")
        used = "; ".join(f"{p.category}: {p.source}, {p.content_hash[:19]}…" for p in self.presets)
        left = sum(self.left_out.values())
        low, high = min(self.tasks.values()), max(self.tasks.values())
        return (f"Held-out split seed **{self.seed}**, {low if low == high else f'{low}-{high}'} tasks "
                f"per category, read by no tuning run or design decision before this benchmark ({left} task(s) "
                f"whose scene the held-out tasks of seed(s) {', '.join(map(str, self.seen_seeds))} show were left "
                "out). Every setting edits the same tasks; "
                + ("the settings differ in method, guidance and window.\n\n" if _is_flow(self) else
                   "only the guidance (and, for `ddim`, the method) differs.\n\n")
                + (f"{self.tuning_check()}\n\n" if self.tuned_on else "")
                + table + "\n\nPaired differences, pick minus baseline, task by task: percentile bootstrap over the "
                f"tasks ({self.resamples:,} resamples), 95% intervals. Edit success and full success in percentage "
                "points, background PSNR in dB.\n\n" + delta_table + "\n\n" + loss_text
                + f"\n\nPresets read (content hash): {used}.")


def _is_flow(result: QualityResult) -> bool:
    return any(s.params.get("method") in FLOW_METHODS for s in result.settings)


def _params(p: dict[str, Any]) -> str:
    if p.get("method") == "ddim":
        return f"ddim, {p['w_tgt']:.3g}"
    if p.get("method") in FLOW_METHODS:
        steps = p["steps"]
        window = f"n_max {window_steps(p['n_max'], steps)}"
        if p["method"] == "flowedit" and window_steps(p.get("n_min", 0.0), steps):
            window += f", n_min {window_steps(p['n_min'], steps)}"
        return f"{p['method']} ({p['w_src']:.3g}, {p['w_tgt']:.3g}), {window} of {steps}"
    return f"({p['w_src']:.3g}, {p['w_tgt']:.3g})"


def _value(i: Interval, metric: str) -> str:
    if metric == "background_psnr":
        return f"{i.mean:.1f} [{i.low:.1f}, {i.high:.1f}]"
    return f"{i.mean:.0%} [{i.low:.0%}, {i.high:.0%}]"


def _delta(i: Interval, metric: str) -> str:
    if metric == "background_psnr":
        return f"{i.mean:+.1f} [{i.low:+.1f}, {i.high:+.1f}]"
    return f"{100 * i.mean:+.0f} [{100 * i.low:+.0f}, {100 * i.high:+.0f}]"


def bench_quality(editor: Any, scorer: Any, heldout: dict[str, Sequence[EditTask]],
                  presets: dict[str, tuple[Any, str] | list[tuple[Any, str]]], *, seed: int = HELDOUT_SEED,
                  left_out: dict[str, int] | None = None, progress: bool = False) -> QualityResult:
    """Edit each category's held-out tasks under the named picks of its preset(s) and the baselines
    (`baselines_for`), score each task, keep every score. A category may have several presets (one per method, as
    FlowEdit and flow inversion on a flow model); their picks are then named with the method. On the UNet family the
    baselines take the balanced pick's other settings (steps, Prompt-to-Prompt); flow baselines are whole published
    settings."""
    import torch
    from tqdm.auto import tqdm

    baselines = baselines_for(editor)
    flow = getattr(getattr(editor, "family", None), "name", "unet") == "flow"
    settings_out: list[SettingScores] = []
    used: list[PresetUsed] = []
    tuned_on: dict[str, int | None] = {}
    for category, tasks in heldout.items():
        found = presets[category] if isinstance(presets[category], list) else [presets[category]]
        named: dict[str, EditParams] = {}
        listed = [n for preset, _ in found if (n := tuned_on_count(preset, tasks)) is not None]
        tuned_on[category] = sum(listed) if listed else None
        for preset, source in found:
            picks = {style: preset.params(style) for style in (FLOW_PICKS if flow else PICKS) if style in preset.picks}
            prefix = f"{preset.params('balanced').method} " if len(found) > 1 else ""
            named.update({prefix + style: p for style, p in picks.items()})
            used.append(PresetUsed(category, source, preset.content_hash, preset.kind,
                                   {k: v.to_dict() for k, v in picks.items()}))
        base = found[0][0].params("balanced")
        baseline_params = {name: EditParams.from_dict(values) if flow else base.with_(**values)
                           for name, values in baselines.items()}
        unique = list(dict.fromkeys([*named.values(), *baseline_params.values()]))  # a pick equal to a baseline
        scores: dict[EditParams, dict[str, list[float]]] = {p: {m: [] for m in METRICS} for p in unique}  # once
        per_call = max(1, int(getattr(editor, "max_batch", 1)) // len(unique))
        with tqdm(total=len(tasks), desc=f"quality {category}", unit="task", disable=not progress) as bar:
            for at in range(0, len(tasks), per_call):
                chunk = list(tasks[at:at + per_call])
                rows = editor.edit_tasks(chunk, unique)
                for task, row in zip(chunk, rows, strict=True):
                    got = scorer.score(task, torch.stack([r.pixels for r in row]))
                    for p, s in zip(unique, got, strict=True):
                        for m in METRICS:
                            scores[p][m].append(float(s.get(m, math.nan)))
                editor.cache.clear()
                bar.update(len(chunk))
        for name, p in [*named.items(), *baseline_params.items()]:
            settings_out.append(SettingScores(category, name, p.to_dict(), {m: list(v) for m, v in scores[p].items()}))
    return QualityResult(seed, {c: len(t) for c, t in heldout.items()}, dict(left_out or {}), used, settings_out,
                         tuned_on=tuned_on, baselines=list(baselines))
