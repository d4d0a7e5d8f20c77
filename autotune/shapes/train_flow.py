"""Train the shapes-flow text-to-image model on the CPU, in the Stable Diffusion 3 format: an SD3Transformer2DModel
(joint text-image attention) and two small CLIPTextModelWithProjection text encoders trained together with the
rectified-flow objective on world-version-2 scenes (64 px), in the latent space of the shapes VAE (reused, frozen).

    autotune shapes train-flow --out autotune/shapes/weights/shapes-flow   # trains, then measures
    python -m autotune.shapes.train_flow --out ...                         # trains only

Stages: render and encode the scenes (cached); train, with 10% caption dropout so classifier-free guidance has an
unconditional branch, logit-normal timestep sampling (SD3's) and an EMA of the weights; write a diffusers
`StableDiffusion3Pipeline` folder (EMA weights, float16 on disk); measure text to image with the shapes reader and
record the settings, wall time and figures in `training.json`.

No T5 conditioning. diffusers drops T5 when `text_encoder_3=None, tokenizer_3=None` are passed to `from_pretrained`
(then the pipeline feeds zero rows in its place), but a folder whose model_index.json names no T5 does not load
without those arguments. So the folder carries a placeholder T5 (`zero_t5`: one tiny layer whose final norm weight is
0, about 30 kB) that outputs exactly those zero rows: `StableDiffusion3Pipeline.from_pretrained(folder)` loads it like
any SD3 checkpoint, and loading with `text_encoder_3=None, tokenizer_3=None` gives the identical embeddings (tested).

Deterministic from the seed. Resumable: every `--save-every` steps (and on SIGINT / SIGTERM, at the end of the step
under way) the full state -- weights, optimizer, EMA, random generator, loss history -- goes to the state folder
(default: `.autotune/train-<name of --out>` in the working directory, autotune's project folder, ignored by
git); rerunning the same command continues from it
and gives the same weights as one uninterrupted run.

How the pipeline feeds the transformer, and how training matches it exactly at half the cost: with no T5,
`StableDiffusion3Pipeline.encode_prompt` appends `max_sequence_length` (default 256) all-zero rows to the 77 CLIP
token embeddings. Those rows are identical at every layer (same input, per-token operations, identical queries),
so 256 of them act as one token whose attention logit is raised by log(256). Training runs one such token with that
bias (`RepeatedTokenJointAttnProcessor`); the shipped model runs the pipeline's own 256 rows with diffusers' own
processor (tested equal). The model is trained for the pipeline's default `max_sequence_length=256`.
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning. On a shared CPU (other processes busy), spinning threads made two
# threads slower than one: a training step measured 22.4 s with 2 spinning threads, 6.3 s with 1, 4.2 s with 2
# passive ones, the same CPU time. Read when torch loads its OpenMP runtime, so set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from safetensors.torch import load_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModelWithProjection  # noqa: E402

from autotune.shapes.reader import read_scene  # noqa: E402
from autotune.shapes.tokenizer import clip_tokenizer  # noqa: E402
from autotune.shapes.train import encode_all, log, lr_at, optimizer_step, replace_folder, store_half  # noqa: E402
from autotune.shapes.world import caption, random_scene, render_array, world  # noqa: E402

WORLD_VERSION = 2
VAE_DIR = Path(__file__).resolve().parent / "weights" / "shapes" / "vae"  # the UNet shapes model's VAE, reused
T5_ROWS = 256  # StableDiffusion3Pipeline's default max_sequence_length: the zero rows that stand for T5
WEIGHT_FILES = {"transformer": "transformer/diffusion_pytorch_model.safetensors",
                "text_encoder": "text_encoder/model.safetensors", "text_encoder_2": "text_encoder_2/model.safetensors"}
HALF_STORED = tuple(WEIGHT_FILES.values())
ARCHITECTURE = ("patch_size", "layers", "heads", "head_dim", "qk_norm", "text_dim", "text_dim_2", "text_layers",
                "text_projection", "text_projection_2")
# Settings added after runs had begun, with the value that continues them as they were.
ADDED_SETTINGS = {"partial_captions": 0.0, "init_from": None}
# Settings that may differ between a run and its continuation (they do not change the weights).
RESUME_FREE = ("out", "state", "threads", "save_every", "stop_after", "measure_samples", "measure_steps", "log_every",
               "guidance", "shift")


class RepeatedTokenJointAttnProcessor:
    """diffusers' `JointAttnProcessor2_0`, where the last context token stands for `repeat` identical copies of
    itself: its attention logit (as a key) is raised by log(repeat). Exact for identical rows; used in training only."""

    def __init__(self, repeat: int):
        self.repeat = int(repeat)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        batch, n_image = hidden_states.shape[0], hidden_states.shape[1]

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        query, key, value = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(
            attn.to_v(hidden_states))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        c_query, c_key, c_value = (heads(attn.add_q_proj(encoder_hidden_states)),
                                   heads(attn.add_k_proj(encoder_hidden_states)),
                                   heads(attn.add_v_proj(encoder_hidden_states)))
        if attn.norm_added_q is not None:
            c_query = attn.norm_added_q(c_query)
        if attn.norm_added_k is not None:
            c_key = attn.norm_added_k(c_key)
        query = torch.cat([query, c_query], dim=2)
        key = torch.cat([key, c_key], dim=2)
        value = torch.cat([value, c_value], dim=2)
        bias = torch.zeros(key.shape[2], dtype=query.dtype, device=query.device)
        bias[-1] = math.log(self.repeat)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias.view(1, 1, 1, -1), dropout_p=0.0,
                                             is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * query.shape[-1]).to(query.dtype)
        hidden_states, encoder_hidden_states = out[:, :n_image], out[:, n_image:]
        if not attn.context_pre_only:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        return hidden_states, encoder_hidden_states


# ---------------------------------------------------------------------------------------------------------------------
# Models


def build_text_encoder(dim: int, layers: int, projection: int) -> CLIPTextModelWithProjection:
    config = CLIPTextConfig(vocab_size=49408, hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=layers,
                            num_attention_heads=4, max_position_embeddings=77, projection_dim=projection,
                            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    return CLIPTextModelWithProjection(config)


def build_transformer(args: argparse.Namespace, latent: int, latent_channels: int) -> SD3Transformer2DModel:
    """The SD3 transformer, initialised as DiT's adaLN-Zero (Peebles & Xie 2023): every modulation layer and the
    output projection start at zero, so each block starts as the identity (diffusers leaves them random, as it
    expects trained weights); DiT found this the best-converging initialisation."""
    transformer = SD3Transformer2DModel(
        sample_size=latent, patch_size=args.patch_size, in_channels=latent_channels, out_channels=latent_channels,
        num_layers=args.layers, attention_head_dim=args.head_dim, num_attention_heads=args.heads,
        joint_attention_dim=args.text_dim + args.text_dim_2, caption_projection_dim=args.heads * args.head_dim,
        pooled_projection_dim=args.text_projection + args.text_projection_2,
        pos_embed_max_size=latent // args.patch_size,
        qk_norm=args.qk_norm or None,
    )
    with torch.no_grad():
        layers = [transformer.norm_out.linear, transformer.proj_out]
        for block in transformer.transformer_blocks:
            layers += [block.norm1.linear, block.norm1_context.linear]
        for layer in layers:
            layer.weight.zero_()
            layer.bias.zero_()
    return transformer


def zero_t5(dim: int):
    """A placeholder T5 text encoder (`T5EncoderModel`) whose output is exactly zero, and a small `T5TokenizerFast`
    (a Unigram model of characters, built offline): the rows `StableDiffusion3Pipeline` uses when T5 is dropped."""
    import string
    import tempfile

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5Config, T5EncoderModel, T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_lowercase + string.digits + string.punctuation]
    pieces += [("\u2581" + c, -3.5) for c in string.ascii_lowercase]
    bpe = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    bpe.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    with tempfile.TemporaryDirectory() as tmp:
        bpe.save(str(Path(tmp) / "tokenizer.json"))
        tokenizer = T5TokenizerFast(tokenizer_file=str(Path(tmp) / "tokenizer.json"), extra_ids=0, pad_token="<pad>",
                                    eos_token="</s>", unk_token="<unk>")
    config = T5Config(vocab_size=len(pieces), d_model=dim, d_kv=8, d_ff=8, num_layers=1, num_heads=1,
                      relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    generator = torch.random.get_rng_state()
    torch.manual_seed(0)  # its (irrelevant) weights never touch the training's random stream
    model = T5EncoderModel(config).eval()
    torch.random.set_rng_state(generator)
    with torch.no_grad():
        model.encoder.final_layer_norm.weight.zero_()  # RMS norm times 0: every output row is exactly 0
    return model, tokenizer


def encode_text(text_encoder, text_encoder_2, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(77 CLIP rows, pooled) exactly as `StableDiffusion3Pipeline.encode_prompt` computes them without T5:
    the penultimate hidden states of both encoders side by side, their projected pooled outputs side by side."""
    one = text_encoder(ids, output_hidden_states=True)
    two = text_encoder_2(ids, output_hidden_states=True)
    return (torch.cat([one.hidden_states[-2], two.hidden_states[-2]], dim=-1),
            torch.cat([one.text_embeds, two.text_embeds], dim=-1))


def velocity(transformer, noisy: torch.Tensor, sigma: torch.Tensor, rows: torch.Tensor, pooled: torch.Tensor,
             t5_rows: int = T5_ROWS) -> torch.Tensor:
    """The transformer's velocity for the pipeline's conditioning, with the `t5_rows` zero rows as one (see module
    docstring); the caller has set `RepeatedTokenJointAttnProcessor(t5_rows)` on the transformer."""
    zero = torch.zeros(rows.shape[0], 1, rows.shape[-1], dtype=rows.dtype)
    return transformer(hidden_states=noisy, timestep=sigma * 1000.0, encoder_hidden_states=torch.cat([rows, zero], 1),
                       pooled_projections=pooled).sample


def flow_loss(transformer, text_encoder, text_encoder_2, latents: torch.Tensor, tokens: torch.Tensor,
              noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The rectified-flow objective: on the straight path x_sigma = (1 - sigma) x_0 + sigma noise, the model's
    velocity should be noise - x_0 (what `FlowMatchEulerDiscreteScheduler` integrates); mean squared error. The text
    encoders are trained with the transformer, through the conditioning the pipeline builds."""
    s = sigma.view(-1, 1, 1, 1)
    noisy = (1 - s) * latents + s * noise
    rows, pooled = encode_text(text_encoder, text_encoder_2, tokens)
    return F.mse_loss(velocity(transformer, noisy, sigma, rows, pooled), noise - latents)


def learning_rate(step: int, args: argparse.Namespace) -> float:
    """Linear warmup, then constant (the default: with the EMA it needs no decay, and a run can be extended) or
    cosine down to 10% at `--steps` (`train.lr_at`). A constant run may end with `--cooldown` steps of linear decay
    to zero (warmup-stable-decay: a finished run extended with a cooldown, without restarting it)."""
    if args.lr_schedule == "cosine":
        return lr_at(step, args.steps, args.lr, args.warmup)
    lr = args.lr * min(1.0, (step + 1) / max(args.warmup, 1))
    if args.cooldown and step >= args.steps - args.cooldown:
        lr *= (args.steps - step) / args.cooldown
    return lr


def training_tokens(idx: torch.Tensor, ids: torch.Tensor, partial: tuple[torch.Tensor, torch.Tensor] | None,
                    empty: torch.Tensor, args: argparse.Namespace, gen: torch.Generator) -> torch.Tensor:
    """The captions of a batch: some with an object unsaid (`--partial-captions`), some dropped to the empty
    caption (`--caption-dropout`, the unconditional branch guidance works against)."""
    tokens = ids[idx].clone()
    if args.partial_captions:  # drawn only when asked: runs without it keep their random stream
        partial_ids, has_partial = partial
        unsaid = (torch.rand(len(idx), generator=gen) < args.partial_captions) & has_partial[idx]
        tokens[unsaid] = partial_ids[idx][unsaid]
    tokens[torch.rand(len(idx), generator=gen) < args.caption_dropout] = empty
    return tokens


def sample_sigmas(n: int, args: argparse.Namespace, gen: torch.Generator) -> torch.Tensor:
    """Noise levels in (0, 1): logit-normal (SD3's default, mean `--logit-mean`, std `--logit-std`), or uniform."""
    if args.timesteps == "uniform":
        return torch.rand(n, generator=gen)
    return torch.sigmoid(torch.randn(n, generator=gen) * args.logit_std + args.logit_mean)


# ---------------------------------------------------------------------------------------------------------------------
# Data


def scenes_of(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [random_scene(rng, version=WORLD_VERSION) for _ in range(n)]


def render_scenes(n: int, seed: int) -> tuple[np.ndarray, list]:
    scenes = scenes_of(n, seed)
    return np.stack([render_array(s) for s in scenes]), scenes


def partial_caption_ids(args: argparse.Namespace, ids: torch.Tensor, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """For `--partial-captions`: each training scene's caption with one of its objects (drawn at random) left
    unsaid, as token ids, and which scenes have such a caption (two or more objects). Checked against the cached
    full captions, so that the two always describe the same scenes."""
    scenes = scenes_of(args.n_images, args.seed)
    full = tokenizer([caption(s) for s in scenes], padding="max_length", max_length=77, truncation=True,
                     return_tensors="pt").input_ids
    if not torch.equal(full, ids):
        raise SystemExit("the cached training captions are not those of --seed and --n-images; remove the state "
                         "folder's data.pt to render the data again")
    rng = np.random.default_rng([args.seed, 24])
    texts, has = [], []
    for scene in scenes:
        has.append(len(scene.objects) >= 2)
        gone = int(rng.integers(len(scene.objects)))
        kept = [o for i, o in enumerate(scene.objects) if i != gone] if has[-1] else scene.objects
        texts.append(caption(scene.with_objects(kept)))
    partial = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    return partial, torch.tensor(has)


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def vae_round_trip(vae: AutoencoderKL, pixels: np.ndarray, scenes: list) -> dict[str, float]:
    """Share of scenes the reader reads back exactly after encode/decode (latent means), and the mean PSNR."""
    ok, psnrs = 0, []
    for start in range(0, len(scenes), 100):
        chunk = pixels[start : start + 100]
        decoded = vae.decode(vae.encode(to_tensor(chunk)).latent_dist.mean).sample
        images = ((decoded.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
        for image, source, scene in zip(images, chunk, scenes[start : start + 100]):
            read = read_scene(image, version=WORLD_VERSION)
            ok += read.background == scene.background and read.attributes() == [
                (o.color, o.shape) for o in scene.objects]
            psnrs.append(10 * math.log10(1.0 / max(float(((image - source / 255.0) ** 2).mean()), 1e-10)))
    return {"read_back_exactly": ok / len(scenes), "psnr_db": float(np.mean(psnrs)), "scenes": len(scenes)}


def prepare_data(args: argparse.Namespace, vae: AutoencoderKL, state: Path) -> dict:
    """Latent means and stds of `--n-images` scenes, caption token ids, shift and scaling factors, and the VAE's
    round trip on fresh scenes; cached in the state folder (the key covers the data settings and the VAE)."""
    vae_digest = hashlib.sha256((Path(args.vae) / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()
    key = {"n_images": args.n_images, "seed": args.seed, "world_version": WORLD_VERSION, "vae": vae_digest,
           "vae_check": args.vae_check}
    path = state / "data.pt"
    if path.is_file():
        data = torch.load(path, weights_only=True)  # plain tensors and numbers: no pickled code
        if data.get("key") == key:
            log(f"data: {len(data['ids'])} encoded scenes from {path}")
            return data
    start = time.time()
    pixels, scenes = render_scenes(args.n_images, args.seed)
    log(f"rendered {len(scenes)} world-version-{WORLD_VERSION} scenes; encoding with the shapes VAE")
    means, stds = [], []
    for begin in range(0, len(pixels), 2000):
        m, s = encode_all(vae, to_tensor(pixels[begin : begin + 2000]))
        means.append(m)
        stds.append(s)
        log(f"encoded {min(begin + 2000, len(pixels))} / {len(pixels)} ({time.time() - start:.0f}s)")
    means, stds = torch.cat(means), torch.cat(stds)
    tokenizer = clip_tokenizer()
    ids = tokenizer([caption(s) for s in scenes], padding="max_length", max_length=77, truncation=True,
                    return_tensors="pt").input_ids
    # SD3's convention: latents = (z - shift_factor) * scaling_factor, zero mean and unit variance over the data.
    shift = float(means.mean())
    scale = float(1.0 / (means - shift).std())
    check_pixels, check_scenes = render_scenes(args.vae_check, args.seed + 10_000)  # fresh scenes, not trained on
    round_trip = vae_round_trip(vae, check_pixels, check_scenes)
    data = {"key": key, "means": means, "stds": stds, "ids": ids, "shift_factor": shift, "scaling_factor": scale,
            "vae_round_trip": round_trip, "seconds": time.time() - start}
    state.mkdir(parents=True, exist_ok=True)
    torch.save(data, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)
    log(f"latents {tuple(means.shape[1:])}, shift {shift:.4f}, scaling {scale:.4f}; VAE round trip on "
        f"{args.vae_check} fresh scenes: read back {round_trip['read_back_exactly']:.1%}, "
        f"{round_trip['psnr_db']:.2f} dB")
    return data


# ---------------------------------------------------------------------------------------------------------------------
# Training state


def settings_of(args: argparse.Namespace, everything: bool = False) -> dict:
    """The settings a checkpoint must share with its continuation (all but where to write, how often, how many
    threads, the inference-only shift and guidance, and under a constant learning rate the number of steps: a
    finished run can be extended), or with `everything`, all but the folders (the VAE's is recorded apart, relative
    to the package, so that no path of the training machine ships)."""
    free = RESUME_FREE + ("cooldown",) + (("steps",) if args.lr_schedule == "constant" else ())
    skip = ("out", "state", "vae", "init_from") if everything else free
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items() if k not in skip}


def default_state(out: Path) -> Path:
    """`.autotune/train-<name>` in the working directory (the project folder of `autotune tune`): never inside the
    package, where the model is written, whose weights/ folder is package data."""
    return Path(".autotune") / f"train-{out.name}"


def save_checkpoint(path: Path, step: int, models: dict, ema: list[torch.Tensor], opt, gen: torch.Generator,
                    extra: dict) -> None:
    state = {"step": step, "models": {k: m.state_dict() for k, m in models.items()}, "ema": ema,
             "optimizer": opt.state_dict(), "generator": gen.get_state(), **extra}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


class StopFlag:
    """Set by SIGINT / SIGTERM: the loop finishes the step under way, saves a checkpoint and exits."""

    def __init__(self):
        self.raised = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._set)
        return self

    def _set(self, signum, frame):
        self.raised = True
        log(f"signal {signum}: stopping after this step, with a checkpoint")

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def read_init(args: argparse.Namespace) -> dict:
    """The `training.json` of the `--init-from` folder, checked before any work: it must be a folder this script
    wrote, of this run's architecture."""
    folder = Path(args.init_from)
    meta_path = folder / "training.json"
    if not meta_path.is_file():
        raise SystemExit(f"--init-from {folder}: no training.json there; pass a folder written by `autotune shapes "
                         "train-flow` (e.g. autotune/shapes/weights/shapes-flow)")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    differ = [k for k in ARCHITECTURE if meta["args"].get(k) != getattr(args, k)]
    if differ:
        raise SystemExit(f"--init-from {folder}: its architecture differs from this run's ("
                         + ", ".join(f"--{k.replace('_', '-')} {meta['args'].get(k)!r}" for k in differ)
                         + "); pass those")
    return meta


def load_init(folder: Path, meta: dict, models: dict, data: dict) -> dict:
    """Start from a model this script wrote (a fine-tune: its weights, a fresh optimizer), if it was trained on the
    same latents. Returns what `training.json` records of it, so that the budget counts both runs."""
    vae = meta["vae"]  # the same data encoded again agrees to about 1e-7, not bit for bit (summation order)
    if not all(math.isclose(vae[k], data[k], rel_tol=1e-4) for k in ("shift_factor", "scaling_factor")):
        raise SystemExit(f"--init-from {folder}: it was trained on other latents (shift and scaling factors differ); "
                         f"pass its --seed {meta['args']['seed']} and --n-images {meta['args']['n_images']}")
    for name, model in models.items():
        model.load_state_dict(load_file(folder / WEIGHT_FILES[name]))  # float16 on disk, float32 to train
    transformer = (folder / WEIGHT_FILES["transformer"]).read_bytes()
    log(f"starting from {folder} ({meta['steps_done']} steps)")
    return {"model": folder.name, "transformer_sha256": hashlib.sha256(transformer).hexdigest(),
            "steps_done": meta["steps_done"], "wall_time_minutes": meta["wall_time_minutes"],
            "training_cpu_minutes": meta["training_cpu_minutes"]}


# ---------------------------------------------------------------------------------------------------------------------
# Output


def build_pipeline(vae, transformer, text_encoder, text_encoder_2, shift: float) -> StableDiffusion3Pipeline:
    tokenizer = clip_tokenizer()
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    text_encoder_3, tokenizer_3 = zero_t5(transformer.config.joint_attention_dim)
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                                    tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer,
                                    text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)


def save_pipeline(out: Path, pipe: StableDiffusion3Pipeline, meta: dict) -> None:
    """Write the pipeline folder atomically (temp folder, then rename); transformer and text encoders as float16."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    store_half(tmp, HALF_STORED)
    write_meta(tmp, meta)
    replace_folder(tmp, out)


def write_meta(folder: Path, meta: dict) -> None:
    path = Path(folder) / "training.json"
    path.with_suffix(".tmp").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(path.with_suffix(".tmp"), path)


def folder_megabytes(folder: Path) -> float:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 1e6


# ---------------------------------------------------------------------------------------------------------------------
# Training


Measure = Callable[..., tuple[str, dict]]


def train(args: argparse.Namespace, measure: Measure | None = None) -> Path:
    """Train (or continue) the model and write its pipeline folder; then, given `measure` (the benchmark layer's
    `autotune.bench.shapes_model.measure_flow`, passed in by `autotune shapes train-flow`: this layer cannot import
    it) and `--measure-samples` > 0, measure text to image and record the figures in `training.json`."""
    from tqdm import tqdm

    if not 0 <= args.partial_captions < 1:
        raise SystemExit(f"--partial-captions {args.partial_captions}: a share of captions, from 0 (none) to below 1")
    if args.cooldown and (args.lr_schedule != "constant" or not 0 < args.cooldown <= args.steps - args.warmup):
        raise SystemExit(f"--cooldown {args.cooldown}: a cooldown ends a constant schedule, so it needs --lr-schedule "
                         f"constant and at most --steps minus --warmup ({args.steps - args.warmup}) steps")
    out = Path(args.out)
    if args.init_from and Path(args.init_from).resolve() == out.resolve():
        raise SystemExit(f"--init-from {args.init_from} is also --out: write the fine-tune to another folder (a "
                         "stopped run continues from the folder it started from), then move it")
    init_meta = read_init(args) if args.init_from else None
    torch.set_num_threads(args.threads)
    state = Path(args.state) if args.state else default_state(out)
    state.mkdir(parents=True, exist_ok=True)
    session_start = time.time()

    vae = AutoencoderKL.from_pretrained(args.vae).eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    data = prepare_data(args, vae, state)
    means, stds, ids = data["means"], data["stds"], data["ids"]
    shift, scale = data["shift_factor"], data["scaling_factor"]
    tokenizer = clip_tokenizer()
    empty = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids[0]
    partial = partial_caption_ids(args, ids, tokenizer) if args.partial_captions else None

    torch.manual_seed(args.seed)
    text_encoder = build_text_encoder(args.text_dim, args.text_layers, args.text_projection)
    text_encoder_2 = build_text_encoder(args.text_dim_2, args.text_layers, args.text_projection_2)
    transformer = build_transformer(args, means.shape[-1], means.shape[1])
    models = {"transformer": transformer, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2}
    init = load_init(Path(args.init_from), init_meta, models, data) if init_meta else None
    params = [p for m in models.values() for p in m.parameters()]
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW([
        {"params": list(transformer.parameters()), "weight_decay": args.weight_decay},
        {"params": list(text_encoder.parameters()) + list(text_encoder_2.parameters()), "weight_decay": 0.0},
    ], lr=args.lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(args.seed)
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}

    checkpoint = state / "checkpoint.pt"
    step, loss_avg, history, seconds_before, cpu_before = 0, None, [], 0.0, 0.0
    if checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=True)
        before, now = {**ADDED_SETTINGS, **saved["settings"]}, settings_of(args)
        if before != now:
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            raise SystemExit(f"{checkpoint} was made with other settings ({', '.join(changed)}); rerun with the same "
                             f"arguments to continue it, or remove {state} to start again")
        for k, m in models.items():
            m.load_state_dict(saved["models"][k])
        for e, v in zip(ema, saved["ema"]):
            e.copy_(v)
        opt.load_state_dict(saved["optimizer"])
        gen.set_state(saved["generator"])
        step, loss_avg, history = saved["step"], saved["loss_avg"], saved["history"]
        seconds_before, cpu_before = saved["train_seconds"], saved["train_cpu_seconds"]
        log(f"resumed from {checkpoint} at step {step} of {args.steps}")
    else:
        log("models: " + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in counts.items())
            + f"; {args.steps} steps of batch {args.batch}")

    def snapshot(at: int) -> None:
        save_checkpoint(checkpoint, at, models, ema, opt, gen,
                        {"settings": settings_of(args), "loss_avg": loss_avg, "history": history,
                         "train_seconds": seconds_before + time.time() - t0,
                         "train_cpu_seconds": cpu_before + time.process_time() - c0})

    transformer.set_attn_processor(RepeatedTokenJointAttnProcessor(T5_ROWS))
    for m in models.values():
        m.train()
    t0, c0 = time.time(), time.process_time()  # wall and CPU time: on a shared machine they tell different things
    first = step
    bar = tqdm(total=args.steps, initial=step, desc="shapes-flow", unit="step", mininterval=10, dynamic_ncols=True)
    with StopFlag() as stop:
        while step < args.steps:
            lr = learning_rate(step, args)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = torch.randint(0, len(means), (args.batch,), generator=gen)
            latents = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen) - shift) * scale
            tokens = training_tokens(idx, ids, partial, empty, args, gen)
            noise = torch.randn(latents.shape, generator=gen)
            sigma = sample_sigmas(args.batch, args, gen)
            loss = flow_loss(transformer, text_encoder, text_encoder_2, latents, tokens, noise, sigma)
            optimizer_step(opt, loss, params, ema, step, args.ema)
            loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_avg:.4f}", lr=f"{lr:.1e}", refresh=False)
            if step % args.log_every == 0 or step == args.steps:
                rate = (step - first) / (time.time() - t0)
                history.append([step, round(loss_avg, 5)])
                log(f"step {step} loss {loss_avg:.4f} lr {lr:.2e} {rate:.2f} steps/s, "
                    f"eta {(args.steps - step) / rate / 60:.1f} min")
            stopping = stop.raised or (args.stop_after is not None and step >= args.stop_after)
            if step < args.steps and ((args.save_every and step % args.save_every == 0) or stopping):
                snapshot(step)
                if stopping:
                    bar.close()
                    log(f"stopped at step {step}; rerun the same command to continue")
                    return state
    bar.close()
    train_seconds = seconds_before + time.time() - t0
    train_cpu = cpu_before + time.process_time() - c0
    if step > first:
        snapshot(step)  # the finished state, so that a crash while measuring does not cost the training

    # The EMA weights, with diffusers' own attention processor: the shipped model runs exactly as an SD3 checkpoint.
    for p, e in zip(params, ema):
        p.data.copy_(e)
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    transformer.set_attn_processor(JointAttnProcessor2_0())
    for m in models.values():
        m.eval()
    vae.register_to_config(shift_factor=shift, scaling_factor=scale, sample_size=world(WORLD_VERSION).size)
    pipe = build_pipeline(vae, transformer, text_encoder, text_encoder_2, args.shift)
    meta = {
        "model": "shapes-flow", "format": "StableDiffusion3Pipeline", "world_version": WORLD_VERSION,
        "seed": args.seed, "args": settings_of(args, everything=True), "parameters": counts,
        "vae": {"from": "autotune/shapes/weights/shapes/vae (weights unchanged)", "shift_factor": shift,
                "scaling_factor": scale, "round_trip": data["vae_round_trip"]},
        "steps_done": step, "loss_history": history,
        "wall_time_minutes": {"data": round(data["seconds"] / 60, 1), "training": round(train_seconds / 60, 1)},
        # CPU time of the training process over all its threads: divided by the threads, the wall time the
        # training takes on an otherwise idle machine.
        "training_cpu_minutes": round(train_cpu / 60, 1), "threads": args.threads,
        "t5_rows_trained_for": T5_ROWS,
    }
    if init:
        meta["init_from"] = init
    save_pipeline(out, pipe, meta)
    log(f"wrote {out} ({folder_megabytes(out):.1f} MB)")

    if measure is not None and args.measure_samples > 0:
        measure_start = time.time()
        report, figures = measure(out, args.measure_samples, args.measure_steps, seed=0, guidance=args.guidance)
        print(report, flush=True)
        meta["text_to_image"] = figures
        meta["wall_time_minutes"]["measure"] = round((time.time() - measure_start) / 60, 1)
    elif args.measure_samples > 0:
        log(f"not measured here; measure with `autotune shapes measure --model {out} --record`")
    meta["megabytes"] = round(folder_megabytes(out), 2)
    write_meta(out, meta)
    log(f"done: training {train_seconds / 60:.1f} min in all; this session {(time.time() - session_start) / 60:.1f} "
        "min")
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output pipeline folder")
    p.add_argument("--state", help="resumable state folder (default: ./.autotune/train-<name of --out>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae", default=str(VAE_DIR), help="the AutoencoderKL to reuse (frozen)")
    p.add_argument("--n-images", type=int, default=30000)
    p.add_argument("--vae-check", type=int, default=400, help="fresh scenes for the VAE round-trip figures")
    p.add_argument("--patch-size", type=int, default=2,
                   help="2 (SD3's): 8 x 8 image tokens and attention maps; 1: 16 x 16 at 2.5 times the cost")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--qk-norm", default="rms_norm", help="SD3.5's query-key normalisation; '' for none (SD3.0)")
    p.add_argument("--text-dim", type=int, default=64, help="width of the first CLIP text encoder")
    p.add_argument("--text-dim-2", type=int, default=32, help="width of the second CLIP text encoder")
    p.add_argument("--text-layers", type=int, default=3, help="SD3 reads the penultimate layer")
    p.add_argument("--text-projection", type=int, default=64, help="pooled projection of the first encoder")
    p.add_argument("--text-projection-2", type=int, default=32)
    p.add_argument("--steps", type=int, default=12000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant")
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--cooldown", type=int, default=0,
                   help="constant schedule only: decay linearly to zero over the last N steps (0: no decay)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--partial-captions", type=float, default=0.0,
                   help="share of multi-object scenes whose training caption leaves one object unsaid, as web "
                        "alt-text under-describes its image (docs/shapes.md); 0: every caption names every object")
    p.add_argument("--init-from", help="a folder this command wrote: start from its weights (a fine-tune, with a "
                                       "fresh optimizer; the same architecture and data)")
    p.add_argument("--timesteps", choices=("logit-normal", "uniform"), default="logit-normal")
    p.add_argument("--logit-mean", type=float, default=0.0)
    p.add_argument("--logit-std", type=float, default=1.0)
    p.add_argument("--shift", type=float, default=1.0, help="the inference scheduler's timestep shift")
    p.add_argument("--guidance", type=float, default=7.0, help="the default guidance the measurement uses")
    p.add_argument("--save-every", type=int, default=250, help="checkpoint every N steps")
    p.add_argument("--stop-after", type=int, help="stop (with a checkpoint) after this step, as if interrupted")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--measure-samples", type=int, default=200, help="text-to-image samples per guidance; 0: none")
    p.add_argument("--measure-steps", type=int, default=28)
    p.add_argument("--threads", type=int, default=2)
    return p


def main(argv: list[str] | None = None, measure: Measure | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    train(parser().parse_args(argv), measure)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
