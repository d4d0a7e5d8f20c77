"""`autotune bench gpu`: the shipped configs are the published architectures, and the whole command runs on the CPU
at tiny sizes (the same code path as on a card), so that it cannot rot before a GPU is at hand."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from autotune.bench import gpu
from autotune.errors import InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Parameter counts of Stable Diffusion 1.5's modules as published (stable-diffusion-v1-5 model card, diffusers).
SD15_PARAMETERS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}


def _meta_counts(model: str, size: str) -> dict[str, int]:
    spec = gpu.model_spec(model)
    index = json.loads((spec["folder"] / "model_index.json").read_text())
    counts = {}
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None or entry[1].endswith("Tokenizer"):
            continue
        overrides = spec["tiny"].get(name, {}) if size == "tiny" else {}
        module = gpu._build_component(entry[0], entry[1], spec["folder"] / name, overrides, torch.device("meta"),
                                      torch.float16)
        if isinstance(module, torch.nn.Module):
            counts[name] = sum(p.numel() for p in module.parameters())
    return counts


def test_shipped_sd15_configs_build_the_published_architecture():
    assert _meta_counts("sd15", "full") == SD15_PARAMETERS  # on the meta device: no memory, no weights
    tiny = _meta_counts("sd15", "tiny")
    assert tiny.keys() == SD15_PARAMETERS.keys() and all(tiny[k] < SD15_PARAMETERS[k] / 50 for k in tiny)
    assert gpu.available_models() == sorted(p.name for p in gpu.CONFIGS.iterdir() if p.is_dir())
    assert torch.get_default_dtype() == torch.float32  # restored after building in half precision


def test_bench_gpu_runs_on_the_cpu_at_tiny_sizes(tmp_path, capsys):
    from autotune.cli import main

    out, figures = tmp_path / "B.md", tmp_path / "gpu.json"
    code = main(["bench", "gpu", "--device", "cpu", "--size", "tiny", "--models", "sd15", "--tasks", "2",
                 "--trials", "2", "--batch", "2", "--steps", "2", "--naive-trials", "1", "--runs", "1",
                 "--out", str(out), "--json", str(figures)])
    assert code == 0
    text = out.read_text()
    assert "autotune-bench:gpu:start" in text and "not a GPU figure" in text
    assert "autotune bench gpu --device cpu --size tiny --models sd15 --tasks 2" in text
    data = json.loads(figures.read_text())
    (model,) = data["figures"]["models"]
    assert model["model"] == "sd15" and model["skipped"] is None and model["resolution"] == 64
    assert model["parameters"] == _meta_counts("sd15", "tiny")  # built from the shipped configs, shrunk
    assert model["configs"] == gpu.configs_hash("sd15")
    loops = {r["loop"] for r in model["throughput"]["loops"]}
    assert loops == {"autotune", "strong naive", "naive"}
    assert model["overhead"]["cold_unet_calls"] == 2 + 2 and model["memory_mb"]["tuning peak"] > 0
    assert "bench gpu: sd15 (tiny)" in capsys.readouterr().err


def test_bench_gpu_refuses_full_size_on_a_cpu_and_skips_a_family_the_engine_lacks(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="use --size tiny on a CPU"):
        gpu.bench_gpu(["sd15"], device="cpu", size="full")
    configs = tmp_path / "configs"
    shutil.copytree(gpu.CONFIGS / "sd15", configs / "kandinsky")  # a pipeline class no family of the engine reads
    index = json.loads((configs / "kandinsky" / "model_index.json").read_text())
    (configs / "kandinsky" / "model_index.json").write_text(json.dumps({**index, "_class_name": "KandinskyPipeline"}))
    monkeypatch.setattr(gpu, "CONFIGS", configs)
    result = gpu.bench_gpu(["kandinsky"], device="cpu", size="tiny")
    assert result.models[0].skipped == "the engine has no model family for KandinskyPipeline yet"
    assert "skipped, the engine has no model family for KandinskyPipeline yet" in result.markdown()
    with pytest.raises(InputError, match="no benchmark configs for 'sdxl'"):
        gpu.model_spec("sdxl")
