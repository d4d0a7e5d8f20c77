"""Tiny, randomly initialised SD3 and FLUX.1 pipelines saved as normal diffusers folders, for the flow family's tests.

Built the way diffusers' own pipeline tests build theirs (`get_dummy_components`: one-block transformers, a one-level
VAE, small CLIP text models), with the real CLIP tokenizer from open-clip-torch's vocabulary and, for FLUX.1's T5, a
small Unigram tokenizer made with the `tokenizers` library (no T5 tokenizer ships offline). They load through exactly
the code path of a real checkpoint (`Editor.from_pretrained(folder)`). 16 px images, 16 x 16 latents (FLUX.1: 8 x 8
packed tokens; its scheduler's `max_image_seq_len` says so, as FLUX.1's 4096 says 1024 px).
This module holds no tests; pytest collects it and finds none.
"""

from __future__ import annotations

from pathlib import Path

T5_WORDS = ("a", "an", "the", "cat", "dog", "red", "blue", "green", "car", "on", "of", "in", "photo", "sitting",
            "wooden", "floor", "circle", "square", "white", "background", "hat", "with")


def t5_tokenizer(path: Path):
    """A T5TokenizerFast over a small Unigram vocabulary (pieces with scores, Metaspace pre-tokenizer and decoder)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    pieces += [("\u2581" + w, -1.0) for w in T5_WORDS] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    return T5TokenizerFast(tokenizer_file=str(path / "tokenizer.json"), extra_ids=0, pad_token="<pad>",
                           eos_token="</s>", unk_token="<unk>")


def _clip_config(projection: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                          pad_token_id=49407, projection_dim=projection)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(sample_size=16, in_channels=3, out_channels=3, block_out_channels=(8,), layers_per_block=1,
                         latent_channels=4, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
                         shift_factor=0.0609, scaling_factor=1.5035)


def _calm(linear) -> None:
    """A small, smooth velocity, as a trained model has: random full-size outputs make inversion diverge."""
    import torch

    with torch.no_grad():
        linear.weight.mul_(0.1)
        linear.bias.mul_(0.1)


def build_tiny_sd3(path: Path, seed: int = 0, t5: bool = False, shift: float = 3.0) -> Path:
    """An SD3 folder: SD3Transformer2DModel, two CLIPTextModelWithProjection, optionally T5, shift 3 as SD3."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from autotune.shapes.tokenizer import clip_tokenizer

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
                                        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
                                        pooled_projection_dim=64, out_channels=4)
    _calm(transformer.proj_out)
    clip = clip_tokenizer(path / "_tokenizer_src")
    extra = {"text_encoder_3": None, "tokenizer_3": None}
    if t5:
        extra = {"text_encoder_3": T5EncoderModel(T5Config(vocab_size=64, d_model=32, d_ff=37, d_kv=8, num_layers=2,
                                                           num_heads=4, relative_attention_num_buckets=8)),
                 "tokenizer_3": t5_tokenizer(path / "_t5_src")}
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
                                    vae=_vae(), text_encoder=CLIPTextModelWithProjection(_clip_config()),
                                    tokenizer=clip, text_encoder_2=CLIPTextModelWithProjection(_clip_config()),
                                    tokenizer_2=clip, **extra)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_flux(path: Path, seed: int = 0, guidance_embeds: bool = True) -> Path:
    """A FLUX.1 folder: FluxTransformer2DModel (guidance-distilled like dev, or not like schnell), CLIP + T5, dynamic
    shifting as FLUX.1-dev's scheduler, its sequence lengths scaled to the 8 x 8 tokens of a 16 px image."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    from autotune.shapes.tokenizer import clip_tokenizer

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
                                         guidance_embeds=guidance_embeds)
    _calm(transformer.proj_out)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0 if guidance_embeds else 1.0,
                                                use_dynamic_shifting=guidance_embeds, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=16, max_image_seq_len=64)
    t5 = T5EncoderModel(T5Config(vocab_size=64, d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8))
    pipe = FluxPipeline(scheduler=scheduler, vae=_vae(), text_encoder=CLIPTextModel(_clip_config()),
                        tokenizer=clip_tokenizer(path / "_tokenizer_src"), text_encoder_2=t5,
                        tokenizer_2=t5_tokenizer(path / "_t5_src"), transformer=transformer)
    pipe.save_pretrained(path, safe_serialization=True)
    return path
