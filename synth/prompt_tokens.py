"""What CLIP encodes of a prompt. SDXL's two text encoders see at most 77 tokens, start and
end included; diffusers cuts anything longer without a word, so two prompts that differ only
past that point make the same image while the provenance records different text. Here a
prompt is either refused (naming it and its token count) or cut after the last whole word
that fits, and the cut text is what is rendered and recorded. Torch-free:
tokenizers only, so `synth validate` can check prompts without loading a model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

from synth.errors import SpecError


class Tokenizer(Protocol):
    model_max_length: int

    def __call__(
        self, text: str, add_special_tokens: bool = ..., verbose: bool = ...
    ) -> object: ...


def load_tokenizers(model_folder: Path) -> list[Tokenizer]:
    """The pipeline's two CLIP tokenizers, from a diffusers folder."""
    from transformers import CLIPTokenizer

    return [
        CLIPTokenizer.from_pretrained(str(model_folder), subfolder=name)
        for name in ("tokenizer", "tokenizer_2")
        if (model_folder / name).is_dir()
    ]


def encoded_prompt(text: str, tokenizers: Sequence[Tokenizer]) -> tuple[str, int, int]:
    """The longest start of the prompt, cut after a whole word, that every encoder keeps
    whole; its full length in tokens; and the most an encoder keeps (start and end
    excluded). Rendering the cut text itself means the row records exactly what was encoded,
    which plain diffusers then reproduces."""
    room = min(t.model_max_length for t in tokenizers) - 2

    def length(prefix: str) -> int:
        return max(
            len(t(prefix, add_special_tokens=False, verbose=False).input_ids) for t in tokenizers
        )

    full = length(text)
    if full <= room:
        return text, full, room
    ends = [match.end() for match in re.finditer(r"\S+", text)]
    if length(text[: ends[0]]) > room:  # one enormous word: cut it by characters
        ends = list(range(1, len(text) + 1))
    low, high = 0, len(ends) - 1  # the last end that fits is in ends[low - 1 .. high]
    while low <= high:
        middle = (low + high) // 2
        if length(text[: ends[middle]]) <= room:
            low = middle + 1
        else:
            high = middle - 1
    return text[: ends[high]] if high >= 0 else "", full, room


def fit_prompt(
    text: str,
    tokenizers: Sequence[Tokenizer],
    policy: Literal["error", "truncate"],
    where: str,
) -> str:
    """The text to record for a prompt under the long-prompt policy; `where` names it."""
    if not tokenizers:
        return text  # a pipeline without tokenizers encodes no text to count
    kept, length, room = encoded_prompt(text, tokenizers)
    if length <= room:
        return text
    if policy == "error":
        preview = text if len(text) <= 80 else f"{text[:77]}..."
        raise SpecError(
            f"{where} {preview!r}: {length} tokens, past the {room} that CLIP encodes (77 with "
            "start and end); shorten it, or set generator.long_prompts: truncate to encode the "
            "words that fit and record them as the prompt"
        )
    return kept
