"""A1111/kohya prompt weighting (`generator.prompt_weighting: a1111`): `(term:1.5)`, `(term)`
(x1.1), `[term]` (/1.1) and `\\(` `\\)` `\\[` `\\]` for literal brackets.

The syntax is parsed by diffusion-prompt-embedder's `parse_prompt_attention` (A1111's own
grammar) into fragments with weights, which compel then encodes with both SDXL text encoders
(see `synth.generate.long_prompts`). Detecting the syntax is torch-free, so `synth validate`
refuses a weighted prompt under `prompt_weighting: none` without loading a model.
"""

from __future__ import annotations

import re

Fragments = tuple[tuple[str, float], ...]  # (text, weight), in prompt order

# An unescaped bracket means weighting to A1111; BREAK (a forced 77-token window break) is
# A1111 syntax that synth does not support.
_SYNTAX = re.compile(r"(?<!\\)[()\[\]]|\bBREAK\b")
_BREAK = re.compile(r"\bBREAK\b")


def weighting_problem(text: str, weighting: str) -> str | None:
    """Why `text` cannot be used under this weighting mode; None when it can."""
    if weighting == "none" and _SYNTAX.search(text):
        return (
            "holds A1111 weighting syntax (brackets), which generator.prompt_weighting: none "
            "passes to CLIP as literal text; set generator.prompt_weighting: a1111 (write "
            "\\( \\) for literal brackets), or remove the brackets"
        )
    if weighting == "a1111" and _BREAK.search(text):
        return "uses BREAK, which synth does not support; remove it"
    return None


def fragments(text: str) -> Fragments:
    """The text's fragments and their weights, by A1111's grammar; a text without syntax is
    one fragment of weight 1."""
    from diffusion_prompt_embedder import parse_prompt_attention  # imports torch

    parsed = parse_prompt_attention(text)
    return tuple((str(part), float(weight)) for part, weight in parsed) or (("", 1.0),)


def plain(text: str) -> Fragments:
    """The text as one fragment of weight 1: no syntax is read."""
    return ((text, 1.0),)
