"""The training script stays alive: a few steps at toy sizes produce a loadable Stable Diffusion folder."""

from __future__ import annotations

import json

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from autotune.shapes import train
from autotune.shapes.tokenizer import clip_tokenizer

TINY = ["--n-images", "48", "--vae-steps", "2", "--vae-batch", "4", "--vae-channels", "8,8,8",
        "--unet-channels", "32,32", "--text-dim", "32", "--text-layers", "1", "--steps", "3", "--batch", "4",
        "--save-every", "2", "--threads", "1", "--decoder-steps", "2"]


def test_a_few_training_steps_give_a_standard_pipeline_folder(tmp_path):
    out = tmp_path / "model"
    assert train.main(["--out", str(out), "--seed", "0", *TINY]) == 0
    assert not (out / "checkpoint").exists()  # intermediate checkpoint removed once the final one is written
    meta = json.loads((out / "training.json").read_text())
    assert meta["steps_done"] == 3 and meta["seed"] == 0

    from safetensors.torch import load_file

    stored = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert {v.dtype for v in stored.values()} == {torch.float16}  # stored half: half the package size
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert pipe.unet.dtype == pipe.text_encoder.dtype == torch.float32  # and loaded back as float32
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert (pipe.scheduler.config.beta_start, pipe.scheduler.config.beta_end) == (0.00085, 0.012)
    # Cross-attention at both UNet resolutions (Prompt-to-Prompt reads them).
    assert all(t.startswith("CrossAttn") for t in pipe.unet.config.down_block_types)
    prompt = "a red circle on a white background"
    assert pipe.tokenizer(prompt).input_ids == clip_tokenizer()(prompt).input_ids
    assert pipe.vae.config.scaling_factor != 0.18215  # computed from the trained latents
    image = pipe(prompt, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()


def test_training_is_deterministic_from_the_seed(tmp_path):
    from safetensors.torch import load_file

    for name in ("a", "b"):
        train.main(["--out", str(tmp_path / name), "--seed", "1", *TINY])
    a = load_file(tmp_path / "a" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "b" / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_min_snr_weights_cap_the_low_noise_steps():
    from diffusers import DDPMScheduler

    alphas = DDPMScheduler(**train.NOISE).alphas_cumprod
    w = train.min_snr_weights(alphas, 5.0)
    snr = alphas / (1 - alphas)
    noisy = snr <= 5.0  # high-noise steps keep the plain epsilon loss
    assert noisy.any() and (~noisy).any()
    assert torch.allclose(w[noisy], torch.ones(int(noisy.sum())))
    assert torch.allclose(w[~noisy] * snr[~noisy], torch.full((int((~noisy).sum()),), 5.0))
    assert w[0] < 0.01  # t = 0, SNR about 1,170: its weight about 5 / 1,170
    assert torch.equal(train.min_snr_weights(alphas, 0.0), torch.ones_like(alphas))  # 0 turns it off
