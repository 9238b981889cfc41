"""What CLIP encodes of a prompt: long prompts refused by default, or recorded as encoded, at
validation (a local model's tokenizers) and in the worker that renders them."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synth.cli import main
from synth.errors import SpecError
from synth.prompt_tokens import encoded_prompt, fit_prompt, load_tokenizers
from synth.run import run_spec
from synth.spec import FROM_SOURCE, Generator, load_spec
from tests.conftest import base_spec, write_spec

SHORT = "Chest x-ray. Lung opacity."
# The small model's tokenizers read bytes: one token a character, 75 kept.
LONG = "Chest x-ray. Lung opacity. " + "Patchy opacity in the right lower lobe. " * 3


def test_a_prompt_that_fits_is_kept_and_a_long_one_is_refused_or_cut(small_model):
    tokenizers = load_tokenizers(small_model)
    assert len(tokenizers) == 2
    assert fit_prompt(SHORT, tokenizers, "error", "classes.opacity.prompts[0]") == SHORT
    _, length, room = encoded_prompt(LONG, tokenizers)
    assert room == 75 and length > room
    with pytest.raises(
        SpecError, match=rf"classes.opacity.prompts\[0\] .*: {length} tokens, past the 75"
    ):
        fit_prompt(LONG, tokenizers, "error", "classes.opacity.prompts[0]")
    kept = fit_prompt(LONG, tokenizers, "truncate", "x")
    # Cut after the last whole word that fits: one more word would not.
    next_word = LONG[len(kept) :].split()[0]
    assert LONG.startswith(kept) and encoded_prompt(kept, tokenizers)[1] <= 75
    assert encoded_prompt(f"{kept} {next_word}", tokenizers)[1] > 75
    # One word longer than CLIP's window is cut by characters.
    assert len(fit_prompt("x" * 200, tokenizers, "truncate", "x")) == 75


def test_listed_prompts_default_to_error_and_captions_from_source_to_truncate():
    generator = Generator(model="m")
    assert generator.long_prompt_policy(["a"]) == "error"
    assert generator.long_prompt_policy(FROM_SOURCE) == "truncate"
    assert Generator(model="m", long_prompts="error").long_prompt_policy(FROM_SOURCE) == "error"


def test_validate_names_a_long_prompt_and_its_count_unless_truncation_is_asked_for(
    tmp_path, small_model, capsys
):
    data = base_spec(small_model)
    data["classes"]["opacity"]["prompts"] = [SHORT, LONG]
    spec = write_spec(tmp_path, data)
    assert main(["validate", str(spec)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "classes.opacity.prompts[1]" in error
    assert "tokens, past the 75 that CLIP encodes" in error
    data["generator"]["long_prompts"] = "truncate"
    assert main(["validate", str(write_spec(tmp_path, data))]) == 0


@pytest.mark.slow
def test_prompts_that_differ_only_past_what_clip_encodes_are_recorded_as_encoded(
    tmp_path, small_model
):
    """Two prompts equal in their first 75 tokens make the same image; their rows now say so
    rather than recording two different texts for one picture."""
    rows = []
    for n, tail in enumerate(("Small effusion noted.", "No effusion seen at all.")):
        data = base_spec(small_model)
        data["generator"]["long_prompts"] = "truncate"
        data["classes"]["opacity"]["prompts"] = [LONG + tail]
        data["target"] = {"synthetic": {"opacity": 1, "normal": 0}}
        out = tmp_path / f"out{n}"
        run_spec(load_spec(write_spec(tmp_path, data, f"spec{n}.yaml")), out, in_process=True,
                 show_progress=False)  # fmt: skip
        rows.append(pq.read_table(out / "data").to_pylist()[0])
    first, second = rows
    assert first["prompt"] == second["prompt"] and LONG.startswith(first["prompt"])
    pixels = [np.asarray(Image.open(io.BytesIO(r["image"]["bytes"]))) for r in rows]
    assert np.array_equal(*pixels)  # the same picture (the PNG text differs: the spec digest)
