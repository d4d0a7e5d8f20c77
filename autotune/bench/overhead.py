"""2. Engine overhead: one candidate edit against the UNet forward passes it cannot avoid: the same calls (shapes,
timesteps, batch sizes, recorded by a forward hook during the edit) replayed alone, SDPA attention throughout."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from autotune.bench import markdown
from autotune.bench._common import sync
from autotune.errors import InputError
from autotune.params import UNET_METHODS, EditParams
from autotune.task import EditTask


@dataclass
class OverheadResult:
    steps: int
    cold_unet_calls: int
    warm_unet_calls: int
    cold_edit_seconds: float
    cold_unet_seconds: float
    warm_edit_seconds: float
    warm_unet_seconds: float
    vae_seconds: float
    cold_ratio: float
    warm_ratio: float
    repeats: int
    sample_ms: dict[int, float] = field(default_factory=dict)  # UNet alone: ms per sample by batch size

    def markdown(self) -> str:
        table = markdown.table(
            ["one candidate edit", "UNet calls", "edit seconds", "same UNet calls alone (s)", "ratio",
             "ratio without VAE encode/decode"],
            [["cold (inversion + two-branch edit)", self.cold_unet_calls, self.cold_edit_seconds,
              self.cold_unet_seconds, self.cold_ratio,
              (self.cold_edit_seconds - self.vae_seconds) / self.cold_unet_seconds],
             ["warm (inversion and source branch from the cache)", self.warm_unet_calls, self.warm_edit_seconds,
              self.warm_unet_seconds, self.warm_ratio,
              (self.warm_edit_seconds - self.vae_seconds) / self.warm_unet_seconds]])
        return (table + f"\n\nTarget: ratio <= 1.2. Medians of {self.repeats} runs, {self.steps} DDIM steps; the "
                "UNet calls are recorded by a forward hook during the edit and replayed alone (same shapes, "
                "timesteps and batch sizes, random inputs, SDPA attention throughout, text keys and values "
                "projected once per run of same-shaped calls as in the engine). The VAE encode + decode "
                f"of one image takes {self.vae_seconds:.3g} s (unavoidable too, but not a UNet pass)."
                + self._sample_costs())

    def _sample_costs(self) -> str:
        if not self.sample_ms:
            return ""
        table = markdown.table(["UNet batch (rows)", *map(str, self.sample_ms)],
                               [["ms per sample", *self.sample_ms.values()]])
        return ("\n\nWhat batching buys: the same UNet call (the edit's last) replayed alone at other batch sizes, "
                "time per sample (row). The tuner's batches of several tasks run at the right-hand end, the naive "
                "loop's at 2-4 rows.\n\n" + table)


class CallRecorder:
    """A forward pre-hook that records each denoiser call's input shapes and timestep (a UNet's `sample`, a
    transformer's `hidden_states`)."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Size, Any, torch.Size]] = []

    def __call__(self, module: Any, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"] if "sample" in kwargs else kwargs["hidden_states"]
        t = args[1] if len(args) > 1 else kwargs["timestep"]
        states = args[2] if len(args) > 2 else kwargs["encoder_hidden_states"]
        t = t.detach().clone() if torch.is_tensor(t) else t
        self.calls.append((sample.shape, t, states.shape))


def record_unet_calls(unet: Any, run: Callable[[], Any], recorder: CallRecorder | None = None
                      ) -> list[tuple[torch.Size, Any, torch.Size]]:
    recorder = recorder if recorder is not None else CallRecorder()
    handle = unet.register_forward_pre_hook(recorder, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return recorder.calls


@torch.no_grad()
def replay_unet_calls(unet: Any, calls: Sequence[tuple[torch.Size, Any, torch.Size]], device: torch.device,
                      dtype: torch.dtype) -> float:
    """Seconds for the same UNet calls alone (inputs made before the clock starts). One text-embedding tensor per
    shape, under autotune's attention processors: consecutive calls of a shape project its text keys and values
    once, as the engine's loops do, so that the replay does no work the engine avoids."""
    from autotune.engine.unet.attention import attention_control

    gen = torch.Generator(device="cpu").manual_seed(0)
    texts: dict[torch.Size, torch.Tensor] = {}
    for _, _, e in calls:
        if e not in texts:
            texts[e] = torch.randn(e, generator=gen).to(device, dtype)
    inputs = [(torch.randn(s, generator=gen).to(device, dtype), t, texts[e]) for s, t, e in calls]
    with attention_control(unet, None):
        sync(device)
        start = time.perf_counter()
        for x, t, e in inputs:
            unet(x, t, encoder_hidden_states=e)
        sync(device)
        return time.perf_counter() - start


def bench_overhead(editor: Any, task: EditTask, params: EditParams | None = None, repeats: int = 3
                   ) -> OverheadResult:
    """Time one candidate edit (cold: cache cleared, so it inverts and records its source branch; warm: both from the
    cache, only the target branch runs) against its own UNet calls alone."""
    params = params or EditParams()
    if params.method not in UNET_METHODS:
        raise InputError(f"the overhead benchmark replays UNet calls; {params.method} runs on another model family")
    unet, device, dtype = editor.components.unet, torch.device(editor.device), editor.dtype

    def edit() -> None:
        editor.edit_task(task, [params])

    edit()  # warm-up
    cold, cold_unet, warm, warm_unet = [], [], [], []
    cold_calls: list = []
    warm_calls: list = []
    for _ in range(repeats):
        editor.cache.clear()
        cold_calls = record_unet_calls(unet, edit)  # hook cost is negligible; timed runs below carry no hook
        editor.cache.clear()
        sync(device)
        start = time.perf_counter()
        edit()
        sync(device)
        cold.append(time.perf_counter() - start)
        cold_unet.append(replay_unet_calls(unet, cold_calls, device, dtype))
        warm_calls = record_unet_calls(unet, edit)
        sync(device)
        start = time.perf_counter()
        edit()
        sync(device)
        warm.append(time.perf_counter() - start)
        warm_unet.append(replay_unet_calls(unet, warm_calls, device, dtype))
    sample_ms = unet_sample_costs(unet, cold_calls[-1], device, dtype)
    pil = editor.prepare_image(task.image)
    vae = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        editor.engine.decode(editor.engine.encode_image(pil)[None])
        sync(device)
        vae.append(time.perf_counter() - start)
    med = statistics.median
    return OverheadResult(params.steps, len(cold_calls), len(warm_calls), med(cold), med(cold_unet), med(warm),
                          med(warm_unet), med(vae), med(cold) / med(cold_unet), med(warm) / med(warm_unet), repeats,
                          sample_ms)


def unet_sample_costs(unet: Any, call: tuple[torch.Size, Any, torch.Size], device: torch.device, dtype: torch.dtype,
                      batches: Sequence[int] = (1, 2, 4, 8, 16, 32, 64), samples: int = 128) -> dict[int, float]:
    """Milliseconds per sample of one UNet call's shape replayed alone at each batch size (about `samples` rows
    each, after one warm-up call). Stops at the first batch size the device has no memory for (a large model on a
    small GPU), keeping the sizes measured before it."""
    shape, timestep, states = call
    out = {}
    for b in batches:
        calls = [(torch.Size((b, *shape[1:])), timestep, torch.Size((b, *states[1:])))] * max(2, samples // b)
        try:
            replay_unet_calls(unet, calls[:1], device, dtype)
            out[b] = 1000 * replay_unet_calls(unet, calls, device, dtype) / (len(calls) * b)
        except torch.OutOfMemoryError:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            break
    return out
