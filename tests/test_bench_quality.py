"""The quality benchmark on a fresh held-out set: paired bootstrap intervals checked against independent computations,
held-out tasks that leave out what was seen, every pick against both baselines, and losses stated."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from autotune.bench import _common, quality
from autotune.bench.quality import Interval, QualityResult, SettingScores, paired_bootstrap
from autotune.params import EditParams

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_paired_bootstrap_agrees_with_scipy():
    from scipy import stats

    rng = np.random.default_rng(7)
    a = rng.normal(30.0, 4.0, 60)
    b = a - rng.normal(1.0, 1.5, 60)  # paired: b follows a, task by task
    got = paired_bootstrap(a, b, resamples=40_000, seed=1)
    ref = stats.bootstrap((a, b), lambda x, y: np.mean(x - y), paired=True, vectorized=False, n_resamples=40_000,
                          method="percentile", confidence_level=0.95, random_state=2).confidence_interval
    assert got.mean == pytest.approx(np.mean(a - b))
    assert got.low == pytest.approx(ref.low, abs=0.03) and got.high == pytest.approx(ref.high, abs=0.03)
    assert got.n == 60


def test_paired_bootstrap_converges_to_the_exact_bootstrap_distribution():
    """For 5 tasks every one of the 5^5 resamples can be enumerated: the exact percentiles of the bootstrap
    distribution of the mean difference."""
    a = np.array([0.9, 0.2, 0.75, 0.4, 1.3])
    b = np.array([0.1, 0.3, 0.2, 0.0, 0.5])
    d = a - b
    means = np.sort([d[list(idx)].mean() for idx in itertools.product(range(5), repeat=5)])
    exact_low, exact_high = means[int(0.025 * len(means))], means[int(0.975 * len(means)) - 1]
    got = paired_bootstrap(a, b, resamples=200_000, seed=3)
    step = 0.2 * np.ptp(d) / 5  # a few atoms of the discrete distribution
    assert abs(got.low - exact_low) < step and abs(got.high - exact_high) < step


def test_pairing_is_what_narrows_the_interval():
    rng = np.random.default_rng(0)
    hard = rng.uniform(10, 40, 60)  # tasks differ a lot; the two settings differ by a little, on every task
    a, b = hard + 0.5 + rng.normal(0, 0.2, 60), hard
    paired = paired_bootstrap(a, b)
    unpaired = [rng.choice(a, 60).mean() - rng.choice(b, 60).mean() for _ in range(4000)]
    lo, hi = np.quantile(unpaired, [0.025, 0.975])
    assert paired.verdict() == "better" and lo < 0 < hi  # pairing sees the gain, unpaired resampling would not
    assert paired.high - paired.low < (hi - lo) / 10
    assert paired_bootstrap([1, 0, np.nan], [0, 0, 1]).n == 2  # a pair with a non-finite score is left out
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap([1, 2], [1])


def test_fresh_tasks_leave_out_the_scenes_seen_before(monkeypatch):
    from autotune.shapes import tasks as shapes

    real = shapes.shapes_tasks
    seen = real("change_color", "heldout", 6, 0)

    def with_repeats(category, split, count, seed, version=1):
        drawn = real(category, split, count, seed, version=version)
        if seed == 99:  # the fresh seed happens to draw two scenes seed 0 showed
            drawn = [drawn[0], seen[1], drawn[1], seen[4]] + drawn[2:]
        return drawn[:count]

    monkeypatch.setattr(shapes, "shapes_tasks", with_repeats)
    tasks, left = _common.fresh_shapes_tasks("change_color", "heldout", 5, 99, seen_seeds=(0,), seen_count=6)
    keys = {_common.scene_key(t) for t in seen}
    assert len(tasks) == 5 and left == 2 and not any(_common.scene_key(t) in keys for t in tasks)
    assert len({_common.scene_key(t) for t in tasks}) == 5


def test_the_fresh_heldout_seed_shares_no_scene_with_seed_0():
    from autotune.shapes.tasks import shapes_tasks

    for category in _common.SHAPES_CATEGORIES:
        tasks, left = _common.fresh_shapes_tasks(category, "heldout", 60, quality.HELDOUT_SEED)
        old = {_common.scene_key(t) for t in shapes_tasks(category, "heldout", _common.SEEN_COUNT, 0)}
        assert len(tasks) == 60 and not old & {_common.scene_key(t) for t in tasks}
        assert all(t.metadata["split"] == "heldout" and t.metadata["seed"] == quality.HELDOUT_SEED for t in tasks)


@pytest.fixture(scope="module")
def editor(tiny_model_dir):
    from autotune.engine.editor import Editor

    return Editor.from_pretrained(str(tiny_model_dir), device="cpu", progress=False)


def _preset(editor, steps=2):
    from autotune.presets.preset import FrontPoint, Preset

    objectives = [{"name": "fidelity", "direction": "maximize", "metrics": {}},
                  {"name": "edit_strength", "direction": "maximize", "metrics": {}}]
    points = [FrontPoint(EditParams(w_src=s, w_tgt=t, steps=steps), {"fidelity": f, "edit_strength": e})
              for s, t, f, e in ((0.1, 2.0, 30.0, 0.2), (0.4, 5.0, 25.0, 0.6), (0.5, 7.5, 20.0, 0.9))]
    return Preset.from_front(points, category="change_color", model=editor.model_info(), objectives=objectives)


def test_quality_edits_every_pick_and_both_baselines_on_the_same_tasks(editor, capsys):
    from autotune.shapes.scoring import ShapesScorer

    tasks = _common.fresh_shapes_tasks("change_color", "heldout", 3, quality.HELDOUT_SEED)[0]
    preset = _preset(editor)
    r = quality.bench_quality(editor, ShapesScorer(), {"change_color": tasks}, {"change_color": (preset, "here")},
                              left_out={"change_color": 0}, progress=True)
    assert "quality change_color" in capsys.readouterr().err
    assert [s.setting for s in r.settings] == ["conservative", "balanced", "aggressive", "(0.5, 7.5)", "ddim"]
    assert r.of("change_color", "ddim").params["method"] == "ddim"
    assert r.of("change_color", "aggressive").params == r.of("change_color", "(0.5, 7.5)").params  # same pair
    assert r.of("change_color", "aggressive").scores == r.of("change_color", "(0.5, 7.5)").scores
    # independent: the ddim baseline edited alone, task by task, scores the same
    scorer = ShapesScorer()
    for k, task in enumerate(tasks):
        alone = editor.edit(task.image, task.source_prompt, task.target_prompt,
                            EditParams(method="ddim", w_tgt=7.5, steps=2), blend_words=task.blend_words)
        want = scorer.score(task, alone.pixels[None])[0]
        assert r.of("change_color", "ddim").scores["background_psnr"][k] == pytest.approx(want["background_psnr"],
                                                                                          abs=0.05)
    d = r.difference("change_color", "balanced", "ddim", "background_psnr")
    by_hand = np.mean(np.subtract(r.of("change_color", "balanced").scores["background_psnr"],
                                  r.of("change_color", "ddim").scores["background_psnr"]))
    assert d.mean == pytest.approx(by_hand) and d.low <= d.mean <= d.high
    assert r.presets[0].content_hash == preset.content_hash
    assert preset.content_hash[:19] in r.markdown()


def test_the_section_states_where_a_preset_loses():
    n = 60
    rng = np.random.default_rng(0)
    base = rng.uniform(20, 30, n)

    def setting(name, success, psnr, method="siminversion"):
        return SettingScores("add_object", name, {"method": method, "w_src": 0.5, "w_tgt": 7.5},
                             {"edit_success": list(success), "full_success": list(success),
                              "background_psnr": list(psnr)})

    ones, zeros = np.ones(n), np.zeros(n)
    settings = [setting("conservative", ones, base + 3), setting("balanced", np.r_[ones[:15], zeros[15:]], base + 4),
                setting("aggressive", ones, base), setting("(0.5, 7.5)", ones, base),
                setting("ddim", ones, base - 1, "ddim")]
    r = QualityResult(quality.HELDOUT_SEED, {"add_object": n}, {"add_object": 0}, [], settings)
    text = r.markdown()
    losses = r.losses()
    assert any(line.startswith("add_object balanced against (0.5, 7.5): edit success -75") and "full success -75"
               in line for line in losses)
    assert not any(line.startswith("add_object conservative") for line in losses)
    assert "**Where a preset loses**" in text
    assert "loses edit success; loses full success; gains background PSNR" in text
    assert f"Held-out split seed **{quality.HELDOUT_SEED}**, 60 tasks per category" in text
    same = "| add_object | aggressive | (0.5, 7.5) | +0 [+0, +0] | +0 [+0, +0] | +0.0 [+0.0, +0.0] | the same setting |"
    assert same in text
    assert Interval(0.1, 0.05, 0.2, 5).verdict() == "better" and Interval(0, -0.1, 0.1, 5).verdict() != "worse"


def test_tuned_preset_names_the_preset_by_its_path_under_the_working_directory(editor, tmp_path, monkeypatch):
    from autotune.presets.store import preset_filename

    info = editor.model_info()
    (tmp_path / "presets").mkdir()
    preset = _preset(editor)
    preset.save(tmp_path / "presets" / preset_filename(info.get("id", "model"), "change_color"))
    monkeypatch.chdir(tmp_path)
    found, source = quality.tuned_preset(editor, "change_color", tmp_path / "presets")
    assert found.params("balanced") == preset.params("balanced")
    assert source == f"preset presets/{preset_filename(info.get('id', 'model'), 'change_color')}"
    assert quality.tuned_preset(editor, "change_object", tmp_path / "presets") is None


def test_grid_preset_picks_from_the_grids_front(editor):
    from autotune.bench.efficiency import GridTable

    grid = GridTable("change_color", [0.0, 2.0], [1.0, 12.0], [[30.0, 20.0], [25.0, 10.0]], [[0.0, 0.5], [0.2, 1.0]],
                     ["maximize", "maximize"], tasks=1, steps=2)
    preset, source = quality.grid_preset(editor, "change_color", grid)
    front = {(0.0, 1.0), (0.0, 12.0), (2.0, 12.0)}  # the grid's non-dominated cells
    assert {(p.w_src.start, p.w_tgt.start) for p in map(preset.params, quality.PICKS)} <= front
    assert "grid" in source and preset.params().steps == 2
    assert torch.get_num_threads() == 1


def test_the_section_checks_the_held_out_tasks_against_the_presets_tuning_tasks(editor):
    from autotune.task import task_digest

    tasks = _common.fresh_shapes_tasks("change_color", "heldout", 4, quality.HELDOUT_SEED)[0]
    tuned = _common.fresh_shapes_tasks("change_color", "tune", 3, quality.HELDOUT_SEED)[0]
    preset = _preset(editor)
    assert quality.tuned_on_count(preset, tasks) is None  # a grid's picks list no tuning tasks
    preset.provenance["task_digests"] = sorted(task_digest(t) for t in tuned)
    assert quality.tuned_on_count(preset, tasks) == 0
    preset.provenance["task_digests"] = sorted(task_digest(t) for t in [*tuned, tasks[1], tasks[3]])
    assert quality.tuned_on_count(preset, tasks) == 2

    def result(tuned_on):
        settings = [SettingScores(c, name, {"method": "siminversion", "w_src": 0.5, "w_tgt": 7.5},
                                  {"edit_success": [1.0] * 4, "full_success": [1.0] * 4, "background_psnr": [30.0] * 4})
                    for c in tuned_on for name in ("balanced", "(0.5, 7.5)", "ddim")]
        return QualityResult(quality.HELDOUT_SEED, dict.fromkeys(tuned_on, 4), dict.fromkeys(tuned_on, 0), [],
                             settings, tuned_on=tuned_on).markdown()

    text = result({"change_color": 2, "add_object": 0, "delete_object": None})
    assert "**Not held out:** change_color: 2 of 4 tasks are among the tasks its preset was tuned on" in text
    assert "tuning tasks (add_object): none of the held-out tasks was tuned on" in text
    assert "The presets for delete_object list no tuning tasks" in text
    assert "Not held out" not in result({"add_object": 0})


def test_flow_quality_measures_each_methods_pick_against_the_published_settings(tiny_sd3_dir):
    """On a rectified-flow model: one preset per method, each balanced pick named with its method, against the
    model's published FlowEdit setting and flow inversion at (0.5, 7.5), whole (their own steps and windows)."""
    from autotune.engine.editor import Editor
    from autotune.presets.preset import FrontPoint, Preset
    from autotune.shapes.scoring import ShapesScorer

    editor = Editor.from_pretrained(str(tiny_sd3_dir), device="cpu", progress=False)
    objectives = [{"name": "fidelity", "direction": "maximize", "metrics": {}},
                  {"name": "edit_strength", "direction": "maximize", "metrics": {}}]

    def preset(method, pairs):
        points = [FrontPoint(EditParams(method=method, w_src=s, w_tgt=t, steps=4, n_max=0.5),
                             {"fidelity": f, "edit_strength": e}) for s, t, f, e in pairs]
        return Preset.from_front(points, category="change_color", model=editor.model_info(), objectives=objectives)

    flowedit = preset("flowedit", [(1.5, 4.0, 30.0, 0.2), (2.0, 6.0, 25.0, 0.6), (2.5, 9.0, 20.0, 0.9)])
    inversion = preset("flow_siminversion", [(0.0, 2.0, 30.0, 0.2), (0.25, 3.0, 25.0, 0.6), (1.0, 5.0, 20.0, 0.9)])
    tasks = _common.fresh_shapes_tasks("change_color", "heldout", 2, quality.HELDOUT_SEED, version=2)[0]
    r = quality.bench_quality(editor, ShapesScorer(), {"change_color": tasks},
                              {"change_color": [(flowedit, "a"), (inversion, "b")]})
    assert [s.setting for s in r.settings] == ["flowedit balanced", "flow_siminversion balanced",
                                               "published flowedit", "published flow_siminversion"]
    assert r.of("change_color", "published flowedit").params == {
        **EditParams(method="flowedit", w_src=3.5, w_tgt=13.5, steps=50, n_max=0.66).to_dict()}
    assert r.of("change_color", "published flow_siminversion").params == EditParams(
        method="flow_siminversion", w_src=0.5, w_tgt=7.5, steps=50, n_max=1.0).to_dict()
    assert r.of("change_color", "flowedit balanced").params == flowedit.params("balanced").to_dict()
    scorer = ShapesScorer()  # independent: the published FlowEdit setting edited alone, task by task
    for k, task in enumerate(tasks):
        alone = editor.edit(task.image, task.source_prompt, task.target_prompt, editor.default_params("flowedit"))
        want = scorer.score(task, alone.pixels[None])[0]["background_psnr"]
        assert r.of("change_color", "published flowedit").scores["background_psnr"][k] == pytest.approx(want, abs=0.05)
    text = r.markdown()
    assert "| change_color | published flowedit | flowedit (3.5, 13.5), n_max 33 of 50 |" in text
    assert "flow_siminversion (0.5, 7.5), n_max 50 of 50" in text
    assert text.count("| change_color | flowedit balanced | published") == 2  # against both baselines
    assert len(r.presets) == 2 and {p.content_hash for p in r.presets} == {flowedit.content_hash,
                                                                            inversion.content_hash}


def test_a_presets_folder_that_is_not_there_is_refused_not_read_as_no_preset(editor, tmp_path):
    """A typo in --presets must not silently drop a method from the comparison."""
    from autotune.errors import InputError

    assert quality.tuned_preset(editor, "change_color", tmp_path) is None  # a folder without a preset: none
    with pytest.raises(InputError, match="presets folder .*nowhere does not exist"):
        quality.tuned_preset(editor, "change_color", tmp_path / "nowhere")
