"""The shapes-flow training script: it trains what the SD3 pipeline runs, and a stopped run continues exactly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from diffusers import StableDiffusion3Pipeline
from safetensors.torch import load_file

from autotune.shapes import train_flow

TINY = ["--n-images", "24", "--vae-check", "4", "--layers", "2", "--heads", "2", "--head-dim", "8",
        "--text-dim", "16", "--text-dim-2", "8", "--text-projection", "8", "--text-projection-2", "8",
        "--text-layers", "2", "--steps", "5", "--batch", "3", "--warmup", "2", "--save-every", "2",
        "--measure-samples", "0", "--threads", "1"]


def _tiny_args(*extra: str):
    return train_flow.parser().parse_args(["--out", "unused", *TINY, *extra])


def test_one_repeated_token_equals_the_pipelines_256_zero_rows():
    """Training runs the T5 zero rows as one token with log(256) added to its logit: the same output as diffusers'
    own processor on the 77 + 256 rows the pipeline feeds."""
    torch.manual_seed(0)
    args = _tiny_args()
    transformer = train_flow.build_transformer(args, 16, 8).eval()
    rows, pooled = torch.randn(2, 77, 24), torch.randn(2, 16)
    x, sigma = torch.randn(2, 8, 16, 16), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        # As a trained model: no zero-initialised layer, and the context embedder's bias makes the zero rows
        # non-zero inside the model.
        for p in transformer.parameters():
            p.normal_(0, 0.2)
        full = transformer(hidden_states=x, timestep=sigma * 1000,
                           encoder_hidden_states=torch.cat([rows, torch.zeros(2, 256, 24)], 1),
                           pooled_projections=pooled).sample
        transformer.set_attn_processor(train_flow.RepeatedTokenJointAttnProcessor(256))
        short = train_flow.velocity(transformer, x, sigma, rows, pooled)
        transformer.set_attn_processor(train_flow.RepeatedTokenJointAttnProcessor(77))
        other = train_flow.velocity(transformer, x, sigma, rows, pooled)
    assert torch.allclose(full, short, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(full, other, atol=1e-3)  # the count matters: it is not a no-op


def test_a_few_steps_give_an_sd3_folder_whose_text_encoding_training_matches(tmp_path):
    out = tmp_path / "model"
    assert train_flow.main(["--out", str(out), *TINY]) == 0
    meta = json.loads((out / "training.json").read_text())
    assert meta["steps_done"] == 5 and meta["world_version"] == 2 and meta["format"] == "StableDiffusion3Pipeline"
    assert set(meta["wall_time_minutes"]) >= {"data", "training"} and meta["loss_history"][-1][0] == 5
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline"
    stored = load_file(out / "transformer" / "diffusion_pytorch_model.safetensors")
    assert {v.dtype for v in stored.values()} == {torch.float16}

    pipe = StableDiffusion3Pipeline.from_pretrained(out, local_files_only=True)
    assert pipe.transformer.dtype == torch.float32 and pipe.vae.config.shift_factor is not None
    assert pipe.vae.config.scaling_factor != 1.0 and pipe.default_sample_size * pipe.vae_scale_factor == 64
    prompts = ["a red circle and a blue square on a white background", ""]
    embeds, _, pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, do_classifier_free_guidance=False)
    assert embeds.shape == (2, 77 + 256, 24)
    assert torch.equal(embeds[:, 77:], torch.zeros_like(embeds[:, 77:]))  # the placeholder T5 gives zero rows
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        rows, pooled_here = train_flow.encode_text(pipe.text_encoder, pipe.text_encoder_2, ids)
    assert torch.equal(rows, embeds[:, :77]) and torch.equal(pooled_here, pooled)
    # Dropping T5 the diffusers way gives the same conditioning.
    no_t5 = StableDiffusion3Pipeline.from_pretrained(out, local_files_only=True, text_encoder_3=None,
                                                     tokenizer_3=None)
    embeds_none, _, pooled_none, _ = no_t5.encode_prompt(prompts, prompts, prompts, do_classifier_free_guidance=False)
    assert torch.equal(embeds_none, embeds) and torch.equal(pooled_none, pooled)
    image = pipe(prompts[0], num_inference_steps=2, guidance_scale=7.0, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3)


def test_a_stopped_run_continues_to_the_same_weights(tmp_path):
    whole = tmp_path / "whole"
    train_flow.main(["--out", str(whole), "--state", str(tmp_path / "s1"), *TINY])
    (tmp_path / "s2").mkdir()
    shutil.copy(tmp_path / "s1" / "data.pt", tmp_path / "s2" / "data.pt")  # the same data, not rendered again
    parts = tmp_path / "parts"
    resumed = ["--out", str(parts), "--state", str(tmp_path / "s2"), *TINY]
    train_flow.main([*resumed, "--stop-after", "3"])
    assert not parts.exists() and torch.load(tmp_path / "s2" / "checkpoint.pt", weights_only=False)["step"] == 3
    train_flow.main(resumed)
    for name in ("transformer/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                 "text_encoder_2/model.safetensors"):
        a, b = load_file(whole / name), load_file(parts / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    history = json.loads((parts / "training.json").read_text())["loss_history"]
    assert history == json.loads((whole / "training.json").read_text())["loss_history"]
    with pytest.raises(SystemExit, match="other settings"):
        train_flow.main([*resumed, "--lr", "0.1"])
    # Under the constant learning rate, a finished run can be extended: 3 steps, then 2 more, as 5 at once.
    (tmp_path / "s3").mkdir()
    shutil.copy(tmp_path / "s1" / "data.pt", tmp_path / "s3" / "data.pt")
    extended = ["--out", str(tmp_path / "extended"), "--state", str(tmp_path / "s3"), *TINY]
    train_flow.main([*extended, "--steps", "3"])
    train_flow.main(extended)
    a = load_file(whole / "transformer/diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "extended" / "transformer/diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
