"""The prompt side of a UNet call: the text embeddings, and SDXL's added conditions.

Stable Diffusion 1.x/2.x read one CLIP text encoder's last hidden state, (77, D) per prompt. SDXL reads two text
encoders (CLIP ViT-L and OpenCLIP ViT-bigG): their penultimate hidden states concatenated token by token,
(77, 768 + 1280), and, as *added conditions* (`added_cond_kwargs`), the second encoder's pooled, projected embedding
(`text_embeds`) and six micro-conditioning ids (`time_ids`: original size, crop top-left, target size). SDXL's UNet
reads them for every row, in both halves of classifier-free guidance, so each row carries the pooled embedding of its
own prompt: the unconditional rows that of their unconditional prompt (zeros when the checkpoint sets
`force_zeros_for_empty_prompt`, as SDXL base does; the source prompt for negative-prompt inversion).

The size ids are the working image's own size for both sizes and (0, 0) for the crop: what diffusers' SDXL pipelines
pass by default, and the truth for a photo resized, never cropped, to the working size (`autotune.images`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class PromptEmbedding:
    """One prompt as the UNet reads it."""

    tokens: torch.Tensor  # (1, 77, D)
    pooled: torch.Tensor | None = None  # (1, P): SDXL's pooled embedding; None for SD 1.x/2.x


class PromptEncoder:
    """Prompts into `PromptEmbedding`s (cached per prompt), and the added conditions of a batch of rows."""

    def __init__(self, components: Any) -> None:
        self.components = components
        self._cache: dict[str, PromptEmbedding] = {}

    @property
    def sdxl(self) -> bool:
        """Whether the UNet reads added conditions (SDXL's `addition_embed_type="text_time"`)."""
        return self.components.unet.config.get("addition_embed_type") == "text_time"

    @torch.no_grad()
    def embed(self, text: str) -> PromptEmbedding:
        if text not in self._cache:
            self._cache[text] = self._embed_sdxl(text) if self.sdxl else self._embed_sd(text)
        return self._cache[text]

    def null(self) -> PromptEmbedding:
        """The unconditional prompt: the empty prompt, or zeros for an SDXL checkpoint that asks for them."""
        if self.sdxl and self.components.force_zeros_for_empty_prompt:
            empty = self.embed("")
            return PromptEmbedding(torch.zeros_like(empty.tokens), torch.zeros_like(empty.pooled))
        return self.embed("")

    def added(self, uncond_pooled: list[torch.Tensor | None], cond_pooled: list[torch.Tensor | None],
              size: tuple[int, int]) -> dict[str, torch.Tensor] | None:
        """`added_cond_kwargs` for a batch laid out as [unconditional rows; conditional rows], one pooled embedding
        (1, P) per row of each half, for a working image of `size` (height, width) pixels; None for SD 1.x/2.x."""
        if not self.sdxl:
            return None
        pooled = torch.cat([*uncond_pooled, *cond_pooled])  # type: ignore[list-item]
        height, width = size
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=pooled.dtype, device=pooled.device)
        return {"text_embeds": pooled, "time_ids": time_ids.expand(pooled.shape[0], -1)}

    def _embed_sd(self, text: str) -> PromptEmbedding:
        c = self.components
        tok = c.tokenizer
        ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        emb = c.text_encoder(ids.input_ids.to(c.device))[0]
        return PromptEmbedding(emb.to(c.dtype))

    def _embed_sdxl(self, text: str) -> PromptEmbedding:
        c = self.components
        hidden = []
        pooled = None
        for tok, encoder in ((c.tokenizer, c.text_encoder), (c.tokenizer_2, c.text_encoder_2)):
            if encoder is None:  # SDXL checkpoints may leave out the first encoder
                continue
            ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt")
            out = encoder(ids.input_ids.to(c.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])  # SDXL reads the penultimate layer of both encoders
            if encoder is c.text_encoder_2:
                pooled = out.text_embeds
        return PromptEmbedding(torch.cat(hidden, dim=-1).to(c.dtype), pooled.to(c.dtype))  # type: ignore[union-attr]
