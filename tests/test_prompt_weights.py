"""A1111/kohya prompt weighting (`generator.prompt_weighting: a1111`) on the small model:
refused when off, weights that change the image, `(term:1.0)` equal to the plain prompt,
the mode in the provenance and the run's identity, and the preview and the studio rendering
what the run renders."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synth.cli import main
from synth.errors import SpecError
from synth.plan import PlannedSample
from synth.prompt_weights import fragments, weighting_problem
from synth.spec import ClassSpec, Generator, load_spec
from tests.conftest import base_spec, write_spec

WEIGHTED = "Chest x-ray. (White opacity:1.5) lung base right."


def _spec(small_model: Path, weighting: str, prompts: list[str]) -> dict:
    data = base_spec(small_model)
    data["generator"].update(prompt_weighting=weighting, batch_size=1, guidance_scale=30)
    data["classes"]["opacity"]["prompts"] = prompts
    data["target"] = {"synthetic": {"opacity": 2, "normal": 1}}
    return data


def test_the_syntax_is_parsed_by_a1111s_grammar():
    assert fragments(WEIGHTED) == (
        ("Chest x-ray. ", 1.0), ("White opacity", 1.5), (" lung base right.", 1.0)
    )  # fmt: skip
    assert [w for _, w in fragments("a (b) [c]")] == pytest.approx([1.0, 1.1, 1.0, 1 / 1.1])
    assert fragments("a \\(b\\)") == (("a (b)", 1.0),)  # escaped: literal brackets
    assert fragments("") == (("", 1.0),)
    assert weighting_problem("plain text, no brackets", "none") is None
    assert weighting_problem("a BREAK b", "a1111") is not None


def test_weighting_syntax_is_refused_while_weighting_is_off(tmp_path, small_model, capsys):
    data = _spec(small_model, "none", [WEIGHTED])
    with pytest.raises(
        SpecError, match=r"classes\.opacity\.prompts\[0\] .*generator\.prompt_weighting: a1111"
    ):
        load_spec(write_spec(tmp_path, data))
    assert main(["validate", str(tmp_path / "spec.yaml")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "White opacity:1.5" in error
    data = _spec(small_model, "none", ["plain"])
    data["classes"]["normal"]["negative_prompt"] = "[blurry]"
    with pytest.raises(SpecError, match=r"classes\.normal\.negative_prompt '\[blurry\]'"):
        load_spec(write_spec(tmp_path, data))
    load_spec(write_spec(tmp_path, _spec(small_model, "a1111", [WEIGHTED])))  # accepted
    with pytest.raises(SpecError, match="BREAK"):
        load_spec(write_spec(tmp_path, _spec(small_model, "a1111", ["a BREAK b"])))


@pytest.mark.slow
def test_weights_change_the_image_and_a_weight_of_one_is_the_plain_prompt(small_model):
    from synth.generate.pipeline import SampleGenerator

    def render(weighting: str, prompt: str) -> np.ndarray:
        generator = Generator(model=str(small_model), dtype="float32", steps=3, height=32,
                              width=32, guidance_scale=30, prompt_weighting=weighting)  # fmt: skip
        engine = SampleGenerator(generator, {"opacity": ClassSpec(prompts=[prompt])})
        sample = PlannedSample("opacity-000000", "opacity", 0, prompt, "", 7, 0)
        return np.asarray(engine.render([sample])[0].image).astype(int)

    plain = render("none", "Chest x-ray. White opacity lung base right.")
    assert (render("a1111", "Chest x-ray. (White opacity:1.0) lung base right.") == plain).all()
    heavier = render("a1111", "Chest x-ray. (White opacity:2.5) lung base right.")
    assert np.abs(heavier - plain).max() > 8  # the weight reached the image
    lighter = render("a1111", "Chest x-ray. [White opacity] lung base right.")
    assert not (lighter == plain).all()


@pytest.mark.slow
def test_the_mode_is_provenance_and_identity_and_preview_and_studio_honour_it(
    tmp_path, small_model
):
    from synth.preview import preview_class
    from synth.run import run_spec
    from synth.studio.app import create_app
    from synth.studio.catalog import Catalog, open_runs
    from tests.studio_runs import Server

    runs = {}
    for weighting, prompt in (("a1111", WEIGHTED), ("none", "Chest x-ray. White opacity.")):
        spec = load_spec(write_spec(tmp_path, _spec(small_model, weighting, [prompt]), f"{weighting}.yaml"))  # fmt: skip
        summary = run_spec(spec, tmp_path / weighting, in_process=True, show_progress=False)
        runs[weighting] = (spec, summary.out_dir, pq.read_table(summary.out_dir / "data"))
    import datasets

    loaded = datasets.load_dataset(str(runs["a1111"][1]), split="train")  # the card's features
    assert set(loaded["prompt_weighting"]) == {"a1111"}
    weighted = runs["a1111"][2]
    assert set(weighted.column("prompt_weighting").to_pylist()) == {"a1111"}
    assert "prompt_weighting" not in runs["none"][2].column_names  # as before the setting
    row = next(r for r in weighted.to_pylist() if r["label"] == "opacity")
    assert Image.open(io.BytesIO(row["image"]["bytes"])).text["prompt_weighting"] == "a1111"
    assert row["prompt"] == WEIGHTED  # recorded as written
    assert runs["a1111"][2]["spec_sha256"][0] != runs["none"][2]["spec_sha256"][0]

    grid = tmp_path / "preview" / "grid.png"
    [first] = preview_class(runs["a1111"][0], "opacity", 1, grid)
    assert Image.open(first).text["prompt_weighting"] == "a1111"
    stored = np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])))
    assert (np.asarray(Image.open(first)) == stored).all()

    catalog = Catalog(open_runs([runs["a1111"][1], runs["none"][1]]))
    # guidance 30 is past the studio's 20: the spec's own value applies when none is sent
    keys = ("prompt", "negative_prompt", "seed", "steps", "width", "height", "sample_id",
            "attempt")  # fmt: skip
    with Server(create_app(catalog)) as server:
        body = {"run": "a1111", "class": "opacity", **{k: row[k] for k in keys}}
        status, _, data = server.request("/api/generate", body)
        assert status == 200 and data == row["image"]["bytes"]
        status, error = server.json("/api/generate", {"run": "none", "class": "opacity",
                                                     "prompt": WEIGHTED})  # fmt: skip
        assert status == 400 and error["field"] == "prompt" and "a1111" in error["error"]
