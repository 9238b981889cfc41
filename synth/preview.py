"""`synth preview`: render the first K samples of a class as a grid, before paying for a run.

The samples are the run's own first K of that class (same ids, seeds and prompts), so what
the preview shows is what the run will make.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from pathlib import Path

from diffusers.utils import make_image_grid
from PIL import Image

from synth import __version__
from synth.errors import OutputError, SpecError
from synth.generate.render import RenderSettings, ShardRenderer
from synth.plan import first_samples, plan_for_spec
from synth.shards import encode_image, image_text_metadata
from synth.sources import real_counts
from synth.spec import Spec
from synth.storage import output_errors

_SHARED_KEYS = ("model", "vae", "lora", "lora_sha256", "lora_scale", "scheduler", "steps",
                "guidance_scale", "device")  # fmt: skip
_PER_SAMPLE_KEYS = ("sample_id", "seed", "prompt", "negative_prompt")


def preview_class(spec: Spec, label: str, count: int, grid_path: Path) -> list[Path]:
    """Write `count` sample PNGs (each with its own provenance) and a grid of them."""
    if label not in spec.classes:
        known = list(spec.classes)
        raise SpecError(f"--class {label}: not a class of this spec; use one of {known}")
    if count < 1:
        raise SpecError(f"-n {count}: give at least 1 sample to preview")
    grid_path = Path(grid_path)
    _check_writable(grid_path)  # before rendering, which can take minutes
    samples = first_samples(plan_for_spec(spec, real_counts(spec)), label, count)
    settings = RenderSettings(spec.generator, {label: spec.classes[label]}, "preview", "", "png")
    rows = ShardRenderer(settings).render(samples).table.to_pylist()
    sample_dir = grid_path.with_name(f"{grid_path.stem}_samples")
    created = not sample_dir.exists()
    try:
        return _write(rows, label, count, grid_path, sample_dir)
    except BaseException:  # nothing half-written: not even an empty samples folder
        if created:
            shutil.rmtree(sample_dir, ignore_errors=True)
        raise


def _check_writable(grid_path: Path) -> None:
    if grid_path.is_dir():
        raise OutputError(
            f"--out {grid_path}: is a folder; give the grid's file name, such as "
            f"{grid_path / 'preview.png'}"
        )
    existing = next(p for p in (grid_path.parent, *grid_path.parent.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise OutputError(
            f"--out {grid_path}: cannot write in {existing} (read-only, or no permission); "
            "choose another path"
        )


def _write(rows: list[dict], label: str, count: int, grid_path: Path, sample_dir: Path):
    written = []
    with output_errors(sample_dir):
        sample_dir.mkdir(parents=True, exist_ok=True)
        for row in rows:
            path = sample_dir / row["image"]["path"]
            path.write_bytes(row["image"]["bytes"])
            written.append(path)
    images = [Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB") for row in rows]
    columns = math.ceil(math.sqrt(count))
    grid_rows = math.ceil(count / columns)
    padding = [Image.new("RGB", images[0].size)] * (grid_rows * columns - count)
    grid = make_image_grid(images + padding, rows=grid_rows, cols=columns)
    provenance = {key: rows[0][key] for key in _SHARED_KEYS}
    provenance.update(
        prompt=f"synth preview: {count} samples of class {label}",
        seed=",".join(str(row["seed"]) for row in rows),
        synth_version=__version__,
        label=label,
        samples=json.dumps([{k: row[k] for k in _PER_SAMPLE_KEYS} for row in rows]),
    )
    with output_errors(grid_path):
        grid_path.write_bytes(encode_image(grid, "png", image_text_metadata(provenance)))
    return written
