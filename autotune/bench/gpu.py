"""8. Full-size architectures on a GPU, ready to run the day a card is at hand: each model family's published configs
(shipped in `autotune/bench/configs/<model>/`, no weights) are built with random weights, saved as a diffusers folder
and loaded by the Editor as a user's checkpoint would be; then, at the model's native resolution, the throughput
comparison (like for like: `throughput.bench_throughput`), the engine's overhead against its denoiser calls
(`overhead.bench_overhead`) and the peak device memory.

A model folder holds `model_index.json` and each component's config as published, and `bench.json`:

- `name`, `published`: what the configs are and where they come from;
- `denoiser`: the component called once per step (`unet`, `transformer`);
- `calm`: output layers scaled by 0.1, so that random weights give a small noise estimate as a trained model does
  (random full-size outputs make DDIM inversion diverge, to inf in half precision);
- `run`: the sizes that fit the benchmark in about 8 minutes on one 80 GB card (tasks, trials, batch, steps, ...);
- `tiny`: config overrides per component that shrink the same architecture for a CPU test.

A new family plugs in as a new folder; the Editor must have the family (`autotune.engine.family.FAMILIES`),
else the model is skipped with the reason. Random weights edit nothing meaningful: time, calls and memory transfer
to trained weights; the scores, and so which trials the pruner stops, do not.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from autotune.bench import markdown
from autotune.bench._common import denoiser
from autotune.errors import InputError

CONFIGS = Path(__file__).resolve().parent / "configs"
SIZES = ("full", "tiny")
BUDGET_MINUTES = 8.0
# At --size tiny (a CPU check that the command runs, no figure) the overhead benchmark times one repeat and sweeps
# two batch sizes instead of the card's six or seven.
TINY_RUN = {"repeats": 1, "sample_batches": [1, 2], "sample_rows": 4}
CALM = 0.1


def available_models() -> list[str]:
    """Every model folder shipped under `configs/`."""
    return sorted(p.name for p in CONFIGS.iterdir() if (p / "model_index.json").is_file())


def model_spec(model: str) -> dict[str, Any]:
    """A model folder's `bench.json`, with its folder."""
    folder = CONFIGS / model
    if not (folder / "bench.json").is_file():
        raise InputError(f"no benchmark configs for {model!r}; shipped: {', '.join(available_models())}")
    spec = json.loads((folder / "bench.json").read_text(encoding="utf-8"))
    spec["folder"] = folder
    return spec


def configs_hash(model: str) -> str:
    """sha256 over the model folder's files: which configs a figure was measured on."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted((CONFIGS / model).rglob("*.json")):
        h.update(str(path.relative_to(CONFIGS / model)).encode() + b"\0" + path.read_bytes() + b"\0")
    return "sha256:" + h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# Building a checkpoint folder from configs


def _tokenizer(class_name: str, work: Path) -> Any:
    """The offline tokenizer builders, by class name (real checkpoints ship theirs; the configs here do not): CLIP's
    real BPE vocabulary, and a small T5 vocabulary (`t5_tokenizer`). `work`: a scratch folder."""
    if class_name == "CLIPTokenizer":
        from autotune.shapes.tokenizer import clip_tokenizer

        return clip_tokenizer()
    if class_name == "T5TokenizerFast":
        return t5_tokenizer(work)
    raise InputError(f"no offline builder for a {class_name}; add one to autotune/bench/gpu.py `_tokenizer`")


def t5_tokenizer(directory: Path) -> Any:
    """A `T5TokenizerFast` over a small Unigram vocabulary: T5's special tokens at T5's ids (pad 0, end 1, unknown
    2), the shapes world's words and the letters (any prompt of the benchmark tokenizes). No T5 SentencePiece model
    ships offline; the ids differ from T5's, the work does not: the pipelines pad every prompt to their
    `max_sequence_length` (SD3 256, FLUX.1-dev 512 tokens). Built as a Unigram model with a
    Metaspace pre-tokenizer and decoder, saved to `tokenizer.json` (a WordLevel one saves but does not reload)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5TokenizerFast

    from autotune.shapes.world import BACKGROUND_COLORS, OBJECT_COLORS, SHAPES

    words = sorted({*OBJECT_COLORS, *BACKGROUND_COLORS, *SHAPES, "a", "an", "and", "on", "background"})
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    pieces += [("\u2581" + w, -1.0) for w in words] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return T5TokenizerFast(tokenizer_file=str(directory / "tokenizer.json"), extra_ids=0, pad_token="<pad>",
                           eos_token="</s>", unk_token="<unk>")


def _build_component(library: str, class_name: str, folder: Path, overrides: dict[str, Any], device: torch.device,
                     dtype: torch.dtype, work: Path | None = None) -> Any:
    if class_name.endswith("Tokenizer") or class_name.endswith("TokenizerFast"):
        return _tokenizer(class_name, work if work is not None else folder)
    if library not in ("diffusers", "transformers"):
        raise InputError(f"{folder}: components of library {library!r} are not built here")
    cls = getattr(__import__(library), class_name)
    if library == "diffusers":
        config = dict(cls.load_config(folder))
        config.update(overrides)
        if not issubclass(cls, torch.nn.Module):  # a scheduler
            return cls.from_config(config)
    else:
        config = cls.config_class.from_pretrained(folder)
        for key, value in overrides.items():
            setattr(config, key, value)
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # made in its dtype on its device: a full-size model never passes through float32
    try:
        with torch.device(device):
            return cls.from_config(config) if library == "diffusers" else cls(config)
    finally:
        torch.set_default_dtype(saved)


def build_checkpoint(model: str, out: str | Path, *, size: str = "full", device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[str, int]:
    """Build `model`'s architecture from its shipped configs with random weights (shrunk by its `tiny` overrides when
    `size="tiny"`) and save it to `out` as a diffusers folder; returns each module's parameter count."""
    if size not in SIZES:
        raise InputError(f"size={size!r}; use one of {', '.join(SIZES)}")
    spec = model_spec(model)
    folder, out = spec["folder"], Path(out)
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    counts = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        library, class_name = entry
        overrides = spec.get("tiny", {}).get(name, {}) if size == "tiny" else {}
        with tempfile.TemporaryDirectory() as scratch:  # a tokenizer's source files, before it saves itself
            component = _build_component(library, class_name, folder / name, overrides, torch.device(device), dtype,
                                         work=Path(scratch))
            if isinstance(component, torch.nn.Module):
                counts[name] = sum(p.numel() for p in component.parameters())
                with torch.no_grad():
                    for path in spec.get("calm", []):
                        owner, _, attr = path.partition(".")
                        if owner == name:
                            for p in component.get_submodule(attr).parameters():
                                p.mul_(CALM)
                component.save_pretrained(out / name, safe_serialization=True)
            else:
                component.save_pretrained(out / name)
            del component
    shutil.copyfile(folder / "model_index.json", out / "model_index.json")
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return counts


# ---------------------------------------------------------------------------------------------------------------------
# The benchmark


@dataclass
class ModelFigures:
    model: str
    name: str
    size: str
    configs: str  # configs_hash
    skipped: str | None = None  # why the model was not measured
    parameters: dict[str, int] = field(default_factory=dict)
    resolution: int = 0
    dtype: str = ""
    build_seconds: float = 0.0
    load_seconds: float = 0.0
    throughput: Any = None  # ThroughputResult
    method: str = ""  # the family's default method, which every edit and the tuner's space use
    overhead: Any = None  # OverheadResult
    memory_mb: dict[str, float] = field(default_factory=dict)  # "load", "overhead peak", "tuning peak"
    memory_kind: str = ""
    seconds: float = 0.0


@dataclass
class GpuResult:
    device: str
    size: str
    models: list[ModelFigures]
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=str)

    def markdown(self) -> str:
        from autotune.bench.throughput import AUTOTUNE, NAIVE, STRONG_NAIVE

        rows, notes = [], []
        for m in self.models:
            if m.skipped:
                notes.append(f"{m.name} ({m.model}): skipped, {m.skipped}.")
                continue
            tp = m.throughput
            threads = tp.thread_counts[-1]
            rate = {loop: [r.edits_per_min for r in tp.of(loop, threads)] for loop in (AUTOTUNE, STRONG_NAIVE, NAIVE)}
            params = sum(m.parameters.values())
            rows.append([f"{m.name} ({m.size})", f"{m.resolution} px, {m.dtype}", f"{params / 1e6:.0f} M",
                         _median_range(rate[AUTOTUNE]), _median_range(rate[STRONG_NAIVE]), _median_range(rate[NAIVE]),
                         _median_range(tp.ratios(STRONG_NAIVE, threads), "x"),
                         _median_range(tp.ratios(NAIVE, threads), "x"),
                         f"{m.overhead.cold_ratio:.2f} / {m.overhead.warm_ratio:.2f}",
                         m.memory_mb.get("tuning peak", math.nan), m.seconds / 60])
            notes.append(f"{m.name}: `{m.method}` edits of {tp.tasks} shapes tasks ({tp.steps} steps, {tp.trials} "
                         f"trials asked {tp.batch} at a time, {tp.runs()} runs; the naive loop on {tp.naive_trials} "
                         f"trial(s)); overhead on {m.overhead.cold_calls} / {m.overhead.warm_calls} denoiser calls "
                         f"({m.overhead.denoiser}); configs {m.configs[:19]}…; built in {m.build_seconds:.0f} s, "
                         f"loaded in {m.load_seconds:.0f} s.")
        table = markdown.table(["model", "native size", "parameters", "autotune edits / min", "strong naive",
                                "naive", "vs strong naive", "vs naive", "overhead cold / warm",
                                "peak memory (MB)", "minutes"], rows)
        where = ("**Measured on a CPU at tiny sizes: a check that the command runs, not a GPU figure.** "
                 if self.size == "tiny" or not self.device.startswith("cuda") else "")
        budget = (f" It took {self.seconds / 60:.1f} minutes; each model's runs stop before one would end "
                  f"{BUDGET_MINUTES:g} minutes after its start." if self.seconds else "")
        return (where + "Each model built from its published configs with random weights (`autotune/bench/configs/`), "
                "saved and loaded by the Editor as a checkpoint folder, edited at its native size. Throughput: edits "
                "per minute, medians (range) over the runs, autotune against the strong naive loop (one `edit` per "
                "trial and task, cache on) and the naive loop (a fresh inversion each), as in section 1. Overhead: "
                "one edit of the model's default method over its denoiser calls replayed alone (cold: from an empty "
                "cache; warm: the same edit again, with what the cache kept). "
                "Peak memory: the device's `max_memory_allocated` over the tuning and baseline loops (RSS of the "
                "process on a CPU). Random weights edit nothing meaningful: the times, calls and memory transfer to "
                "trained weights, the scores (and so which trials are pruned) do not." + budget + "\n\n" + table
                + ("\n\n" + "\n".join(f"- {n}" for n in notes) if notes else ""))


def _median_range(values: list[float], suffix: str = "") -> str:
    from autotune.bench.throughput import _spread

    return _spread(values, suffix)


def bench_gpu(models: list[str], *, device: str = "cuda", size: str = "full", tasks: int | None = None,
              trials: int | None = None, batch: int | None = None, steps: int | None = None,
              naive_trials: int | None = None, runs: int | None = None, factors: bool = False,
              category: str = "change_color", work_dir: str | Path | None = None,
              budget_minutes: float | None = BUDGET_MINUTES, progress: bool = False) -> GpuResult:
    """Build, load and measure each model in turn (see the module docstring); a setting left None comes from the
    model's `bench.json`. Each model's throughput runs stop before one would end past `budget_minutes` from the
    model's start (at least one run)."""
    import sys

    if size == "full" and not str(device).startswith("cuda"):
        raise InputError("full-size models on a CPU take hours (a Stable Diffusion 1.5 UNet call of batch 2 takes "
                         "about 13 s on 2 cores); use --size tiny on a CPU, or --device cuda")
    start = time.perf_counter()
    out = []
    for model in models:
        if progress:
            print(f"bench gpu: {model} ({size})", file=sys.stderr)
        deadline = time.perf_counter() + 60 * budget_minutes if budget_minutes else None
        out.append(_bench_model(model, device=device, size=size, category=category, factors=factors,
                                work_dir=work_dir, deadline=deadline, progress=progress,
                                overrides=dict(tasks=tasks, trials=trials, batch=batch, steps=steps,
                                               naive_trials=naive_trials, runs=runs)))
    return GpuResult(str(device), size, out, time.perf_counter() - start)


def _bench_model(model: str, *, device: str, size: str, category: str, factors: bool, work_dir: Any,
                 deadline: float | None, progress: bool, overrides: dict[str, Any]) -> ModelFigures:
    from autotune.bench.overhead import SAMPLE_BATCHES, bench_overhead
    from autotune.bench.throughput import bench_throughput
    from autotune.engine.editor import Editor
    from autotune.engine.family import family_for_pipeline
    from autotune.shapes.scoring import ShapesScorer
    from autotune.shapes.tasks import shapes_tasks
    from autotune.tuning.search_space import family_defaults

    spec = model_spec(model)
    figures = ModelFigures(model, spec.get("name", model), size, configs_hash(model))
    pipeline = json.loads((spec["folder"] / "model_index.json").read_text(encoding="utf-8"))["_class_name"]
    if family_for_pipeline(pipeline) is None:
        figures.skipped = f"the engine has no model family for {pipeline} yet"
        return figures
    run = {**spec.get("run", {}), **(TINY_RUN if size == "tiny" else {}),
           **{k: v for k, v in overrides.items() if v is not None}}
    dev = torch.device(device)
    dtype = _dtype(spec, dev)
    begin = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:  # kept until the end: the editor was loaded from it
        figures.parameters = build_checkpoint(model, tmp, size=size, device=dev, dtype=dtype)
        figures.build_seconds = time.perf_counter() - begin
        _reset_peak(dev)
        loaded = time.perf_counter()
        editor = Editor.from_pretrained(tmp, device=dev, dtype=dtype, progress=False)
        figures.load_seconds = time.perf_counter() - loaded
        denoiser(editor)  # fail now, not after the loops, if the family names its denoiser otherwise
        figures.resolution, figures.dtype = editor.resolution, str(dtype).replace("torch.", "")
        figures.memory_kind = "max_memory_allocated" if dev.type == "cuda" else "peak RSS of the process"
        figures.memory_mb["load"] = _peak_mb(dev)
        params = family_defaults(editor, None).params.with_(steps=int(run["steps"]))
        figures.method = params.method
        tasks = shapes_tasks(category, "tune", int(run["tasks"]))
        _reset_peak(dev)
        figures.overhead = bench_overhead(editor, tasks[0], params, repeats=int(run.get("repeats", 3)),
                                          sample_batches=run.get("sample_batches", SAMPLE_BATCHES),
                                          sample_rows=int(run.get("sample_rows", 128)))
        figures.memory_mb["overhead peak"] = _peak_mb(dev)
        _reset_peak(dev)
        figures.throughput = bench_throughput(
            editor, tasks, ShapesScorer(), trials=int(run["trials"]), batch=int(run["batch"]),
            steps=int(run["steps"]), naive_trials=int(run["naive_trials"]), runs=int(run["runs"]),
            thread_counts=[torch.get_num_threads()], factors=factors, deadline=deadline, progress=progress)
        figures.memory_mb["tuning peak"] = _peak_mb(dev)
        del editor
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    figures.seconds = time.perf_counter() - begin
    return figures


def _dtype(spec: dict[str, Any], device: torch.device) -> torch.dtype:
    """A model's dtype on a GPU as its `bench.json` names it (float16 unless it says otherwise: FLUX.1's native
    bfloat16); float32 on a CPU."""
    if device.type != "cuda":
        return torch.float32
    name = spec.get("dtype", "float16")
    if name not in ("float16", "bfloat16", "float32"):
        raise InputError(f"{spec['folder'] / 'bench.json'}: dtype {name!r}; use float16, bfloat16 or float32")
    return getattr(torch, name)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
