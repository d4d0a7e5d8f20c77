"""`autotune bench overhead` and `throughput` on SDXL, SD3 and FLUX.1 (tiny pipelines): the overhead replay makes the
denoiser do exactly the work the engine made it do, whatever arguments the family passes (SDXL's added conditions,
a transformer's pooled projections, guidance and position ids)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from autotune.bench import overhead
from autotune.tuning.search_space import family_defaults

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAMILIES = ("tiny_model_dir", "tiny_sdxl_dir", "tiny_sd3_dir", "tiny_flux_dir")


@pytest.fixture(scope="module")
def task():
    from autotune.shapes.tasks import shapes_tasks

    return shapes_tasks("change_color", "tune", 1)[0]


def _editor(request, fixture: str):
    from autotune.engine.editor import Editor

    return Editor.from_pretrained(str(request.getfixturevalue(fixture)), device="cpu", progress=False)


class _LinearCounter:
    """Forward calls of every `nn.Linear` of a module (projections, MLPs, embeddings' linear layers)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.count = 0
        self._handles = [m.register_forward_pre_hook(self._hook) for m in module.modules()
                         if isinstance(m, torch.nn.Linear)]

    def _hook(self, *_) -> None:
        self.count += 1

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _counted(module: torch.nn.Module, run) -> int:
    counter = _LinearCounter(module)
    try:
        run()
    finally:
        counter.remove()
    return counter.count


def _same_call(a: overhead.DenoiserCall, b: overhead.DenoiserCall) -> bool:
    def same(x, y) -> bool:
        if isinstance(x, overhead.TensorSpec):
            kept = (x.value is None) == (y.value is None) and (x.value is None or torch.equal(x.value, y.value))
            return (x.shape, x.dtype, x.repeated) == (y.shape, y.dtype, y.repeated) and kept
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)):
            return len(x) == len(y) and all(same(u, v) for u, v in zip(x, y))
        return x == y

    return same(a.args, b.args) and same(a.kwargs, b.kwargs)


@pytest.mark.parametrize("fixture", FAMILIES)
def test_replay_makes_the_denoiser_do_the_engines_work(request, fixture, task):
    editor = _editor(request, fixture)
    model = editor.components.unet if fixture in ("tiny_model_dir", "tiny_sdxl_dir") else editor.components.transformer
    params = family_defaults(editor, None).params.with_(steps=3)
    editor.cache.clear()
    recorder = overhead.CallRecorder()
    engine_linears = _counted(model, lambda: overhead.record_calls(model, lambda: editor.edit_task(task, [params]),
                                                                   recorder))
    calls = recorder.calls
    assert calls
    replayed = overhead.CallRecorder()
    replay_linears = _counted(model, lambda: overhead.record_calls(
        model, lambda: overhead.replay_calls(model, calls, torch.device("cpu")), replayed))
    # every argument the engine passed, passed again (shapes, dtypes, timesteps, SDXL's added conditions, FLUX.1's
    # guidance and position ids, the same tensor to consecutive calls), and exactly the same projections computed:
    # where the engine reused a text tensor's keys and values, the replay does too
    assert len(replayed.calls) == len(calls) and all(_same_call(a, b) for a, b in zip(calls, replayed.calls))
    assert replay_linears == engine_linears
    if fixture == "tiny_sdxl_dir":
        assert set(calls[0].kwargs["added_cond_kwargs"]) == {"text_embeds", "time_ids"}
    if fixture in ("tiny_model_dir", "tiny_sdxl_dir"):  # the sampling loop passes one text tensor at every step
        assert [c.kwargs["encoder_hidden_states"].repeated for c in calls[-3:]] == [False, True, True]


def _outputs(model: torch.nn.Module, run) -> list[torch.Tensor]:
    """The denoiser's outputs (a UNet's `sample`, a transformer's first output) of every call made while `run()`
    runs."""
    got: list[torch.Tensor] = []
    handle = model.register_forward_hook(lambda module, args, out: got.append(out[0].detach().clone()))
    try:
        run()
    finally:
        handle.remove()
    return got


@pytest.mark.parametrize("fixture", FAMILIES)
def test_replay_with_every_value_kept_gives_the_engines_outputs(request, fixture, task):
    """Recorded with every value kept, the replay passes the engine's very inputs (SDXL's pooled embedding and time
    ids, SD3's pooled projections, FLUX.1's guidance and position ids): the denoiser returns what it returned in the
    edit, call for call. A dropped or altered argument changes the outputs (or fails the call). On the UNet family
    the edit runs with Prompt-to-Prompt's windows closed and no LocalBlend words: the replay runs without P2P control
    (the attention edits are the engine's work, not the denoiser's), so only then are the two computations the same."""
    editor = _editor(request, fixture)
    model = editor.components.unet if fixture in ("tiny_model_dir", "tiny_sdxl_dir") else editor.components.transformer
    params = family_defaults(editor, None).params.with_(steps=3)
    if fixture in ("tiny_model_dir", "tiny_sdxl_dir"):
        params = params.with_(cross_replace=0.0, self_replace=0.0)
        task = dataclasses.replace(task, blend_words=None)
    editor.cache.clear()
    recorder = overhead.CallRecorder(keep_values=None)
    engine = _outputs(model, lambda: overhead.record_calls(model, lambda: editor.edit_task(task, [params]), recorder))
    replayed = _outputs(model, lambda: overhead.replay_calls(model, recorder.calls, torch.device("cpu")))
    assert len(replayed) == len(engine) == len(recorder.calls) > 0
    for a, b in zip(engine, replayed):
        assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    # and a replay with the large tensors drawn at random, as the benchmark times it, does not (the tiny models' inputs
    # are all below KEEP_VALUES, hence the smaller bound here): the check above can fail
    editor.cache.clear()
    few = overhead.CallRecorder(keep_values=64)
    calls = overhead.record_calls(model, lambda: editor.edit_task(task, [params]), few)
    timed = _outputs(model, lambda: overhead.replay_calls(model, calls, torch.device("cpu")))
    assert len(timed) == len(engine)
    assert not all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(engine, timed))


@pytest.mark.parametrize("fixture", ("tiny_sdxl_dir", "tiny_flux_dir"))
def test_sample_costs_scale_every_batched_argument(request, fixture, task):
    editor = _editor(request, fixture)
    model = editor.components.unet if fixture == "tiny_sdxl_dir" else editor.components.transformer
    params = family_defaults(editor, None).params.with_(steps=2)
    call = overhead.record_calls(model, lambda: editor.edit_task(task, [params]))[-1]
    seen = overhead.record_calls(model, lambda: overhead.sample_costs(model, call, torch.device("cpu"),
                                                                      batches=(1, 3), samples=3))
    assert [c.rows for c in seen] == [1] * (1 + 3) + [3] * (1 + 2)  # a warm-up call, then 3 rows' worth
    for c in seen:
        if fixture == "tiny_sdxl_dir":
            added = c.kwargs["added_cond_kwargs"]
            assert added["text_embeds"].shape[0] == added["time_ids"].shape[0] == c.rows
            assert torch.equal(added["time_ids"].value[0], call.kwargs["added_cond_kwargs"]["time_ids"].value[0])
        else:
            assert c.kwargs["guidance"].shape == c.kwargs["timestep"].shape == (c.rows,)
            assert c.kwargs["encoder_hidden_states"].shape[0] == c.kwargs["pooled_projections"].shape[0] == c.rows
            assert c.kwargs["img_ids"].shape == call.kwargs["img_ids"].shape  # one row per token, whatever the batch
            assert torch.equal(c.kwargs["img_ids"].value, call.kwargs["img_ids"].value)


@pytest.mark.parametrize(("fixture", "cold_rows", "warm_rows"), [
    ("tiny_sdxl_dir", [2] * 3 + [4] * 3, [2] * 3),  # SimInversion 0.5 / 7.5: inversion (two halves), two branches
    ("tiny_sd3_dir", [4] * 2, [2] * 2),  # FlowEdit, classifier-free guidance: source and target, two halves each
    ("tiny_flux_dir", [2] * 3, [1] * 3),  # FlowEdit on FLUX.1-dev: guidance embedded, one pass a branch
])
def test_overhead_runs_on_every_family(request, fixture, cold_rows, warm_rows, task):
    editor = _editor(request, fixture)
    model = editor.components.unet if fixture == "tiny_sdxl_dir" else editor.components.transformer
    params = family_defaults(editor, None).params.with_(steps=3)
    r = overhead.bench_overhead(editor, task, params, repeats=1, sample_batches=(1, 2), sample_rows=2)
    editor.cache.clear()
    cold = overhead.record_calls(model, lambda: editor.edit_task(task, [params]))
    warm = overhead.record_calls(model, lambda: editor.edit_task(task, [params]))  # source work recorded
    # the rows each call carries, as each method's algorithm makes them (the window: 3 steps of 3 for SD3's n_max
    # 0.66, rounded to 2; FLUX.1-dev's 24/28 of 3 steps: 3)
    assert [c.rows for c in cold] == cold_rows and [c.rows for c in warm] == warm_rows
    assert (r.cold_calls, r.warm_calls) == (len(cold_rows), len(warm_rows))
    assert r.method == params.method and r.denoiser == type(model).__name__
    assert r.cold_ratio > 0 and r.warm_ratio > 0 and list(r.sample_ms) == [1, 2]
    assert f"`{params.method}` edit" in r.markdown()


@pytest.mark.parametrize("fixture", ("tiny_sdxl_dir", "tiny_sd3_dir", "tiny_flux_dir"))
def test_cli_bench_overhead_and_throughput_on_sdxl_and_flow_models(request, fixture, tmp_path):
    from autotune.cli import main

    folder, out = str(request.getfixturevalue(fixture)), tmp_path / "B.md"
    assert main(["bench", "overhead", "--model", folder, "--steps", "2", "--repeats", "1", "--out", str(out)]) == 0
    assert main(["bench", "throughput", "--model", folder, "--steps", "2", "--tasks", "2", "--trials", "2",
                 "--batch", "2", "--naive-trials", "1", "--runs", "1", "--threads", "1", "--thread-counts", "2",
                 "--no-factors", "--out", str(out)]) == 0
    text = out.read_text()
    overhead_section = text[text.index("autotune-bench:overhead:start"):text.index("autotune-bench:overhead:end")]
    assert "| cold (empty cache: inversion and source work computed) |" in overhead_section
    throughput = text[text.index("autotune-bench:throughput:start"):text.index("autotune-bench:throughput:end")]
    for loop in ("autotune (", "strong naive (", "naive ("):
        assert f"| {loop}" in throughput
    assert "(2 threads), device cpu" in throughput  # the threads it ran at, not the process's default of 1


def test_flux_position_ids_stay_whatever_the_batch():
    # a call whose batch equals its token count (16 rows of a 4 x 4 packed latent): the first dimension alone cannot
    # tell FLUX.1's position ids from a batched input
    ids = overhead.TensorSpec((16, 3), torch.float32, torch.arange(48.0).reshape(16, 3))
    call = overhead.DenoiserCall((), {"hidden_states": overhead.TensorSpec((16, 16, 64), torch.float32),
                                      "timestep": overhead.TensorSpec((16,), torch.float32, torch.arange(16.0)),
                                      "img_ids": ids})
    two = call.with_rows(2)
    assert two.rows == 2 and two.kwargs["img_ids"] is ids
    assert torch.equal(two.kwargs["timestep"].value, torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize(("fixture", "pipeline"), [
    ("tiny_model_dir", "StableDiffusionPipeline"), ("tiny_sdxl_dir", "StableDiffusionXLPipeline"),
    ("tiny_sd3_dir", "StableDiffusion3Pipeline"), ("tiny_flux_dir", "FluxPipeline")])
def test_which_benchmark_applies_to_which_family(request, fixture, pipeline):
    from autotune.bench import _common

    editor = _editor(request, fixture)
    assert _common.pipeline_class(editor) == pipeline
    refused = {name: _common.not_applicable(name, pipeline) for name in _common.BENCHMARKS}
    flow = fixture in ("tiny_sd3_dir", "tiny_flux_dir")
    assert {n for n, why in refused.items() if why} == (
        {"efficiency", "predictor"} if fixture == "tiny_sd3_dir"  # inversion: the flow shapes model is an SD3 folder
        else {"efficiency", "inversion", "predictor"} if flow else set() if fixture == "tiny_model_dir"
        else {"inversion"})
    runs = ("throughput|overhead|quality|inversion|memory" if fixture == "tiny_sd3_dir"
            else "throughput|overhead|quality|memory" if flow
            else "throughput|overhead|efficiency|quality|memory|predictor")
    for name, why in refused.items():
        if why:  # names the benchmark and the family, says why and what runs on this model instead
            assert why.startswith(f"`autotune bench {name}` does not apply to {_common.MODEL_KINDS[pipeline]}: ")
            assert why.endswith(f"on this model run `autotune bench {runs}`.")


def test_cli_refuses_a_benchmark_that_does_not_apply_and_all_skips_it(tiny_flux_dir, tiny_sdxl_dir, tmp_path,
                                                                      monkeypatch, capsys):
    from autotune.cli import bench as cli_bench
    from autotune.cli import main

    out = tmp_path / "B.md"
    assert main(["bench", "efficiency", "--model", str(tiny_flux_dir), "--tasks", "1", "--out", str(out)]) == 2
    assert ("`autotune bench efficiency` does not apply to FLUX.1 (rectified-flow family): its dense grid is "
            "SimInversion's") in capsys.readouterr().err
    assert main(["bench", "inversion", "--model", str(tiny_sdxl_dir), "--out", str(out)]) == 2
    assert "`autotune bench inversion` does not apply to SDXL (UNet family)" in capsys.readouterr().err
    assert not out.exists()  # refused before any section was written

    ran = []

    class Done:
        def markdown(self) -> str:
            return "figures"

    monkeypatch.setattr(cli_bench, "_run_one", lambda name, *a: (ran.append(name), (Done(), ""))[1])
    assert main(["bench", "all", "--model", str(tiny_flux_dir), "--out", str(out)]) == 0
    assert ran == ["throughput", "overhead", "quality", "memory"]
    printed = capsys.readouterr().out
    assert "(skipped efficiency: `autotune bench efficiency` does not apply to FLUX.1" in printed
    assert "autotune-bench:throughput:start" in out.read_text() and "autotune-bench:efficiency" not in out.read_text()


class _Keeper:
    """A scorer that keeps the pixels it is given, in order (the naive loops score every edit they make)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, torch.Tensor]] = []

    def score(self, task, pixels: torch.Tensor) -> dict[str, float]:
        self.seen.append((task.id, pixels[0].detach().clone()))
        return {}


@pytest.mark.parametrize("fixture", ("tiny_sdxl_dir", "tiny_sd3_dir", "tiny_flux_dir"))
def test_throughput_baselines_and_factor_edit_what_the_tuner_edits(request, fixture):
    """Like for like on every family: the naive loop (fresh inversion each edit), the strong naive loop (cache on)
    and the batching factor (one engine call per candidate) make the very edits of the batched engine call the tuner
    makes, for the family's default method with SDXL's added conditions or a flow model's guidance in play."""
    from autotune.bench import throughput
    from autotune.shapes.tasks import shapes_tasks

    editor = _editor(request, fixture)
    tasks = shapes_tasks("change_color", "tune", 2)
    base = family_defaults(editor, None).params.with_(steps=3)
    cands = [base, base.with_(w_tgt=3.0), base.with_(w_src=1.0, w_tgt=3.0)]
    editor.cache.clear()
    want = editor.edit_tasks(tasks, cands)  # [task][candidate]
    for fresh in (True, False):
        keeper = _Keeper()
        editor.cache.clear()
        throughput.naive_loop(editor, tasks, keeper, cands, fresh=fresh)
        assert [task_id for task_id, _ in keeper.seen] == [t.id for _ in cands for t in tasks]
        for i, (_, pixels) in enumerate(keeper.seen):
            k, t = divmod(i, len(tasks))
            torch.testing.assert_close(pixels, want[t][k].pixels, rtol=1e-4, atol=1e-4)
    editor.cache.clear()
    one_each = throughput.OneEditPerCall(editor).edit_tasks(tasks, cands)
    for got_row, want_row in zip(one_each, want, strict=True):
        for a, b in zip(got_row, want_row, strict=True):
            assert a.params == b.params
            torch.testing.assert_close(a.pixels, b.pixels, rtol=1e-4, atol=1e-4)
    editor.cache.clear()
