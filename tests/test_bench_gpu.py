"""`autotune bench gpu`: the shipped configs are the published architectures, and the whole command runs on the CPU
at tiny sizes (the same code path as on a card), so that it cannot rot before a GPU is at hand."""

from __future__ import annotations

import dataclasses
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
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None or "Tokenizer" in entry[1]:
            continue
        overrides = spec["tiny"].get(name, {}) if size == "tiny" else {}
        module = gpu._build_component(entry[0], entry[1], spec["folder"] / name, overrides, torch.device("meta"),
                                      torch.float16)
        if isinstance(module, torch.nn.Module):
            counts[name] = sum(p.numel() for p in module.parameters())
    return counts


def test_shipped_sd15_configs_build_the_published_architecture():
    assert _meta_counts("sd15", "full") == SD15_PARAMETERS  # on the meta device: no memory, no weights
    assert gpu.available_models() == sorted(p.name for p in gpu.CONFIGS.iterdir() if p.is_dir())
    assert torch.get_default_dtype() == torch.float32  # restored after building in half precision


def test_shipped_sdxl_sd3_and_flux_configs_build_the_published_architectures():
    """Against the figures their authors publish (billions rounded as published), and against each other where two
    models share a component (the same CLIP ViT-L, OpenCLIP ViT-bigG, T5-v1.1-XXL and SD VAE)."""
    sdxl, sd3, flux = (_meta_counts(m, "full") for m in ("sdxl", "sd3", "flux-dev"))
    # SDXL report (Podell et al. 2023), Table 1: UNet 2.6 B, text encoders (CLIP ViT-L and OpenCLIP ViT-bigG) 817 M;
    # the same autoencoder architecture and CLIP ViT-L as Stable Diffusion 1.5
    assert f"{sdxl['unet'] / 1e9:.1f}" == "2.6"
    assert (sdxl["text_encoder"] + sdxl["text_encoder_2"]) // 10**6 == 817
    assert sdxl["text_encoder"] == SD15_PARAMETERS["text_encoder"] and sdxl["vae"] == SD15_PARAMETERS["vae"]
    # SD3 (Esser et al. 2024; SD3-medium's model card): a 2 B MMDiT (depth 24), T5-v1.1-XXL's encoder 4.7 B; its CLIPs
    # are SDXL's two, the ViT-L one with its projection (768 x 768) kept
    # (4.76 B, which the paper and card give truncated as 4.7 B)
    assert f"{sd3['transformer'] / 1e9:.1f}" == "2.0" and sd3["text_encoder_3"] // 10**8 == 47
    assert sd3["text_encoder_2"] == sdxl["text_encoder_2"]
    assert sd3["text_encoder"] == sdxl["text_encoder"] + 768 * 768
    # FLUX.1-dev (Black Forest Labs' model card): a 12 B transformer; CLIP ViT-L and SD3's T5 and 16-channel VAE
    assert f"{flux['transformer'] / 1e9:.0f}" == "12" and f"{flux['transformer'] / 1e9:.1f}" == "11.9"
    assert flux["text_encoder"] == sdxl["text_encoder"] and flux["text_encoder_2"] == sd3["text_encoder_3"]
    assert flux["vae"] == sd3["vae"]
    for model, full in (("sdxl", sdxl), ("sd3", sd3), ("flux-dev", flux)):
        tiny = _meta_counts(model, "tiny")
        assert tiny.keys() == full.keys() and all(tiny[k] < full[k] / 20 for k in tiny), model


def test_every_shipped_model_names_its_sources_and_a_run_that_fits_the_budget():
    for model in gpu.available_models():
        spec = gpu.model_spec(model)
        assert spec["denoiser"] in ("unet", "transformer") and spec["calm"][0].startswith(spec["denoiser"] + ".")
        assert {"tasks", "trials", "batch", "steps", "naive_trials", "runs"} <= set(spec["run"])
        if model != "sd15":  # the folders of the families that came later cite every number in a README
            assert "Sources" in (spec["folder"] / "README.md").read_text()


def _run_tiny(tmp_path, monkeypatch, models: str):
    from autotune.cli import main

    captured = {}
    real = gpu.bench_gpu

    def keep(*args, **kwargs):
        captured["result"] = real(*args, **kwargs)
        return captured["result"]

    monkeypatch.setattr(gpu, "bench_gpu", keep)
    out, figures = tmp_path / "B.md", tmp_path / "gpu.json"
    code = main(["bench", "gpu", "--device", "cpu", "--size", "tiny", "--models", models, "--tasks", "2",
                 "--trials", "2", "--batch", "2", "--steps", "2", "--naive-trials", "1", "--runs", "1",
                 "--out", str(out), "--json", str(figures)])
    assert code == 0
    return out.read_text(), json.loads(figures.read_text()), captured["result"]


def test_bench_gpu_runs_every_model_on_the_cpu_at_tiny_sizes(tmp_path, capsys, monkeypatch):
    text, data, result = _run_tiny(tmp_path, monkeypatch, "all")
    assert "autotune-bench:gpu:start" in text and "not a GPU figure" in text
    assert "autotune bench gpu --device cpu --size tiny --models all --tasks 2" in text
    models = {m["model"]: m for m in data["figures"]["models"]}
    assert sorted(models) == gpu.available_models() == ["flux-dev", "sd15", "sd3", "sdxl"]
    methods = {"sd15": "siminversion", "sdxl": "siminversion", "sd3": "flowedit", "flux-dev": "flowedit"}
    for name, model in models.items():
        assert model["skipped"] is None and model["resolution"] == 64 and model["method"] == methods[name]
        assert model["parameters"] == _meta_counts(name, "tiny")  # built from the shipped configs, shrunk
        assert model["configs"] == gpu.configs_hash(name)
        assert {r["loop"] for r in model["throughput"]["loops"]} == {"autotune", "strong naive", "naive"}
        assert model["overhead"]["cold_calls"] > 0 and model["overhead"]["sample_ms"]
        assert model["memory_mb"]["tuning peak"] > 0
        assert f"| {model['name']} (tiny) | 64 px, float32 |" in text
    assert models["sd15"]["overhead"]["cold_calls"] == 2 + 2  # inversion and two-branch sampling, 2 steps each
    assert models["sd3"]["overhead"]["denoiser"] == "SD3Transformer2DModel"
    err = capsys.readouterr().err
    assert all(f"bench gpu: {m} (tiny)" in err for m in models)
    # the same figures read as a GPU run: no CPU caveat, each model a row
    on_a_card = dataclasses.replace(result, device="cuda:0", size="full").markdown()
    assert "not a GPU figure" not in on_a_card and on_a_card.count("| FLUX.1-dev (tiny) |") == 1


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
    with pytest.raises(InputError, match="no benchmark configs for 'sd21'"):
        gpu.model_spec("sd21")
