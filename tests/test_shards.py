from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from synth.errors import OutputError
from synth.shards import (
    ImageRecord,
    encode_image,
    records_to_table,
    shard_is_complete,
    write_shard,
)


def _record(sample_id: str = "opacity-000000") -> ImageRecord:
    image = Image.new("RGB", (8, 8), (120, 10, 200))
    record = ImageRecord(
        sample_id=sample_id, label="opacity", image_bytes=b"", image_path=f"{sample_id}.png",
        width=8, height=8, prompt="Chest x-ray. Lung opacity.", negative_prompt="", seed=42,
        model="/models/sdxl", vae=None, lora=None, lora_sha256=None, lora_scale=None,
        scheduler="euler", steps=30, guidance_scale=7.0, spec_sha256="abc", synth_version="0.1",
        device="cpu (float32)", created_at="2026-01-01T00:00:00+00:00", attempt=1,
    )  # fmt: skip
    return replace(record, image_bytes=encode_image(image, "png", record.png_text()))


def test_png_bytes_are_deterministic_and_carry_provenance():
    first, second = _record(), _record()
    assert first.image_bytes == second.image_bytes
    text = Image.open(io.BytesIO(first.image_bytes)).text
    assert text["Description"] == "Chest x-ray. Lung opacity."
    assert text["Seed"] == "42" and text["Software"] == "synth 0.1"
    assert "created_at" not in text and "vae" not in text


def test_non_ascii_prompts_survive_in_png_text():
    record = replace(_record(), prompt="Röntgen thorax — opacité")
    image = Image.new("RGB", (4, 4))
    text = Image.open(io.BytesIO(encode_image(image, "png", record.png_text()))).text
    assert text["Description"] == "Röntgen thorax — opacité"


@pytest.mark.parametrize("image_format", ["webp", "jpeg"])
def test_other_image_formats(image_format: str):
    data = encode_image(Image.new("RGB", (8, 8)), image_format, {})
    assert Image.open(io.BytesIO(data)).format == image_format.upper()


def test_shard_completeness_checks_ids_spec_and_readability(tmp_path: Path):
    path = tmp_path / "data" / "train-00000-of-00001.parquet"
    write_shard(records_to_table([_record("a"), _record("b")]), path)
    assert shard_is_complete(path, ["a", "b"], "abc")
    assert not shard_is_complete(path, ["a", "b", "c"], "abc")
    assert not shard_is_complete(path, ["a", "b"], "other-spec")
    path.write_bytes(path.read_bytes()[:-40])
    assert not shard_is_complete(path, ["a", "b"], "abc")


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path):
    # The final name is taken by a non-empty folder, so the rename after the write fails.
    path = tmp_path / "train-00000-of-00001.parquet"
    (path / "blocker").mkdir(parents=True)
    with pytest.raises(OutputError, match=r"cannot write .*re-run the same command to resume"):
        write_shard(records_to_table([_record()]), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert path.is_dir()
