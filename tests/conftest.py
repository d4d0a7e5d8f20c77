"""Shared fixtures: tiny, randomly initialised Stable Diffusion pipelines saved as normal folders.

Like diffusers' own tests, these build the real component classes at toy sizes, so every code path
that loads and runs a checkpoint runs here in seconds, offline, on the CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# `.ci/test-setup.sh` starts a PostgreSQL server and writes its URL here.
_PG_ENV = Path(__file__).resolve().parent.parent / ".ci" / "postgres.env"
if "AUTOTUNE_TEST_POSTGRES_URL" not in os.environ and _PG_ENV.is_file():
    for line in _PG_ENV.read_text().splitlines():
        if line.startswith("export AUTOTUNE_TEST_POSTGRES_URL="):
            os.environ["AUTOTUNE_TEST_POSTGRES_URL"] = line.split("=", 1)[1].strip().strip("'\"")


def build_tiny_pipeline(path: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """Save a tiny SD-style pipeline (32 px images, 16x16 latents) with the real CLIP tokenizer."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from autotune.shapes.tokenizer import clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64),
        layers_per_block=1,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    with torch.no_grad():  # a small, smooth noise estimate, as a trained model has; random full-size outputs
        unet.conv_out.weight.mul_(0.1)  # make DDIM inversion diverge, which would test nothing
        unet.conv_out.bias.mul_(0.1)
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(path / "_tokenizer_src"),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_sdxl_pipeline(path: Path, seed: int = 0, force_zeros_for_empty_prompt: bool = True) -> Path:
    """Save a tiny SDXL pipeline laid out like SDXL base (after diffusers' own SDXL tests): no attention at the first
    level, cross-attention at the next two (transformer depth 1 then 2, 2 in the middle), two CLIP text encoders
    (the second with a projection: the pooled embedding), the added conditions (pooled embedding and six size ids),
    SDXL's VAE scaling factor and Euler scheduler. 32 px images, 16x16 latents, attention at 8x8 and 4x4, as SDXL's
    at 64x64 and 32x32 of 128x128."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from autotune.shapes.tokenizer import clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4, 4),
        transformer_layers_per_block=(1, 1, 2),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six size ids, then the pooled embedding
        cross_attention_dim=64,  # the two encoders' 32 + 32
        norm_num_groups=8,
    )
    with torch.no_grad():  # a small, smooth noise estimate, as in build_tiny_pipeline
        unet.conv_out.weight.mul_(0.1)
        unet.conv_out.bias.mul_(0.1)
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=0.13025,  # SDXL's
        force_upcast=True,
    )
    config = dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
                  max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
                  projection_dim=32)
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(CLIPTextConfig(**config))
    torch.manual_seed(seed + 2)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**config))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    tokenizer = clip_tokenizer(path / "_tokenizer_src")
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
                                     force_zeros_for_empty_prompt=force_zeros_for_empty_prompt, add_watermarker=False)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd"), "epsilon")


@pytest.fixture(scope="session")
def tiny_vpred_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd-v"), "v_prediction")


@pytest.fixture
def rows_seen(monkeypatch) -> list[int]:
    """The batch rows (source + target branches) of every denoising run of the editor."""
    import autotune.engine.unet.sampling as sampling

    seen: list[int] = []
    real = sampling.sample_branches

    def spy(unet, grid, start, *args, **kwargs):
        seen.append(start.shape[0])
        return real(unet, grid, start, *args, **kwargs)

    monkeypatch.setattr(sampling, "sample_branches", spy)
    return seen


def tiny_editor(tiny_model_dir: Path, **kwargs):
    """The editor on the tiny pipeline, on the CPU at one thread, without progress bars."""
    import torch

    from autotune import Editor

    torch.set_num_threads(1)
    return Editor.from_pretrained(str(tiny_model_dir), device="cpu", progress=False, **kwargs)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on a shared 2-core machine the tiny models run ~10x faster than with two."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD3 folder without T5 (tests/flow_pipelines.py)."""
    from flow_pipelines import build_tiny_sd3

    return build_tiny_sd3(tmp_path_factory.mktemp("tiny-sd3"))


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny FLUX.1-dev-like folder: guidance embedding, CLIP + T5 (tests/flow_pipelines.py)."""
    from flow_pipelines import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("tiny-flux"))
