"""The guided velocity of an SD3 or FLUX.1 transformer: many rows, each with its own prompt and guidance, in one call.

Every sampler of the flow family asks one question per step: the velocity v(x, sigma) of each row under its prompt
at its guidance scale. How a scale acts depends on the model:

- SD3 and FLUX.1-schnell: classifier-free guidance, v = v_uncond + w (v_cond - v_uncond), the unconditional
  velocity taken under the empty prompt (as the pipelines' default negative prompt). A row at w = 1 needs only its
  conditional pass, a row at w = 0 only the unconditional one.
- FLUX.1-dev: guidance-distilled, the scale is an input of the transformer (its guidance embedding); one pass.

All the passes of a step go through the transformer in one batch. Latents are (B, C, h, w) everywhere; FLUX.1's
2x2 packing is done here, at the transformer's door. Inputs and outputs are float32 (the samplers integrate in
float32, as FlowEdit's official code does); the transformer runs in the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from autotune.engine.flow.loading import FlowComponents


@dataclass(frozen=True)
class Prompt:
    """A prompt as the transformer reads it: token embeddings (1, L, D) and the pooled vector (1, P)."""

    text: str
    tokens: torch.Tensor
    pooled: torch.Tensor


class GuidedVelocity:
    """The velocity field of one loaded checkpoint under guidance (see the module docstring)."""

    def __init__(self, components: FlowComponents) -> None:
        self.components = components
        self._prompts: dict[str, Prompt] = {}

    @property
    def embedded(self) -> bool:
        return self.components.guidance_embedded

    @torch.no_grad()
    def encode(self, text: str) -> Prompt:
        """The pipeline's own text encoding of `text` (cached per text)."""
        if text not in self._prompts:
            c = self.components
            if c.architecture == "sd3":
                tokens, _, pooled, _ = c.pipe.encode_prompt(prompt=text, prompt_2=None, prompt_3=None,
                                                            device=c.device, do_classifier_free_guidance=False,
                                                            max_sequence_length=c.max_sequence_length)
            else:
                tokens, pooled, _ = c.pipe.encode_prompt(prompt=text, prompt_2=None, device=c.device,
                                                         max_sequence_length=c.max_sequence_length)
            self._prompts[text] = Prompt(text, tokens.to(c.device, c.dtype), pooled.to(c.device, c.dtype))
        return self._prompts[text]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, sigma: float, prompts: list[Prompt], scales: list[float]) -> torch.Tensor:
        """The guided velocity of each row of `x` (B, C, h, w) at noise level `sigma`, row b under `prompts[b]` at
        guidance `scales[b]`: (B, C, h, w), float32."""
        if self.embedded:
            return self._forward(x, sigma, prompts, scales).float()
        empty = self.encode("")
        cond = [b for b, w in enumerate(scales) if w != 0.0]
        uncond = [b for b, w in enumerate(scales) if w != 1.0]
        rows = cond + uncond
        out = self._forward(x[rows], sigma, [prompts[b] for b in cond] + [empty] * len(uncond), None).float()
        v_cond = dict(zip(cond, out[: len(cond)]))
        v_uncond = dict(zip(uncond, out[len(cond):]))
        guided = []
        for b, w in enumerate(scales):
            if w == 1.0:
                guided.append(v_cond[b])
            elif w == 0.0:
                guided.append(v_uncond[b])
            else:
                guided.append(v_uncond[b] + w * (v_cond[b] - v_uncond[b]))
        return torch.stack(guided)

    def _forward(self, x: torch.Tensor, sigma: float, prompts: list[Prompt], guidance: list[float] | None
                 ) -> torch.Tensor:
        """One transformer call on the rows of `x`, each under its prompt (and guidance embedding, FLUX.1-dev)."""
        c = self.components
        batch = x.shape[0]
        tokens = torch.cat([p.tokens for p in prompts])
        pooled = torch.cat([p.pooled for p in prompts])
        x = x.to(c.device, c.dtype)
        if c.architecture == "sd3":
            timestep = torch.full((batch,), sigma * c.scheduler.config.num_train_timesteps, device=c.device)
            return c.transformer(hidden_states=x, timestep=timestep, encoder_hidden_states=tokens,
                                 pooled_projections=pooled, return_dict=False)[0]
        _, channels, h, w = x.shape
        packed = pack(x)
        image_ids = _image_ids(h // 2, w // 2, c.device, c.dtype)
        text_ids = torch.zeros(tokens.shape[1], 3, device=c.device, dtype=c.dtype)
        embedded = torch.tensor(guidance, device=c.device, dtype=torch.float32) if guidance is not None else None
        # FLUX.1's transformer takes sigma as its timestep and scales it (and the guidance) by 1000 itself.
        out = c.transformer(hidden_states=packed, timestep=torch.full((batch,), sigma, device=c.device),
                            guidance=embedded, pooled_projections=pooled, encoder_hidden_states=tokens,
                            txt_ids=text_ids, img_ids=image_ids, return_dict=False)[0]
        return unpack(out, channels, h, w)


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): FLUX.1's 2x2 patches as tokens, row-major."""
    b, c, h, w = latents.shape
    patches = latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, channels: int, h: int, w: int) -> torch.Tensor:
    """The inverse of `pack`."""
    b = tokens.shape[0]
    patches = tokens.reshape(b, h // 2, w // 2, channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(b, channels, h, w)


def _image_ids(rows: int, cols: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """FLUX.1's positions of the packed tokens: (0, row, column) each."""
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return ids.reshape(rows * cols, 3).to(device, dtype)
