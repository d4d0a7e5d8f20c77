"""Cheap features of one edit, for predicting its guidance setting: what a model family's `task_features` returns.

Everything here comes from what an edit computes anyway or from the editing model itself (no other weights):

- `text.*`: the model's own text encoder on the source and target prompts, pooled (CLIP's end-of-text vector on Stable
  Diffusion 1.x/2.x, the second encoder's pooled projection on SDXL, the pipelines' pooled projection on SD3 and
  FLUX.1): the cosine between them, the length of their difference, and the difference itself (`text.diff.0`, ...),
  which a predictor reduces to a few components;
- `words.*`: the edit's word alignment (difflib on the normalised words of the two prompts): words replaced,
  inserted and deleted, the prompts' lengths, and whether Prompt-to-Prompt could swap words one for one
  (`words.swappable`: same word count, its `replace` mode) or must refine;
- `latent.*`: the source image's VAE latent, which the edit encodes anyway: each channel's mean and standard
  deviation, and the mean absolute difference between neighbouring latent pixels (how busy the image is);
- `inversion.*` (families that invert, when asked for a probe setting): DDIM inversion at the probe's source guidance
  (cached, so an edit at that w_src reuses it), then reconstruction from the inverted noise: its error relative to the
  latent's variance, and the inverted noise's standard deviation.

Features are named, in a fixed order per model, so a predictor stores the names it was fitted on and refuses others.
"""

from __future__ import annotations

import difflib

import torch

from autotune.task import normalise_word

GROUPS = ("text", "words", "latent", "inversion")


def group_of(name: str) -> str:
    """The group of a feature name (`text.diff.3` -> `text`)."""
    return name.split(".", 1)[0]


def text_features(source: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Pooled source and target prompt vectors (D,) -> cosine, relative difference length, and the difference."""
    source, target = source.float().flatten().cpu(), target.float().flatten().cpu()
    diff = target - source
    norm = float(source.norm()) or 1.0
    out = {
        "text.cosine": float(torch.nn.functional.cosine_similarity(source, target, dim=0)),
        "text.diff_norm": float(diff.norm()) / norm,
    }
    out.update({f"text.diff.{i}": float(v) / norm for i, v in enumerate(diff.tolist())})
    return out


def word_features(source_prompt: str, target_prompt: str) -> dict[str, float]:
    """How the target prompt's words differ from the source's (difflib's alignment of normalised words)."""
    src = [w for w in (normalise_word(x) for x in source_prompt.split()) if w]
    tgt = [w for w in (normalise_word(x) for x in target_prompt.split()) if w]
    replaced = inserted = deleted = 0
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=src, b=tgt, autojunk=False).get_opcodes():
        if op == "replace":
            common = min(i2 - i1, j2 - j1)
            replaced += common
            inserted += (j2 - j1) - common
            deleted += (i2 - i1) - common
        elif op == "insert":
            inserted += j2 - j1
        elif op == "delete":
            deleted += i2 - i1
    return {
        "words.replaced": float(replaced),
        "words.inserted": float(inserted),
        "words.deleted": float(deleted),
        "words.source": float(len(src)),
        "words.target": float(len(tgt)),
        "words.swappable": float(len(src) == len(tgt)),
    }


def latent_features(latent: torch.Tensor) -> dict[str, float]:
    """A (C, h, w) latent -> per-channel mean and standard deviation, and its mean neighbour difference."""
    x = latent.float().cpu()
    out: dict[str, float] = {}
    for c in range(x.shape[0]):
        out[f"latent.mean.{c}"] = float(x[c].mean())
        out[f"latent.std.{c}"] = float(x[c].std(unbiased=False))
    dx = (x[:, :, 1:] - x[:, :, :-1]).abs().mean() if x.shape[2] > 1 else torch.tensor(0.0)
    dy = (x[:, 1:, :] - x[:, :-1, :]).abs().mean() if x.shape[1] > 1 else torch.tensor(0.0)
    out["latent.busy"] = float((dx + dy) / 2)
    return out


def inversion_features(latent: torch.Tensor, noise: torch.Tensor, reconstruction: torch.Tensor) -> dict[str, float]:
    """The inversion at the probe's guidance: reconstruction error relative to the latent's variance, noise spread."""
    latent, noise, reconstruction = latent.float().cpu(), noise.float().cpu(), reconstruction.float().cpu()
    variance = float(latent.var(unbiased=False)) or 1.0
    return {
        "inversion.error": float(((reconstruction - latent) ** 2).mean()) / variance,
        "inversion.noise_std": float(noise.std(unbiased=False)),
    }
