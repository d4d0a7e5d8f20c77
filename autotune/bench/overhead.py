"""2. Engine overhead: one candidate edit against the denoiser forward passes it cannot avoid (a UNet's, or an SD3 or
FLUX.1 transformer's): the same calls, recorded by a forward pre-hook during the edit with every argument the engine
passes (SDXL's added conditions, a transformer's pooled projections, guidance and position ids, ...), replayed alone.

A recorded call keeps each tensor argument's shape and dtype; small ones (timesteps, guidance, size and position ids)
keep their values, larger ones are replayed with random values of the same shape and dtype (a pass takes the same
time whatever its inputs hold). A tensor the engine passed to two consecutive calls is passed to both in the replay
too: the UNet family's attention processors project the text keys and values of such a tensor once, and the replay
runs under the same processors (SDPA attention, no Prompt-to-Prompt control), so it does no work the engine avoids
and none it does not."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from autotune.bench import markdown
from autotune.bench._common import denoiser as editor_denoiser
from autotune.bench._common import sync
from autotune.params import EditParams
from autotune.task import EditTask

KEEP_VALUES = 2**14  # tensors of up to this many elements are replayed with their recorded values
UNBATCHED = ("img_ids", "txt_ids")  # FLUX.1's position ids: one row per token whatever the batch
SAMPLE_BATCHES = (1, 2, 4, 8, 16, 32, 64)


@dataclass
class OverheadResult:
    steps: int
    cold_calls: int  # denoiser calls of one cold edit
    warm_calls: int
    cold_edit_seconds: float
    cold_denoiser_seconds: float  # the same calls replayed alone
    warm_edit_seconds: float
    warm_denoiser_seconds: float
    vae_seconds: float
    cold_ratio: float  # the median of the repeats' ratios
    warm_ratio: float
    repeats: int
    sample_ms: dict[int, float] = field(default_factory=dict)  # denoiser alone: ms per sample by batch size
    denoiser: str = "UNet2DConditionModel"  # the denoiser's class
    method: str = "siminversion"
    cold_runs: list[tuple[float, float]] = field(default_factory=list)  # every repeat: (edit s, same calls alone s)
    warm_runs: list[tuple[float, float]] = field(default_factory=list)

    @property
    def cold_range(self) -> tuple[float, float]:
        return _ratio_range(self.cold_runs, self.cold_ratio)

    @property
    def warm_range(self) -> tuple[float, float]:
        return _ratio_range(self.warm_runs, self.warm_ratio)

    def markdown(self) -> str:
        cold, warm = self.cold_range, self.warm_range
        table = markdown.table(
            ["one candidate edit", "denoiser calls", "edit seconds", "same calls alone (s)", "ratio", "ratio range",
             "ratio without VAE encode/decode"],
            [["cold (empty cache: inversion and source work computed)", self.cold_calls,
              self.cold_edit_seconds, self.cold_denoiser_seconds, self.cold_ratio, f"{cold[0]:.3g}-{cold[1]:.3g}",
              (self.cold_edit_seconds - self.vae_seconds) / self.cold_denoiser_seconds],
             ["warm (the same edit again: what the cache kept is reused)", self.warm_calls,
              self.warm_edit_seconds, self.warm_denoiser_seconds, self.warm_ratio, f"{warm[0]:.3g}-{warm[1]:.3g}",
              (self.warm_edit_seconds - self.vae_seconds) / self.warm_denoiser_seconds]])
        return (table + f"\n\nTarget: ratio <= 1.2. The ratio is the median of {self.repeats} repeats' ratios (each "
                "repeat times the edit, then the same calls alone, right after); seconds are medians. "
                f"One `{self.method}` edit, "
                f"{self.steps} steps; the denoiser ({self.denoiser}) calls are recorded by a forward hook during the "
                "edit, with every argument the engine passes, and replayed alone (same shapes, dtypes, timesteps and "
                "batch sizes, random inputs where values do not change the work, SDPA attention throughout, a tensor "
                "passed to consecutive calls passed again as in the engine, so text keys and values are projected "
                "once per run of them). The VAE encode + decode of one image takes "
                f"{self.vae_seconds:.3g} s (unavoidable too, but not a denoiser pass)." + self._every_repeat()
                + self._sample_costs())

    def _every_repeat(self) -> str:
        if not self.cold_runs:
            return ""
        rows = [[i + 1, c[0], c[1], c[0] / c[1], w[0], w[1], w[0] / w[1]]
                for i, (c, w) in enumerate(zip(self.cold_runs, self.warm_runs))]
        return "\n\nEvery repeat:\n\n" + markdown.table(
            ["repeat", "cold edit (s)", "cold alone (s)", "cold ratio", "warm edit (s)", "warm alone (s)",
             "warm ratio"], rows)

    def _sample_costs(self) -> str:
        if not self.sample_ms:
            return ""
        table = markdown.table(["denoiser batch (rows)", *map(str, self.sample_ms)],
                               [["ms per sample", *self.sample_ms.values()]])
        return ("\n\nWhat batching buys: the same denoiser call (the edit's last) replayed alone at other batch "
                "sizes, time per sample (row). The tuner's batches of several tasks run at the right-hand end, the "
                "naive loop's at 2-4 rows.\n\n" + table)


# ---------------------------------------------------------------------------------------------------------------------
# Recording and replaying denoiser calls


@dataclass(frozen=True)
class TensorSpec:
    """A tensor argument of a recorded call: shape and dtype; its value (on the CPU) when it has at most
    `KEEP_VALUES` elements; whether the call before was passed this very tensor, unmodified (`repeated`)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    value: torch.Tensor | None = None
    repeated: bool = False


@dataclass(frozen=True)
class DenoiserCall:
    """One denoiser call as recorded: its positional and keyword arguments, each tensor (also inside dicts, lists
    and tuples, as SDXL's `added_cond_kwargs`) a `TensorSpec`, anything else as passed."""

    args: tuple
    kwargs: dict[str, Any]

    @property
    def rows(self) -> int:
        """Batch rows: the first dimension of the first input (a UNet's `sample`, a transformer's `hidden_states`)."""
        first = self.args[0] if self.args else self.kwargs.get("sample", self.kwargs.get("hidden_states"))
        if not isinstance(first, TensorSpec) or not first.shape:
            raise ValueError("a denoiser call's first input is not a batched tensor")
        return first.shape[0]

    def with_rows(self, rows: int) -> DenoiserCall:
        """The same call at another batch size: every tensor whose first dimension is the batch is resized (kept
        values repeated row by row, cyclically); the others (a scalar timestep, FLUX.1's position ids) stay."""
        batch = self.rows

        def scale(spec: TensorSpec) -> TensorSpec:
            if not spec.shape or spec.shape[0] != batch:
                return spec
            value = None if spec.value is None else spec.value[torch.arange(rows) % batch]
            return replace(spec, shape=(rows, *spec.shape[1:]), value=value)

        kwargs = {k: v if k in UNBATCHED else _map_specs(v, scale) for k, v in self.kwargs.items()}
        return DenoiserCall(_map_specs(self.args, scale), kwargs)


def _map_specs(tree: Any, fn: Callable[[TensorSpec], Any]) -> Any:
    if isinstance(tree, TensorSpec):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: _map_specs(v, fn) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map_specs(v, fn) for v in tree)
    return tree


class CallRecorder:
    """A forward pre-hook (`with_kwargs=True`) that records each denoiser call as a `DenoiserCall`. `keep_values`:
    tensors of up to this many elements keep their values (None: every tensor, so that a replay computes exactly
    what the engine computed, as the tests check)."""

    def __init__(self, keep_values: int | None = KEEP_VALUES) -> None:
        self.keep_values = keep_values
        self.calls: list[DenoiserCall] = []
        self._last: dict[tuple, tuple[torch.Tensor, int]] = {}  # the previous call's tensors, by position

    def __call__(self, module: Any, args: tuple, kwargs: dict) -> None:
        seen: dict[tuple, tuple[torch.Tensor, int]] = {}
        call = DenoiserCall(self._spec(args, ("args",), seen), self._spec(kwargs, ("kwargs",), seen))
        self._last = seen
        self.calls.append(call)

    def forget(self) -> None:
        """Drop the references to the last call's tensors."""
        self._last = {}

    def _spec(self, value: Any, path: tuple, seen: dict) -> Any:
        if torch.is_tensor(value):
            seen[path] = (value, value._version)  # held by reference: `is` cannot match a recycled address
            before = self._last.get(path)
            repeated = before is not None and before[0] is value and before[1] == value._version
            keep = self.keep_values is None or value.numel() <= self.keep_values
            kept = value.detach().to("cpu", copy=True) if keep else None
            return TensorSpec(tuple(value.shape), value.dtype, kept, repeated)
        if isinstance(value, dict):
            return {k: self._spec(v, (*path, k), seen) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._spec(v, (*path, i), seen) for i, v in enumerate(value))
        return value


def record_calls(denoiser: Any, run: Callable[[], Any], recorder: CallRecorder | None = None) -> list[DenoiserCall]:
    """The denoiser calls made while `run()` runs."""
    recorder = recorder if recorder is not None else CallRecorder()
    handle = denoiser.register_forward_pre_hook(recorder, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
        recorder.forget()
    return recorder.calls


def _materialise(tree: Any, path: tuple, previous: dict, made: dict, device: torch.device,
                 gen: torch.Generator) -> Any:
    if isinstance(tree, TensorSpec):
        before = previous.get(path)
        if tree.repeated and before is not None and tuple(before.shape) == tree.shape and before.dtype == tree.dtype:
            tensor = before
        elif tree.value is not None:
            tensor = tree.value.to(device)
        elif tree.dtype.is_floating_point:
            tensor = torch.randn(tree.shape, generator=gen).to(device, tree.dtype)
        else:
            tensor = torch.zeros(tree.shape, dtype=tree.dtype, device=device)
        made[path] = tensor
        return tensor
    if isinstance(tree, dict):
        return {k: _materialise(v, (*path, k), previous, made, device, gen) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_materialise(v, (*path, i), previous, made, device, gen) for i, v in enumerate(tree))
    return tree


@contextlib.contextmanager
def as_the_engine_runs(denoiser: Any) -> Iterator[None]:
    """The attention processors the engine calls the denoiser under, without Prompt-to-Prompt control: the UNet
    family's (SDPA; text keys and values projected once per run of the same tensor); the flow family runs the
    transformer's own."""
    from diffusers import UNet2DConditionModel

    if isinstance(denoiser, UNet2DConditionModel):
        from autotune.engine.unet.attention import attention_control

        with attention_control(denoiser, None):
            yield
    else:
        yield


@torch.no_grad()
def replay_calls(denoiser: Any, calls: Sequence[DenoiserCall], device: torch.device) -> float:
    """Seconds for the same denoiser calls alone; their inputs are made before the clock starts."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    inputs, previous = [], {}
    for call in calls:
        made: dict = {}
        args = _materialise(call.args, ("args",), previous, made, device, gen)
        kwargs = _materialise(call.kwargs, ("kwargs",), previous, made, device, gen)
        inputs.append((args, kwargs))
        previous = made
    with as_the_engine_runs(denoiser):
        sync(device)
        start = time.perf_counter()
        for args, kwargs in inputs:
            denoiser(*args, **kwargs)
        sync(device)
        return time.perf_counter() - start


def bench_overhead(editor: Any, task: EditTask, params: EditParams | None = None, repeats: int = 3, *,
                   sample_batches: Sequence[int] = SAMPLE_BATCHES, sample_rows: int = 128) -> OverheadResult:
    """Time one candidate edit, cold (cache cleared: it inverts and computes its source work) and warm (the same edit
    again: inversion and recorded source work from the cache where the cache keeps them), against its own denoiser
    calls replayed alone; then the edit's last call alone at each of `sample_batches` rows. `params`: the editor's
    default parameters when None (its family's default method)."""
    from autotune.tuning.search_space import family_defaults

    params = params or family_defaults(editor, None).params
    model, device = editor_denoiser(editor), torch.device(editor.device)

    def edit() -> None:
        editor.edit_task(task, [params])

    edit()  # warm-up
    cold, cold_alone, warm, warm_alone = [], [], [], []
    cold_calls: list[DenoiserCall] = []
    warm_calls: list[DenoiserCall] = []
    for _ in range(repeats):
        editor.cache.clear()
        cold_calls = record_calls(model, edit)  # the hook's cost is small; the timed runs below carry none
        editor.cache.clear()
        cold.append(_timed(edit, device))
        cold_alone.append(replay_calls(model, cold_calls, device))
        warm_calls = record_calls(model, edit)
        warm.append(_timed(edit, device))
        warm_alone.append(replay_calls(model, warm_calls, device))
    sample_ms = sample_costs(model, cold_calls[-1], device, sample_batches, sample_rows)
    pil = editor.prepare_image(task.image)
    vae = [_timed(lambda: editor.engine.decode(editor.engine.encode_image(pil)[None]), device)
           for _ in range(repeats)]
    med = statistics.median
    cold_runs, warm_runs = list(zip(cold, cold_alone)), list(zip(warm, warm_alone))
    return OverheadResult(params.steps, len(cold_calls), len(warm_calls), med(cold), med(cold_alone), med(warm),
                          med(warm_alone), med(vae), med(e / a for e, a in cold_runs),
                          med(e / a for e, a in warm_runs), repeats, sample_ms, type(model).__name__, params.method,
                          cold_runs, warm_runs)


def _ratio_range(runs: list[tuple[float, float]], median: float) -> tuple[float, float]:
    ratios = [e / a for e, a in runs] or [median]
    return min(ratios), max(ratios)


def _timed(run: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - start


def sample_costs(denoiser: Any, call: DenoiserCall, device: torch.device,
                 batches: Sequence[int] = SAMPLE_BATCHES, samples: int = 128) -> dict[int, float]:
    """Milliseconds per sample of one denoiser call replayed alone at each batch size (about `samples` rows each,
    after one warm-up call). Stops at the first batch size the device has no memory for (a large model on a small
    GPU), keeping the sizes measured before it."""
    out = {}
    for b in batches:
        calls = [call.with_rows(b)] * max(2, samples // b)
        try:
            replay_calls(denoiser, calls[:1], device)
            out[b] = 1000 * replay_calls(denoiser, calls, device) / (len(calls) * b)
        except torch.OutOfMemoryError:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            break
    return out
