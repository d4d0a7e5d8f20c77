"""Benchmarks on the tiny pipeline: the figures come from real timings and scores, and BENCHMARKS.md sections are
rewritten in place. (Not timed tests: the benchmarks themselves run with `autotune bench`.)"""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
import torch

from autotune.bench import _common, efficiency, markdown, memory, overhead
from autotune.errors import InputError
from autotune.params import EditParams
from autotune.tuning.search_space import SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def editor(tiny_model_dir):
    from autotune.engine.editor import Editor

    return Editor.from_pretrained(str(tiny_model_dir), device="cpu", progress=False)


@pytest.fixture(scope="module")
def tasks():
    from autotune.shapes.tasks import shapes_tasks

    return shapes_tasks("change_color", "tune", count=2)


@pytest.fixture(scope="module")
def scorer():
    from autotune.shapes.scoring import ShapesScorer

    return ShapesScorer()


def test_write_section_replaces_only_its_own_section_atomically(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    markdown.write_section(path, "memory", "## memory\nold memory")
    markdown.write_section(path, "throughput", "## throughput\nfirst")
    text = path.read_text()
    assert text.index("autotune-bench:throughput:start") < text.index("autotune-bench:memory:start")
    path.write_text(text + "\nhand-written note\n")
    markdown.write_section(path, "throughput", "## throughput\nsecond")
    text = path.read_text()
    assert "second" in text and "first" not in text and "old memory" in text and "hand-written note" in text
    assert text.count("autotune-bench:throughput:start") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["BENCHMARKS.md"]  # no temp file left


def test_section_names_command_machine_and_a_busy_machine():
    machine = {"cpu_count": 2, "torch": "2.x", "torch_threads": 2, "device": "cpu", "load_average_1min": 5.0}
    text = markdown.section("T", "autotune bench overhead --model shapes", machine, "| a |\n|---|\n| 1 |")
    assert "`autotune bench overhead --model shapes`" in text and "2 CPUs" in text and "torch 2.x" in text
    assert "busy" in text
    machine["load_average_1min"] = 0.1
    assert "busy" not in markdown.section("T", "c", machine, "x")
    machine["load_average_1min"] = 1.9  # the benchmark's own 2 threads
    assert "busy" not in markdown.section("T", "c", machine, "x")
    machine.update(torch_threads=1, load_average_1min=2.0)  # another job beside a 1-thread run
    assert "about 1.0 beyond this benchmark's own" in markdown.section("T", "c", machine, "x")


def test_overhead_replays_exactly_the_unet_calls(editor, tasks):
    r = overhead.bench_overhead(editor, tasks[0], EditParams(steps=3), repeats=1)
    assert r.cold_calls == 3 + 3  # inversion (w=0.5: one call per step) + two-branch sampling
    assert r.warm_calls == 3
    assert r.cold_edit_seconds > 0 and r.cold_denoiser_seconds > 0 and r.warm_denoiser_seconds > 0
    assert math.isclose(r.cold_ratio, r.cold_edit_seconds / r.cold_denoiser_seconds)  # one repeat: its own ratio
    assert math.isclose(r.warm_ratio, r.warm_edit_seconds / r.warm_denoiser_seconds)
    assert r.cold_runs == [(r.cold_edit_seconds, r.cold_denoiser_seconds)]
    assert list(r.sample_ms) == [1, 2, 4, 8, 16, 32, 64] and all(v > 0 for v in r.sample_ms.values())
    assert r.denoiser == "UNet2DConditionModel" and r.method == "siminversion"
    assert "| ms per sample |" in r.markdown()


def test_overhead_keeps_every_repeat_and_takes_the_median_of_their_ratios(editor, tasks):
    import statistics

    r = overhead.bench_overhead(editor, tasks[0], EditParams(steps=2), repeats=3, sample_batches=(1,), sample_rows=2)
    assert len(r.cold_runs) == len(r.warm_runs) == 3
    for runs, ratio, (low, high) in ((r.cold_runs, r.cold_ratio, r.cold_range), (r.warm_runs, r.warm_ratio,
                                                                               r.warm_range)):
        ratios = [edit / alone for edit, alone in runs]
        assert ratio == pytest.approx(statistics.median(ratios))
        assert (low, high) == pytest.approx((min(ratios), max(ratios)))
    assert r.cold_edit_seconds == pytest.approx(statistics.median(e for e, _ in r.cold_runs))
    text = r.markdown()
    assert "Every repeat" in text and f"{r.warm_range[0]:.3g}-{r.warm_range[1]:.3g}" in text
    assert text.count("\n| 3 |") == 1  # the third repeat's row


def test_sample_costs_replay_the_call_at_each_batch_size(editor, tasks):
    unet = editor.components.unet
    call = overhead.record_calls(unet, lambda: editor.edit_task(tasks[0], [EditParams(steps=2)]))[-1]
    seen = overhead.record_calls(unet, lambda: overhead.sample_costs(unet, call, torch.device("cpu"), batches=(1, 4),
                                                                     samples=8))
    assert [c.rows for c in seen] == [1] * (1 + 8) + [4] * (1 + 2)  # a warm-up, then 8 rows' worth
    text = call.kwargs["encoder_hidden_states"]
    assert all(c.args[0].shape[1:] == call.args[0].shape[1:] for c in seen)
    assert all(c.kwargs["encoder_hidden_states"].shape[1:] == text.shape[1:] for c in seen)
    assert all(torch.equal(c.args[1].value, call.args[1].value) for c in seen)  # the recorded timestep


def test_sample_costs_keep_what_fit_when_a_batch_runs_out_of_memory(editor, tasks, monkeypatch):
    unet = editor.components.unet
    call = overhead.record_calls(unet, lambda: editor.edit_task(tasks[0], [EditParams(steps=2)]))[-1]
    real = overhead.replay_calls

    def small_device(unet, calls, device):
        if calls[0].rows >= 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(unet, calls, device)

    monkeypatch.setattr(overhead, "replay_calls", small_device)
    costs = overhead.sample_costs(unet, call, torch.device("cpu"), batches=(1, 2, 4, 8), samples=4)
    assert list(costs) == [1, 2] and all(v > 0 for v in costs.values())


def _table(f, s, w_src=None, w_tgt=None):
    n = len(f)
    return efficiency.GridTable("change_color", w_src or list(np.linspace(0, 2, n)),
                                w_tgt or list(np.linspace(1, 12, n)),
                                [list(map(float, r)) for r in f], [list(map(float, r)) for r in s],
                                ["maximize", "maximize"], tasks=1, steps=1)


def test_scalarised_scales_each_objective_to_the_grid():
    t = _table([[10, 20], [30, 40]], [[0, 0], [1, 1]])
    assert np.allclose(t.scalarised(), [[0, 1 / 6], [5 / 6, 1]])
    t.directions = ["minimize", "maximize"]
    assert np.allclose(t.scalarised(), [[0.5, 1 / 3], [2 / 3, 0.5]])


def test_trials_to_reach_matches_a_replay_of_the_sampler():
    n = 15
    f = np.minimum(np.add.outer(np.arange(n), np.arange(n)), 22).astype(float)  # best: a corner of 28 cells
    table = _table(f, f)
    needed, frac, drawn, work = efficiency.trials_to_reach(table, "random", seed=3, budget=200, batch=4)
    # independent replay: RandomSampler with the same seed asks the same points, w_src on the tuner's 0.1 grid
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=3))
    space = SearchSpace({"w_src": {"low": 0.0, "high": 2.0, "step": 0.1}, "w_tgt": {"low": 1.0, "high": 12.0}})
    scal = table.scalarised()
    expected, values, spent, expected_work = None, set(), 0, None
    for k in range(200):
        trial = study.ask(space.distributions())
        i = int(np.argmin(np.abs(np.linspace(0, 2, n) - trial.params["w_src"])))
        j = int(np.argmin(np.abs(np.linspace(1, 12, n) - trial.params["w_tgt"])))
        study.tell(trial, [0.0, 0.0])
        spent += 1 if round(trial.params["w_src"], 6) in values else 3  # a new w_src: inversion + source branch
        values.add(round(trial.params["w_src"], 6))
        if expected is None and scal[i, j] >= 0.98:
            expected, expected_work = k + 1, spent
    assert needed == expected and work == expected_work
    assert needed is not None and needed <= work <= 3 * needed
    assert drawn == len(values) == 21  # 200 random trials draw every grid value
    if needed is not None:
        assert frac >= 0.98
    flat = _table(np.ones((3, 3)), np.ones((3, 3)))
    assert efficiency.trials_to_reach(flat, "tpe", seed=0, budget=5)[0] == 1
    # with the paper points enqueued, as `tune` does, a table whose best is SimInversion's (0.5, 7.5) is solved at once
    paper = np.zeros((n, n))
    i, j = table.nearest(0.5, 7.5)
    paper[i, j] = 1.0
    assert efficiency.trials_to_reach(_table(paper, paper), "random", seed=0, budget=4, paper_points=True)[0] == 1
    # a table over a range the tuner's grid does not fit keeps w_src continuous
    odd = _table(f, f, w_src=list(np.linspace(0.05, 1.0, n)))
    assert efficiency.efficiency_space(odd).knobs["w_src"].step is None
    assert efficiency.efficiency_space(table).knobs["w_src"].step == 0.1


def test_efficiency_in_worker_processes_gives_the_same_figures(capsys):
    n = 15
    f = np.minimum(np.add.outer(np.arange(n), np.arange(n)), 22).astype(float)
    tables = [_table(f, f), _table(f[::-1], f[::-1])]
    kwargs = dict(samplers=("tpe", "random"), seeds=2, budget=12, batch=4)
    alone = efficiency.bench_efficiency(tables, **kwargs)
    pooled = efficiency.bench_efficiency(tables, jobs=2, progress=True, **kwargs)
    assert [(r.needed, r.drawn, r.work) for r in pooled.rows] == [(r.needed, r.drawn, r.work) for r in alone.rows]
    assert alone.rows[0].needed["random"] == [efficiency.trials_to_reach(tables[0], "random", seed, 12, 4)[0]
                                              for seed in range(2)]
    assert "sampler runs" in capsys.readouterr().err  # the progress bar
    # a cell: the median, the share of seeds within 30 trials and the worst seed (">budget": not reached)
    row = efficiency.EfficiencyRow("add_object", 16, 1.0, 0.5, 1.0, 0.5, {"tpe": [10, 31, 20, None]})
    result = efficiency.EfficiencyResult(15, 10, 40, 4, 4, [row])
    assert "| 25.5 (50% within 30, worst >40) |" in result.markdown()
    with pytest.raises(InputError, match="jobs=0 must be >= 1"):
        efficiency.bench_efficiency(tables, jobs=0)


def test_grid_scores_batches_per_w_src_and_agrees_with_single_edits(editor, tasks, scorer, capsys):
    calls = []
    original = editor.edit_task

    def counting(task, cands):
        calls.append((task.id, len(cands)))
        return original(task, cands)

    editor.edit_task = counting
    try:
        table = efficiency.grid_scores(editor, tasks[:1], scorer, points=2, steps=2, progress=True)
    finally:
        del editor.edit_task
    assert calls == [(tasks[0].id, 2), (tasks[0].id, 2)]
    assert f"grid {tasks[0].category}" in capsys.readouterr().err  # the bar: one step per engine call
    assert table.w_src == [0.0, 2.0] and table.w_tgt == [1.0, 12.0]
    one = editor.edit(tasks[0].image, tasks[0].source_prompt, tasks[0].target_prompt,
                      EditParams(steps=2, w_src=2.0, w_tgt=1.0), blend_words=tasks[0].blend_words)
    psnr = scorer.score(tasks[0], one.pixels[None])[0]["background_psnr"]
    assert table.fidelity[1][0] == pytest.approx(psnr, abs=0.05)
    res = efficiency.bench_efficiency([table], samplers=("random",), seeds=2, budget=8, batch=2)
    assert len(res.rows) == 1 and len(res.rows[0].needed["random"]) == 2
    assert "random trials to 98%" in res.markdown()


def test_cli_bench_overhead_writes_its_section(tiny_model_dir, tmp_path, capsys):
    from autotune.cli import main

    out = tmp_path / "B.md"
    code = main(["bench", "overhead", "--model", str(tiny_model_dir), "--steps", "2", "--repeats", "1",
                 "--out", str(out)])
    assert code == 0
    text = out.read_text()
    assert f"autotune bench overhead --model {tiny_model_dir} --device cpu --steps 2" in text
    assert "| cold (empty cache: inversion and source work computed) | 4 |" in text
    assert "autotune-bench:overhead:end" in text
    assert "Engine overhead" in capsys.readouterr().out


def test_cli_bench_rejects_a_category_the_world_lacks(capsys):
    from autotune.cli import main

    assert main(["bench", "quality", "--categories", "change_style"]) == 2
    assert "change_style" in capsys.readouterr().err


def test_child_peak_rss_sees_a_known_allocation():
    import sys

    idle = memory._child_peak_rss_mb([sys.executable, "-c", "pass"])
    filled = memory._child_peak_rss_mb([sys.executable, "-c", "n = 300 << 20; b = b'y' * n"])  # 300 MiB written
    assert filled - idle == pytest.approx(300, rel=0.05)  # /proc/<child>/status says VmHWM 318 MB against 11 MB


def test_memory_measures_child_processes(tiny_model_dir, monkeypatch):
    import statistics

    commands, measure = [], memory._child_peak_rss_mb
    monkeypatch.setattr(memory, "_child_peak_rss_mb", lambda cmd, env=None: commands.append(cmd) or measure(cmd, env))
    r = memory.bench_memory(str(tiny_model_dir), "cpu", trials=1, batch=1, tasks=1, steps=1, repeats=2)
    projects = [cmd[cmd.index("--project-dir") + 1] for cmd in commands if "--project-dir" in cmd]
    assert len(projects) == 2 and len(set(projects)) == 2  # each tuning run starts its own study, none resumes one
    assert len(r.load_runs_mb) == len(r.tuning_runs_mb) == 2
    assert r.load_only_mb == statistics.median(r.load_runs_mb) and r.tuning_mb == statistics.median(r.tuning_runs_mb)
    assert max(r.load_runs_mb) <= min(r.tuning_runs_mb)  # the tuning child loads the same model, then tunes
    assert "peak RSS" in r.markdown() and f"{r.tuning_runs_mb[1]:.4g}" in r.markdown()
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        memory.bench_memory(str(tiny_model_dir), "cpu", repeats=0)


def test_machine_info_is_the_running_machine():
    import importlib.metadata
    import os

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        info = _common.machine_info("cpu")
    finally:
        torch.set_num_threads(threads)
    # The installed distribution's own record (without the build's local label, +cu130, which it does not keep).
    assert info["torch"].split("+")[0] == importlib.metadata.version("torch")
    assert info["torch_threads"] == 1
    if os.path.exists("/proc/cpuinfo") and os.path.exists("/proc/loadavg"):
        with open("/proc/cpuinfo") as fh:
            assert info["cpu_count"] == sum(line.startswith("processor") for line in fh)
        with open("/proc/loadavg") as fh:
            assert info["load_average_1min"] == pytest.approx(float(fh.read().split()[0]), abs=0.5)



def test_the_flow_shapes_models_figures_get_sections_of_their_own(tmp_path):
    from autotune.cli.bench import _section_of

    assert _section_of("quality", "shapes") == ("quality", _section_of("quality", "/some/folder")[1])
    section, title = _section_of("quality", "shapes-flow")
    assert section == "quality-shapes-flow" and title.endswith("(shapes-flow)")
    out = tmp_path / "B.md"
    markdown.write_section(out, "quality", "UNet figures")
    markdown.write_section(out, section, "flow figures")
    markdown.write_section(out, "quality", "UNet figures again")
    text = out.read_text()
    assert "UNet figures again" in text and "flow figures" in text and "UNet figures\n" not in text


def test_the_inversion_section_reads_the_mean_out_of_each_row(monkeypatch):
    from autotune.bench import inversion, shapes_model

    table = ("| reconstruction | PSNR (dB), mean [95% interval] | reader sees the input scene |"
             "\n|---|---|---|\n| VAE round trip (ceiling) | 34.58 | - |\n"
             "| Euler inversion at w_src = 0.5 | 33.26 [32.10, 34.02] | 100% |")
    monkeypatch.setattr(shapes_model, "inversion_table", lambda *a: table)
    monkeypatch.setattr(shapes_model, "is_flow_model", lambda model: True)
    r = inversion.bench_inversion("some-folder", samples=20, steps=50)
    assert r.rows == [{"setting": "VAE round trip (ceiling)", "psnr": 34.58, "read_ok": None},
                      {"setting": "Euler inversion at w_src = 0.5", "psnr": 33.26, "read_ok": 1.0}]
    assert r.flow and "Euler steps" in r.markdown()
