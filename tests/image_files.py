"""Image files in the formats real X-ray sets come in, made here, for the reader's tests."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# A vertical ramp, 0 at the top to the mode's maximum at the bottom, 40 x 30 pixels.
RAMP = np.linspace(0, 1, 40)[:, None] * np.ones((1, 30))


def write_in_mode(path: Path, mode: str) -> Path:
    """The ramp saved in one of the modes real sets use: 8-bit, 16-bit (12 bits used, as many
    radiographs do), RGB, RGBA, palette or CMYK (JPEG)."""
    gray = (RAMP * 255).round().astype(np.uint8)
    if mode == "I;16":
        image = Image.fromarray((RAMP * 4095).round().astype(np.uint16))
    elif mode == "L":
        image = Image.fromarray(gray)
    else:
        image = Image.fromarray(gray).convert(mode)
    image.save(path)
    return path


def write_oversized_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A tiny PNG whose header claims width x height: a decompression bomb's first bytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray
    chunk = b"IHDR" + header
    ihdr = struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    idat_data = zlib.compress(b"\x00" * 16)
    idat = b"IDAT" + idat_data
    idat_chunk = struct.pack(">I", len(idat_data)) + idat + struct.pack(">I", zlib.crc32(idat))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + ihdr + idat_chunk + end)
    return path


def radiograph_standin(rng: np.random.Generator, opacity: bool, side: int = 32) -> Image.Image:
    """A gray noise field, with a bright blob where `opacity`: a learnable stand-in for real
    radiographs, which tests cannot ship."""
    pixels = rng.normal(90, 20, (side, side))
    if opacity:
        y, x = rng.integers(side // 4, 3 * side // 4, size=2)
        yy, xx = np.mgrid[:side, :side]
        pixels += 110 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 30)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_split_manifest(
    folder: Path, counts: dict[str, tuple[int, int]], rng: np.random.Generator
) -> Path:
    """`real.csv` and its images in `folder/real/`: per split, (opacity, normal) stand-ins."""
    import pandas as pd

    (folder / "real").mkdir(parents=True, exist_ok=True)
    rows = []
    for split, (n_opacity, n_normal) in counts.items():
        for label, n in (("opacity", n_opacity), ("normal", n_normal)):
            for i in range(n):
                name = f"real/{split}-{label}-{i}.png"
                radiograph_standin(rng, label == "opacity").save(folder / name)
                rows.append({"path": name, "label": label, "split": split})
    pd.DataFrame(rows).to_csv(folder / "real.csv", index=False)
    return folder / "real.csv"
