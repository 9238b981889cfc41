"""`synth data prepare` on the real Open-i reports with small PNGs the test makes."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synth.cli import main
from synth.errors import SourceError
from synth.sources.iu_text import DEFAULT_RULES
from synth.sources.iu_xray import load_iu_dataset
from synth.sources.prepare import crop_box, preprocess_image
from tests.conftest import base_spec, write_spec

TXV_DATA = (
    Path(next(iter(importlib.util.find_spec("torchxrayvision").submodule_search_locations)))
    / "data"
)


def test_crop_box_cuts_portraits_mostly_at_the_bottom_and_centres_landscapes():
    assert crop_box(100, 160) == (
        0,
        20,
        100,
        120,
    )  # 60 px excess: 20 off the top, 40 off the bottom
    assert crop_box(160, 100) == (30, 0, 130, 100)
    assert crop_box(64, 64) == (0, 0, 64, 64)


@pytest.mark.parametrize("mode", ["L", "RGB", "I;16"])
def test_preprocessed_images_are_one_channel_squares(tmp_path: Path, mode: str):
    pixels = np.linspace(0, 60000 if mode == "I;16" else 255, 30 * 50).reshape(50, 30)
    image = Image.fromarray(pixels.astype(np.uint16 if mode == "I;16" else np.uint8))
    image = image.convert(mode) if mode == "RGB" else image
    path = tmp_path / "x.png"
    image.save(path)
    prepared, box = preprocess_image(path, 16)
    assert prepared.mode == "L" and prepared.size == (16, 16)
    assert box == (0, 6, 30, 36)
    # Rows 6..36 of a 0..max ramp over 50 rows: 16-bit input is scaled to 8 bits, not clipped.
    assert 170 < np.asarray(prepared).max() < 190


@pytest.fixture()
def openi_with_some_images(tmp_path: Path) -> Path:
    folder = tmp_path / "openi"
    folder.mkdir()
    shutil.copy(TXV_DATA / "NLMCXR_reports.tgz", folder)
    dataset = load_iu_dataset(folder, DEFAULT_RULES)
    images = folder / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for record in dataset.records[:40]:
        portrait = rng.integers(0, 255, size=(48, 40), dtype=np.uint8)
        Image.fromarray(portrait).save(images / record.image.file_name)
    (images / dataset.records[40].image.file_name).write_bytes(b"not a png")
    return folder


def test_prepare_writes_manifest_images_and_funnel(
    openi_with_some_images: Path, tmp_path: Path, capsys
):
    out = tmp_path / "prepared"
    argv = ["data", "prepare", "--source", "iu_xray", "--path", str(openi_with_some_images),
            "--out", str(out), "--size", "32"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "after the quality filter" in printed and "40 rows" in printed
    table = pq.read_table(out / "manifest.parquet")
    assert table.column_names == [
        "uid", "image_id", "path", "projection", "label", "labels", "mesh", "findings",
        "impression", "caption", "caption_tokens", "split", "crop",
    ]  # fmt: skip
    rows = table.to_pylist()
    assert len(rows) == 40
    first = rows[0]
    with Image.open(out / first["path"]) as image:
        assert (image.mode, image.size) == ("L", (32, 32))
    assert first["crop"] == [0, 2, 40, 42]
    assert first["projection"] == "frontal" and first["split"] in ("train", "val", "test")
    assert all(r["caption_tokens"] >= len(r["caption"].split()) for r in rows)
    funnel = json.loads((out / "funnel.json").read_text())
    assert funnel["image files"] == {"missing": 3723 - 41, "unreadable": 1}
    assert funnel["steps"][-1] == {"step": "with a readable image file", "count": 40}
    assert "lower bound" in funnel["tokens counted with"]

    before = (out / first["path"]).stat().st_mtime_ns
    assert main(argv) == 0  # a second prepare keeps what is done
    assert (out / first["path"]).stat().st_mtime_ns == before


def test_a_prepared_manifest_feeds_plan_and_from_source_prompts(
    openi_with_some_images: Path, tmp_path: Path, capsys
):
    out = tmp_path / "prepared"
    main(["data", "prepare", "--source", "iu_xray", "--path", str(openi_with_some_images),
          "--out", str(out), "--size", "16"])  # fmt: skip
    capsys.readouterr()
    data = base_spec(tmp_path / "model")
    data["source"] = {
        "kind": "manifest",
        "path": str(out / "manifest.parquet"),
        "labels": ["opacity", "normal"],
    }
    data["classes"]["normal"]["prompts"] = "from_source"
    data["target"] = {"synthetic": {"normal": 5}}
    spec_path = write_spec(tmp_path, data)
    assert main(["plan", str(spec_path), "--json"]) == 0
    from synth.plan import plan_for_spec
    from synth.sources import real_counts
    from synth.spec import load_spec

    spec = load_spec(spec_path)
    counts = real_counts(spec)
    plan = plan_for_spec(spec, counts)
    normal = next(c for c in plan.classes if c.label == "normal")
    assert normal.prompts == counts.captions["normal"] and normal.prompts
    assert all(s.prompt in normal.prompts for s in plan.iter_samples())


def test_prepare_without_images_says_where_to_put_them(tmp_path: Path):
    folder = tmp_path / "openi"
    folder.mkdir()
    shutil.copy(TXV_DATA / "NLMCXR_reports.tgz", folder)
    from synth.sources.prepare import prepare_iu
    from synth.spec import IUXraySource

    source = IUXraySource(kind="iu_xray", path=folder, labels=["opacity", "normal"])
    with pytest.raises(SourceError, match="no image folder; put the PNGs in"):
        prepare_iu(source, tmp_path / "out", 16)


def test_caption_tokens_are_counted_with_a_models_tokenizer_when_given(small_model: Path):
    from synth.sources.prepare import caption_token_counter

    lower_bound, _ = caption_token_counter(None)
    exact, how = caption_token_counter(str(small_model))
    caption = "Chest x-ray. Lung opacity. Opacity lung base right."
    # The small model's tokenizer has a token per character (spaces end words instead).
    assert exact(caption) == len(caption.replace(" ", "")) + 2 > lower_bound(caption) == 15
    assert how == f"tokenizer of {small_model}"
    with pytest.raises(SourceError, match="cannot load its tokenizer"):
        caption_token_counter("/no/such/model")
