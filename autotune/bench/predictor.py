"""7. Per-image guidance: on each category's held-out tasks, the preset's predictor (style "auto") against the
category's pick, SimInversion's (0.5, 7.5) and the oracle (each task's own best), with paired bootstrap intervals.

Every held-out task is edited under every candidate setting the predictor chooses among (the study's completed
trials), SimInversion's pair and, optionally, a coarse grid over the search space, and scored once; the policies are
then read from that table: the predictor's choice for the task (its pick where it falls back), the category's pick
(the preset's, for the predictor's trade-off), the paper's pair, and the oracle, the setting the trade-off's criterion
ranks first on the task's own measured values (among the candidates, and among every setting measured).
Differences are paired (same tasks) and their 95% intervals come from resampling the tasks. Which feature groups
carry the signal is measured here too: each group's values are shuffled among the held-out tasks and the
predictor's choices re-made.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autotune import atomic
from autotune.bench import markdown
from autotune.engine.features import GROUPS, group_of
from autotune.params import EditParams
from autotune.presets.predictor import landscape_choice
from autotune.presets.preset import Preset
from autotune.scoring.objectives import Objectives
from autotune.task import EditTask, task_fingerprint

METRICS = ("edit_success", "full_success", "background_psnr")
LABELS = {"edit_success": "edit success", "full_success": "full success", "background_psnr": "background PSNR (dB)"}


@dataclass
class Interval:
    """A paired difference's mean over the tasks and its 95% bootstrap interval."""

    mean: float
    low: float
    high: float

    def text(self, percent: bool) -> str:
        if percent:
            return f"{self.mean * 100:+.1f} [{self.low * 100:+.1f}, {self.high * 100:+.1f}]"
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"

    @property
    def sign(self) -> int:
        return 1 if self.low > 0 else -1 if self.high < 0 else 0


@dataclass
class CategoryOutcome:
    category: str
    tasks: int
    candidates: int
    grid: int
    preset: str
    model: str  # the predictor's selected model, as its fit recorded it
    fallback_share: float
    pick: tuple[float, float]
    means: dict[str, dict[str, float]]  # policy -> metric -> mean
    diffs: dict[str, dict[str, Interval]]  # comparison -> metric (and "nearness") -> interval
    verdict: str
    importance: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class PredictorResult:
    outcomes: list[CategoryOutcome]
    skipped: dict[str, str]

    def markdown(self) -> str:
        rows = []
        for o in self.outcomes:
            for policy in [p for p in ("auto", "pick", "paper", "oracle", "oracle+grid") if p in o.means]:
                m = o.means[policy]
                rows.append([o.category, _POLICY_NAMES[policy], f"{m['edit_success']:.0%}", f"{m['full_success']:.0%}",
                             f"{m['background_psnr']:.2f}", f"{m['nearness']:.3f}",
                             f"{o.fallback_share:.0%}" if policy == "auto" else ""])
        means = markdown.table(["category", "setting", "edit success", "full success", "background PSNR (dB)",
                                "distance to the ideal", "fell back"], rows)
        diff_rows = []
        for o in self.outcomes:
            for name, label in _COMPARISONS:
                if name not in o.diffs:
                    continue
                d = o.diffs[name]
                diff_rows.append([o.category, label] + [d[m].text(m != "background_psnr") for m in METRICS]
                                 + [d["nearness"].text(False)])
            for name, label in (("oracle-pick", "share of the oracle's gain"),
                                ("oracle+grid-pick", "share of the grid oracle's gain")):
                if name in o.diffs:
                    gap = [_gap(o.diffs["auto-pick"][m].mean, o.diffs[name][m].mean) for m in METRICS]
                    diff_rows.append([o.category, label, *gap, ""])
        diffs = markdown.table(["category", "paired difference", "edit success (points)", "full success (points)",
                                "background PSNR (dB)", "distance to the ideal (lower is better)"], diff_rows)
        verdicts = markdown.table(
            ["category", "held-out tasks", "candidates", "predictor (cross-validated on its study)", "verdict"],
            [[o.category, o.tasks, f"{o.candidates}" + (f" + {o.grid} grid" if o.grid else ""), o.model, o.verdict]
             for o in self.outcomes])
        parts = [verdicts, "", means, "", diffs]
        importance = [[o.category, g, f"{v['fidelity']:+.2f}", f"{v['edit_strength'] * 100:+.1f}"]
                      for o in self.outcomes for g, v in o.importance.items()]
        if importance:
            parts += ["", "Which features carry the signal: each group's values shuffled among the held-out tasks "
                      "(20 times), the predictor's choices re-made; the mean loss of the predictor's fidelity (dB) and "
                      "edit strength (points) against its unshuffled choices (positive: the group helps).", "",
                      markdown.table(["category", "feature group", "fidelity lost", "edit strength lost"], importance)]
        if self.skipped:
            parts += ["", "Not measured: " + "; ".join(f"{c}: {why}" for c, why in self.skipped.items())]
        return "\n".join(parts)


_COMPARISONS = (("auto-pick", "auto - pick"), ("auto-paper", "auto - (0.5, 7.5)"), ("oracle-pick", "oracle - pick"),
                ("oracle+grid-pick", "oracle with the grid - pick"))
_POLICY_NAMES = {"auto": "predicted per image (auto)", "pick": "the preset's pick", "paper": "(0.5, 7.5)",
                 "oracle": "oracle: each task's best candidate",
                 "oracle+grid": "oracle: best of every setting measured (candidates, (0.5, 7.5), grid)"}


def _gap(auto: float, oracle: float) -> str:
    """The predictor's gain as a share of the oracle's; none where the oracle gains nothing (or trades the metric
    away for the other objective)."""
    if oracle < 1e-12:
        return "-"
    return f"{auto / oracle + 0.0:.0%}"


# ---------------------------------------------------------------------------------------------------------------------
# Measuring


def _settings_key(params: EditParams) -> str:
    return json.dumps(params.to_dict(), sort_keys=True)


def measured_table(editor: Any, tasks: Sequence[EditTask], scorer: Any, settings: Sequence[EditParams],
                   cache_dir: str | Path | None, progress: bool = False) -> dict[str, list[dict[str, float]]]:
    """Every task edited under every setting and scored: setting key -> per-task metrics. Kept as JSON under
    `cache_dir` (keyed by model, tasks and scorer), so a re-fitted predictor re-measures only new settings."""
    from tqdm.auto import tqdm

    info = editor.model_info()
    key = hashlib.sha256(json.dumps([info.get("weights"), info.get("scheduler"), task_fingerprint(tasks),
                                     scorer.describe()], sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"heldout-{tasks[0].category}-{key}.json" if cache_dir is not None else None
    table: dict[str, list[dict[str, float]]] = {}
    if path is not None and path.is_file():
        table = json.loads(path.read_text(encoding="utf-8"))
    todo = [p for p in dict.fromkeys(settings, None) if _settings_key(p) not in table]
    if todo:
        rows: list[list[dict[str, float]]] = [[] for _ in todo]
        for task in tqdm(tasks, desc=f"held-out {tasks[0].category}", unit="task", disable=not progress):
            results = editor.edit_task(task, todo)
            scores = scorer.score(task, torch.stack([r.pixels for r in results]))
            for row, score in zip(rows, scores):
                row.append({k: float(v) for k, v in score.items()})
            editor.cache.clear()
        for params, row in zip(todo, rows):
            table[_settings_key(params)] = row
        if path is not None:
            atomic.write_text(path, json.dumps(table))
    return table


def grid_settings(base: EditParams, points: int, space: dict[str, Any] | None) -> list[EditParams]:
    """A points x points grid over the study's w_src and w_tgt ranges (the UNet default when not recorded)."""
    if points < 2:
        return []
    space = space or {}
    src, tgt = space.get("w_src") or {"low": 0.0, "high": 2.0}, space.get("w_tgt") or {"low": 1.0, "high": 12.0}
    return [base.with_(w_src=round(float(s), 4), w_tgt=round(float(t), 4))
            for s in np.linspace(src["low"], src["high"], points) for t in np.linspace(tgt["low"], tgt["high"], points)]


def _objective_values(objectives: Objectives, rows: list[dict[str, float]]) -> tuple[np.ndarray, np.ndarray]:
    signs = [1.0 if d == "maximize" else -1.0 for d in objectives.directions]
    fid = np.asarray([signs[0] * objectives.fidelity.value(r) for r in rows])
    strength = np.asarray([signs[1] * objectives.edit_strength.value(r) for r in rows])
    return fid, strength


def bench_category(editor: Any, scorer: Any, preset: Preset, tasks: Sequence[EditTask], *, grid: int = 0,
                   cache_dir: str | Path | None = None, resamples: int = 2000, repeats: int = 20, seed: int = 0,
                   progress: bool = False, label: str | None = None) -> CategoryOutcome:
    """The comparison on one category's held-out tasks (see the module docstring)."""
    predictor = preset.check_auto()
    criterion = predictor.criterion
    pick = preset.params(predictor.trade_off)
    paper = pick.with_(w_src=0.5, w_tgt=7.5)
    extra = [p for p in grid_settings(pick, grid, preset.provenance.get("search_space"))
             if p not in predictor.candidates]
    settings = list(dict.fromkeys([*predictor.candidates, paper, *extra]))
    table = measured_table(editor, tasks, scorer, settings, cache_dir, progress)
    objectives = Objectives.from_spec(list(preset.objectives))
    n = len(tasks)
    cols = {s: i for i, s in enumerate(settings)}
    metric = {m: np.asarray([[table[_settings_key(s)][t].get(m, math.nan) for s in settings] for t in range(n)])
              for m in METRICS}
    fid, strength = np.zeros((n, len(settings))), np.zeros((n, len(settings)))
    for j, s in enumerate(settings):
        fid[:, j], strength[:, j] = _objective_values(objectives, table[_settings_key(s)])

    features = editor.task_features(list(tasks), predictor.probe)
    choices = [preset.choose(f) for f in features]
    auto = np.asarray([cols[c.params] for c in choices])
    candidates = [cols[c] for c in predictor.candidates]
    policies = {
        "auto": auto,
        "pick": np.full(n, cols[pick]),
        "paper": np.full(n, cols[paper]),
        "oracle": np.asarray([candidates[landscape_choice(fid[t, candidates], strength[t, candidates],
                                                          {"name": "criterion"}, criterion)] for t in range(n)]),
    }
    if extra:
        policies["oracle+grid"] = np.asarray([landscape_choice(fid[t], strength[t], {"name": "criterion"}, criterion)
                                              for t in range(n)])
    rows = np.arange(n)

    def nearness(f: float, s: float) -> float:
        return -criterion.key(f, s)[0] if criterion.trade_off == "balanced" else math.nan

    means = {}
    for name, chosen in policies.items():
        means[name] = {m: float(np.nanmean(metric[m][rows, chosen])) for m in METRICS}
        means[name]["nearness"] = nearness(fid[rows, chosen].mean(), strength[rows, chosen].mean())

    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    diffs: dict[str, dict[str, Interval]] = {}
    comparisons = {"auto-pick": ("auto", "pick"), "auto-paper": ("auto", "paper"), "oracle-pick": ("oracle", "pick")}
    if "oracle+grid" in policies:
        comparisons["oracle+grid-pick"] = ("oracle+grid", "pick")
    for name, (a, b) in comparisons.items():
        ca, cb = policies[a], policies[b]
        out = {}
        for m in METRICS:
            delta = metric[m][rows, ca] - metric[m][rows, cb]
            out[m] = _interval(delta, draws)
        fa, sa, fb, sb = fid[rows, ca], strength[rows, ca], fid[rows, cb], strength[rows, cb]
        boot = [nearness(fa[d].mean(), sa[d].mean()) - nearness(fb[d].mean(), sb[d].mean()) for d in draws]
        out["nearness"] = Interval(nearness(fa.mean(), sa.mean()) - nearness(fb.mean(), sb.mean()),
                                   *np.nanpercentile(boot, [2.5, 97.5]).tolist()) if criterion.trade_off == \
            "balanced" else Interval(math.nan, math.nan, math.nan)
        diffs[name] = out

    importance = _heldout_importance(preset, features, fid, strength, cols, auto, repeats, seed)
    verdict = _verdict(diffs["auto-pick"], criterion.trade_off)
    return CategoryOutcome(
        category=preset.category, tasks=n, candidates=len(predictor.candidates), grid=len(extra),
        preset=label or preset.label, model=str(predictor.fit.get("selected", predictor.kind)),
        fallback_share=float(np.mean([c.fallback for c in choices])),
        pick=(pick.w_src.start, pick.w_tgt.start), means=means, diffs=diffs, verdict=verdict, importance=importance)


def _interval(delta: np.ndarray, draws: np.ndarray) -> Interval:
    boot = np.nanmean(delta[draws], axis=1)
    low, high = np.nanpercentile(boot, [2.5, 97.5])
    return Interval(float(np.nanmean(delta)), float(low), float(high))


def _verdict(d: dict[str, Interval], trade_off: str) -> str:
    """Beats the pick: nearer the ideal with an interval above zero (balanced), or better in one objective's
    metric and not worse in the other's; loses: the reverse."""
    if trade_off == "balanced" and d["nearness"].sign:
        better = d["nearness"].sign < 0  # a smaller distance to the ideal
        return ("beats the pick (nearer the ideal; interval excludes 0)" if better
                else "loses to the pick (farther from the ideal; interval excludes 0)")
    signs = {m: d[m].sign for m in METRICS}
    if any(v > 0 for v in signs.values()) and not any(v < 0 for v in signs.values()):
        return "beats the pick (better on a metric, worse on none)"
    if any(v < 0 for v in signs.values()) and not any(v > 0 for v in signs.values()):
        return "loses to the pick"
    if all(v == 0 for v in signs.values()):
        return "no difference shown (every interval contains 0)"
    return "a trade: better on one metric, worse on another"


def _heldout_importance(preset: Preset, features: list[dict[str, float]], fid: np.ndarray, strength: np.ndarray,
                        cols: dict[EditParams, int], auto: np.ndarray, repeats: int, seed: int
                        ) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed + 1)
    rows = np.arange(len(features))
    names = list(features[0])
    out = {}
    for group in GROUPS:
        keys = [k for k in names if group_of(k) == group]
        if not keys:
            continue
        losses = []
        for _ in range(repeats):
            order = rng.permutation(len(features))
            shuffled = [{**f, **{k: features[o][k] for k in keys}} for f, o in zip(features, order)]
            chosen = np.asarray([cols[preset.choose(f).params] for f in shuffled])
            losses.append((fid[rows, auto].mean() - fid[rows, chosen].mean(),
                           strength[rows, auto].mean() - strength[rows, chosen].mean()))
        loss = np.asarray(losses)
        out[group] = {"fidelity": float(loss[:, 0].mean()), "edit_strength": float(loss[:, 1].mean())}
    return out


def bench_predictor(editor: Any, scorer: Any, presets: dict[str, Preset | str], heldout: dict[str, Sequence[EditTask]],
                    *, grid: int = 0, cache_dir: str | Path | None = None, seed: int = 0, progress: bool = False
                    ) -> PredictorResult:
    """Each category with a preset carrying a predictor; `presets[c]` is the preset or why there is none."""
    outcomes, skipped = [], {}
    for category, tasks in heldout.items():
        preset = presets.get(category)
        if not isinstance(preset, Preset):
            skipped[category] = str(preset or "no preset")
            continue
        outcomes.append(bench_category(editor, scorer, preset, tasks, grid=grid, cache_dir=cache_dir, seed=seed,
                                       progress=progress))
    return PredictorResult(outcomes, skipped)


def shipped_presets(editor: Any, categories: Sequence[str], directory: str | Path | None = None
                    ) -> dict[str, Preset | str]:
    """Each category's preset for this model (from `directory`, else the lookup order), or why it cannot be measured:
    no preset, or one without a usable predictor."""
    from autotune.errors import PresetError
    from autotune.presets.store import PresetStore

    store = PresetStore([Path(directory)]) if directory is not None else PresetStore()
    out: dict[str, Preset | str] = {}
    for category in categories:
        try:
            preset = store.preset_for(category, editor.model_info())
            preset.check_auto()
            out[category] = preset
        except PresetError as exc:
            out[category] = str(exc)
    return out
