"""What CLIP encodes of a prompt: long prompts refused by default, or recorded as encoded, at
validation (a local model's tokenizers) and in the worker that renders them."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from synth.cli import main
from synth.errors import SpecError
from synth.plan import ClassPlan, Plan
from synth.prompt_tokens import encoded_prompt, fit_prompt, load_tokenizers
from synth.prompt_weights import plain
from synth.run import run_spec
from synth.spec import FROM_SOURCE, ClassSpec, Generator, load_spec
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
    for policy in ("truncate", "chunk"):
        data["generator"]["long_prompts"] = policy
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


def test_chunk_encodes_each_window_as_sdxl_does_and_records_the_whole_prompt(small_model):
    """compel's provider, set up as the engine sets it, gives a prompt that fits exactly
    diffusers' own SDXL encoding; a long one takes two windows of the same width."""
    from synth.generate.long_prompts import LongPromptEncoder
    from synth.generate.pipeline import SampleGenerator

    generator = Generator(model=str(small_model), dtype="float32", steps=2, height=32, width=32,
                          long_prompts="chunk")  # fmt: skip
    engine = SampleGenerator(generator, {"opacity": ClassSpec(prompts=[LONG])})
    encoder = LongPromptEncoder(engine.pipeline)
    with torch.inference_mode():
        embeds, _, pooled, _ = engine.pipeline.encode_prompt(
            SHORT, device=engine.device, do_classifier_free_guidance=False
        )
    short = encoder.encode(plain(SHORT))
    assert short.windows == 1
    assert torch.equal(short.embeds, embeds) and torch.equal(short.pooled, pooled)
    long = encoder.encode(plain(LONG))
    assert long.windows == 2 and long.embeds.shape == (1, 154, embeds.shape[-1])
    # Grouping counts windows from the token ids alone; it agrees with the encoding.
    assert encoder.windows(plain(LONG), plain("")) == 2
    assert encoder.windows(plain(SHORT), plain("")) == 1
    sample = _sample(LONG)
    assert engine.recorded(sample).prompt == LONG  # kept whole, not cut
    args = encoder.conditioning([plain(LONG)] * 2, [plain("")] * 2)
    assert (
        args["prompt_embeds"].shape
        == args["negative_prompt_embeds"].shape
        == (2, 154, embeds.shape[-1])
    )


@pytest.mark.slow
def test_chunked_prompts_that_differ_only_past_77_tokens_make_different_images(small_model):
    """The issue's failure under chunk: the words past CLIP's window now reach the image; a
    prompt that fits renders the same bytes as without chunking; a long prompt's image does
    not depend on the short prompts beside it in its batch."""
    from synth.generate.pipeline import SampleGenerator

    def render(policy, prompts):
        generator = Generator(model=str(small_model), dtype="float32", steps=3, height=32,
                              width=32, batch_size=4, guidance_scale=30, long_prompts=policy)  # fmt: skip
        engine = SampleGenerator(generator, {"opacity": ClassSpec(prompts=[SHORT])})
        images = engine.render([_sample(p, n) for n, p in enumerate(prompts)])
        return [np.asarray(r.image) for r in images]

    first, second = LONG + "Small effusion noted.", LONG + "No effusion seen at all."
    chunked = render("chunk", [first, second, SHORT, SHORT])
    # The small random-weight model listens to text only weakly (a high guidance scale makes
    # it louder), but deterministically: any difference is the text's.
    difference = np.abs(chunked[0].astype(int) - chunked[1])
    assert difference.max() > 1
    truncated = render("truncate", [first, second, SHORT, SHORT])
    assert np.array_equal(truncated[0], truncated[1])  # what chunk fixes
    # Same-sized calls (CPU kernels for batches under 4 differ by a level; see
    # test_batch_size_does_not_change_the_images), so bytes must match exactly.
    plain = render("error", [SHORT, SHORT])
    assert np.array_equal(chunked[2], plain[0]) and np.array_equal(chunked[3], plain[1])
    alone = render("chunk", [first, second])
    assert np.array_equal(alone[0], chunked[0]) and np.array_equal(alone[1], chunked[1])


def _sample(prompt: str, n: int = 0):
    """A sample of this prompt; every n has the same seed, so only the prompt differs."""
    cls = ClassPlan("opacity", 0, 1, 1, (prompt,), "")
    sample = Plan(seed=7, classes=(cls,), shard_size=1).samples_in_shard(0)[0]
    return replace(sample, sample_id=f"opacity-{n:06d}", index=n)
