"""Time `synth eval` on a 1,000-image set on this machine, with image sets made here.

    python scripts/bench_eval.py --image-size 64 --epochs 5 --repeats 2

600 real images (train 300: 60 opacity / 240 normal; val 100; test 200) and 400 synthetic
(300 opacity / 100 normal) written as a shard; opacity is a soft bright blob, fainter in the
synthetic images by default. Prints the wall time and the report's verdict.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from eval.evaluate import evaluate
from synth.shards import ImageRecord, encode_image, records_to_table, write_shard
from synth.spec import load_spec


def chest(rng: np.random.Generator, opacity: bool, size: int, contrast: float) -> Image.Image:
    """Noise, plus a soft bright blob of `contrast` grey levels for opacity."""
    pixels = rng.normal(90, 25, (size, size))
    if opacity:
        y, x = rng.integers(size // 4, 3 * size // 4, size=2)
        yy, xx = np.mgrid[:size, :size]
        pixels += contrast * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (size * size / 35))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--real-contrast", type=float, default=30.0)
    # Fainter than real by default: a generator that drifts toward normal, as the thesis saw.
    parser.add_argument("--synthetic-contrast", type=float, default=20.0)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    rng = np.random.default_rng(0)
    (folder / "real").mkdir()
    rows = []
    for split, counts in {"train": (60, 240), "val": (50, 50), "test": (100, 100)}.items():
        for label, n in zip(("opacity", "normal"), counts, strict=True):
            for i in range(n):
                name = f"real/{split}-{label}-{i}.png"
                chest(rng, label == "opacity", args.image_size, args.real_contrast).save(
                    folder / name
                )
                rows.append({"path": name, "label": label, "split": split})
    pd.DataFrame(rows).to_csv(folder / "real.csv", index=False)
    records = []
    for label, n in (("opacity", 300), ("normal", 100)):
        for i in range(n):
            record = ImageRecord(
                f"{label}-{i:06d}", label, b"", "x.png", args.image_size, args.image_size,
                f"Chest x-ray. {label}.", "", i, "bench", None, None, None, None, "euler", 30,
                7.0, "bench", "bench", "cpu", "bench", 1,
            )  # fmt: skip
            image = chest(rng, label == "opacity", args.image_size, args.synthetic_contrast)
            records.append(replace(record, image_bytes=encode_image(image, "png", {})))
    run_dir = folder / "run"
    write_shard(records_to_table(records), run_dir / "data" / "train-00000-of-00001.parquet")
    (folder / "spec.yaml").write_text(
        f"""name: bench_eval
seed: 0
source: {{kind: manifest, path: real.csv, labels: [opacity, normal]}}
target: {{synthetic: {{opacity: 300, normal: 100}}}}
generator: {{model: bench, dtype: float32}}
classes:
  opacity: {{prompts: [x]}}
  normal: {{prompts: [x]}}
eval:
  enabled: true
  image_size: {args.image_size}
  epochs: {args.epochs}
  repeats: {args.repeats}
  batch_size: 32
  fid: [inception, classifier]
"""
    )
    started = time.perf_counter()
    result = evaluate(load_spec(folder / "spec.yaml"), run_dir)
    print(
        f"1,000 images, {args.image_size}px, {args.epochs} epochs, {args.repeats} repeats: "
        f"{time.perf_counter() - started:.1f} s; report {run_dir / 'eval' / 'report.html'}"
    )
    for verdict in result.verdicts:
        print(verdict.sentence)


if __name__ == "__main__":
    main()
