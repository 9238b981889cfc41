"""Prompts past CLIP's 77 tokens, encoded whole (`generator.long_prompts: chunk`).

compel's embeddings provider splits a prompt into 77-token windows, each with its own start
and end tokens and cut at a sentence end where one fits, and encodes every window with both
SDXL text encoders (penultimate hidden states, as SDXL does). The windows are concatenated
along the sequence, so the UNet's cross-attention sees every word. The pooled embedding comes
from the first 77 tokens of the second encoder, as in plain SDXL.

Compel's own weighting syntax is never parsed, so brackets, '+' and '-' in real captions stay
text: a text reaches compel as fragments with weights, one fragment of weight 1 unless
`generator.prompt_weighting: a1111` parsed it (synth.prompt_weights). A weight scales its
tokens' embeddings as compel does; the pooled embedding is the plain text's, as in A1111.
A sample's prompt and negative prompt are
padded to the same number of windows with the empty prompt's encoding (compel's own padding);
samples are grouped by that number, so an image never depends on what else is in its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import StableDiffusionXLPipeline

from synth.prompt_weights import Fragments


@dataclass(frozen=True)
class Encoded:
    """One text's encoding: [1, 77 * windows, 2048] token embeddings and the [1, 1280] pooled."""

    embeds: torch.Tensor
    pooled: torch.Tensor
    windows: int


class LongPromptEncoder:
    """Encodes texts of any length with the pipeline's own tokenizers and text encoders."""

    def __init__(self, pipeline: StableDiffusionXLPipeline) -> None:
        from compel.embeddings_provider import EmbeddingsProviderMulti, ReturnedEmbeddingsType

        self.device = pipeline.text_encoder_2.device
        self.window = pipeline.tokenizer.model_max_length  # 77 tokens, start and end included
        # No negative prompt: zero embeddings, unless the model's config says to encode ""
        self.zeros = bool(getattr(pipeline.config, "force_zeros_for_empty_prompt", True))
        self.provider = EmbeddingsProviderMulti(
            tokenizers=[pipeline.tokenizer, pipeline.tokenizer_2],
            text_encoders=[pipeline.text_encoder, pipeline.text_encoder_2],
            truncate=False,
            returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
            requires_pooled_mask=[False, True],
        )

    def encode(self, text: Fragments) -> Encoded:
        """A text's embeddings. Not cached: real captions are many and each long one takes
        77 x windows x 2048 values, so they are encoded once per batch instead."""
        parts, weights = [part for part, _ in text], [weight for _, weight in text]
        with torch.inference_mode():
            embeds = self.provider.get_embeddings_for_weighted_prompt_fragments(
                text_batch=[parts], fragment_weights_batch=[weights], device=self.device
            )
            pooled = self.provider.get_pooled_embeddings(["".join(parts)], device=self.device)
        return Encoded(embeds, pooled, embeds.shape[1] // self.window)

    def windows(self, prompt: Fragments, negative_prompt: Fragments | None) -> int:
        """How many 77-token windows this sample's conditioning takes: from compel's own
        chunking of the token ids (no text encoder runs)."""
        return max(
            len(
                provider.get_token_ids_and_expand_weights(
                    [part for part, _ in text], [weight for _, weight in text], device="cpu"
                )[0]
            )
            // self.window
            for provider in self.provider.embedding_providers
            for text in (prompt, negative_prompt)
            if text is not None
        )

    def conditioning(
        self, prompts: list[Fragments], negative_prompts: list[Fragments | None]
    ) -> dict[str, torch.Tensor]:
        """The pipeline's embedding arguments for a batch whose samples all take the same
        number of windows; each distinct text is encoded once."""
        pairs = list(zip(prompts, negative_prompts, strict=True))
        windows = {self.windows(p, n) for p, n in pairs}
        if len(windows) != 1:
            raise ValueError(f"one batch, one window count; got {sorted(windows)}")
        (count,) = windows
        # Per batch, the padding too: a class LoRA may act on the text encoders.
        empty: Fragments = (("", 1.0),)
        texts = {*prompts, *(n for n in negative_prompts if n is not None), empty}
        encoded = {text: self.encode(text) for text in texts}

        def padded(text: Fragments) -> torch.Tensor:
            pad = [encoded[empty].embeds] * (count - encoded[text].windows)
            return torch.cat([encoded[text].embeds, *pad], dim=1)

        def negative(
            text: Fragments | None, prompt: Fragments
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if text is None and not self.zeros:
                text = empty
            if text is None:  # as SDXL's force_zeros_for_empty_prompt does
                return torch.zeros_like(padded(prompt)), torch.zeros_like(encoded[prompt].pooled)
            return padded(text), encoded[text].pooled

        negatives = [negative(n, p) for p, n in pairs]
        return {
            "prompt_embeds": torch.cat([padded(p) for p in prompts]),
            "pooled_prompt_embeds": torch.cat([encoded[p].pooled for p in prompts]),
            "negative_prompt_embeds": torch.cat([embeds for embeds, _ in negatives]),
            "negative_pooled_prompt_embeds": torch.cat([pooled for _, pooled in negatives]),
        }
