"""What CLIP encodes of a prompt. SDXL's two text encoders see at most 77 tokens, start and
end included; diffusers cuts anything longer without a word, so two prompts that differ only
past that point make the same image while the provenance records different text. Here a
prompt is refused (naming it and its token count), cut after the last whole word that fits
(the cut text is what is rendered and recorded), or kept whole for the generator to encode
in windows (`chunk`, synth/generate/long_prompts.py). Torch-free:
tokenizers only, so `synth validate` can check prompts without loading a model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from synth.errors import SpecError
from synth.spec import LongPromptPolicy


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


def token_count(text: str, tokenizers: Sequence[Tokenizer]) -> int:
    """The prompt's length in tokens, start and end excluded, by its longest tokenization."""
    return max(len(t(text, add_special_tokens=False, verbose=False).input_ids) for t in tokenizers)


def room(tokenizers: Sequence[Tokenizer]) -> int:
    """The most tokens every encoder keeps in one window, start and end excluded (75)."""
    return min(t.model_max_length for t in tokenizers) - 2


def fits(text: str, tokenizers: Sequence[Tokenizer]) -> bool:
    """Whether every encoder keeps the whole prompt in one 77-token window."""
    return token_count(text, tokenizers) <= room(tokenizers)


def encoded_prompt(text: str, tokenizers: Sequence[Tokenizer]) -> tuple[str, int, int]:
    """The longest start of the prompt, cut after a whole word, that every encoder keeps
    whole; its full length in tokens; and the most an encoder keeps (start and end
    excluded). Rendering the cut text itself means the row records exactly what was encoded,
    which plain diffusers then reproduces."""
    keep = room(tokenizers)
    full = token_count(text, tokenizers)
    if full <= keep:
        return text, full, keep
    ends = [match.end() for match in re.finditer(r"\S+", text)]
    if token_count(text[: ends[0]], tokenizers) > keep:  # one enormous word: cut it by characters
        ends = list(range(1, len(text) + 1))
    low, high = 0, len(ends) - 1  # the last end that fits is in ends[low - 1 .. high]
    while low <= high:
        middle = (low + high) // 2
        if token_count(text[: ends[middle]], tokenizers) <= keep:
            low = middle + 1
        else:
            high = middle - 1
    return text[: ends[high]] if high >= 0 else "", full, keep


def fit_prompt(
    text: str,
    tokenizers: Sequence[Tokenizer],
    policy: LongPromptPolicy,
    where: str,
) -> str:
    """The text to record for a prompt under the long-prompt policy; `where` names it."""
    if not tokenizers or policy == "chunk":
        return text  # no text to count, or encoded whole
    kept, length, keep = encoded_prompt(text, tokenizers)
    if length <= keep:
        return text
    if policy == "error":
        preview = text if len(text) <= 80 else f"{text[:77]}..."
        raise SpecError(
            f"{where} {preview!r}: {length} tokens, past the {keep} that CLIP encodes (77 with "
            "start and end); shorten it, or set generator.long_prompts: truncate (encode and "
            "record the words that fit) or chunk (encode it whole in 77-token windows)"
        )
    return kept
