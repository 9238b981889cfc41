"""The phantom source: procedural frontal chest radiographs that the project makes itself.

Each image is drawn from parameters that depend on (seed, index) alone: thorax and soft
tissue, two lung fields, heart, mediastinum, diaphragm domes, ribs, clavicles, exposure and
noise. An `opacity` image adds one to three low-contrast, soft-edged densities inside a lung
field. The parameters are kept in the manifest, so the ground truth travels with the images.

Drawing is pure (`phantom_parameters`, `draw_phantom`); only `materialise_phantom` writes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from synth.errors import SourceError
from synth.sources import RealImage
from synth.sources.splits import assign_splits
from synth.spec import PHANTOM_LABELS, PhantomSource, sha256_of_json
from synth.storage import atomic_folder, output_errors

if TYPE_CHECKING:
    import pandas as pd

NORMAL, OPACITY = PHANTOM_LABELS
MANIFEST_NAME = "manifest.parquet"
RECORD_NAME = "phantom.json"
PHANTOM_VERSION = 1  # bump when drawing changes, so old folders are redrawn, not reused
_SIDES = ("right", "left")  # the patient's side; on a frontal image the patient's right is
# the image's left
_ZONES = ("upper", "middle", "lower")


@dataclass(frozen=True)
class Opacity:
    """One density: centre in image coordinates (fractions of width and height, from the top
    left), radius (fraction of width) and peak contrast."""

    side: str
    zone: str
    x: float
    y: float
    radius: float
    contrast: float


@dataclass(frozen=True)
class PhantomParameters:
    """Everything that decides one phantom image."""

    lung_width: float
    lung_height: float
    lung_gap: float
    heart_width: float
    heart_height: float
    dome_right: float
    dome_left: float
    rib_spacing: float
    rib_phase: float
    shift_x: float
    exposure: float
    contrast: float
    noise: float
    opacities: tuple[Opacity, ...]


def phantom_parameters(seed: int, index: int, label: str, difficulty: float) -> PhantomParameters:
    """Anatomy and, for opacity images, lesions drawn from a generator keyed by (seed, index)."""
    rng = np.random.default_rng([seed, index])
    params = dict(
        lung_width=rng.uniform(0.13, 0.17),
        lung_height=rng.uniform(0.25, 0.31),
        lung_gap=rng.uniform(0.075, 0.095),
        heart_width=rng.uniform(0.12, 0.17),
        heart_height=rng.uniform(0.11, 0.15),
        dome_right=rng.uniform(0.70, 0.76),
        dome_left=rng.uniform(0.72, 0.79),
        rib_spacing=rng.uniform(0.060, 0.075),
        rib_phase=rng.uniform(0.0, 1.0),
        shift_x=rng.uniform(-0.03, 0.03),
        exposure=rng.uniform(-0.08, 0.08),
        contrast=rng.uniform(0.85, 1.15),
        noise=rng.uniform(0.015, 0.04),
    )
    opacities: tuple[Opacity, ...] = ()
    if label == OPACITY:
        count = int(rng.choice([1, 1, 1, 2, 2, 3]))
        opacities = tuple(_draw_opacity(rng, params, difficulty) for _ in range(count))
    return PhantomParameters(**params, opacities=opacities)


def _draw_opacity(rng: np.random.Generator, anatomy: dict, difficulty: float) -> Opacity:
    side = _SIDES[int(rng.integers(2))]
    zone = _ZONES[int(rng.integers(3))]
    centre_x = (
        0.5
        + anatomy["shift_x"]
        + (-1 if side == "right" else 1)
        * (anatomy["lung_gap"] + anatomy["lung_width"] * rng.uniform(0.55, 0.9))
    )
    lung_top = 0.5 - anatomy["lung_height"] * 0.85
    zone_height = anatomy["lung_height"] * 1.5 / 3
    centre_y = lung_top + zone_height * (_ZONES.index(zone) + rng.uniform(0.3, 0.8))
    # Harder phantoms have fainter and smaller densities.
    peak = 0.5 - 0.35 * difficulty
    return Opacity(
        side=side,
        zone=zone,
        x=float(centre_x),
        y=float(centre_y),
        radius=float(rng.uniform(0.045, 0.09) * (1.15 - 0.3 * difficulty)),
        contrast=float(rng.uniform(0.55, 1.0) * peak),
    )


def draw_phantom(params: PhantomParameters, size: int, seed: int, index: int) -> np.ndarray:
    """The phantom as a size x size uint8 array (white is dense, as on a radiograph)."""
    coords = (np.arange(size) + 0.5) / size
    image_x, y = np.meshgrid(coords, coords)
    x = image_x - params.shift_x  # anatomy coordinates: the patient sits off-centre
    edge = 1.5 / size  # soft edges about a pixel and a half wide

    def ellipse(cx, cy, rx, ry):
        distance = np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)
        return _smoothstep((1 - distance) / (edge / min(rx, ry)) + 0.5)

    body = ellipse(0.5, 0.6, 0.45, 0.6)
    image = 0.08 + 0.50 * body  # air around, soft tissue inside
    centre_right = 0.5 - params.lung_gap - params.lung_width
    centre_left = 0.5 + params.lung_gap + params.lung_width
    lungs = np.zeros_like(x)
    for centre, dome in ((centre_right, params.dome_right), (centre_left, params.dome_left)):
        field = ellipse(centre, 0.5, params.lung_width, params.lung_height)
        # The diaphragm dome cuts each lung's base: higher in the middle of the hemithorax.
        dome_line = dome - 0.06 * (1 - ((x - centre) / params.lung_width) ** 2)
        lungs = np.maximum(lungs, field * _smoothstep((dome_line - y) / edge + 0.5))
    image -= 0.34 * lungs
    ribs = np.zeros_like(x)
    for k in range(-1, 11):
        rib_y = 0.2 + (k + params.rib_phase) * params.rib_spacing + 0.5 * (x - 0.5) ** 2
        ribs += np.exp(-(((y - rib_y) / 0.011) ** 2))
    above_abdomen = _smoothstep((max(params.dome_right, params.dome_left) + 0.04 - y) / 0.04)
    image += 0.10 * np.clip(ribs, 0, 1) * body * above_abdomen
    for side in (-1, 1):
        # Each clavicle runs from the midline out and up towards its shoulder.
        outward = side * (x - 0.5)
        clavicle_y = 0.2 - 0.12 * outward
        reach = _smoothstep((outward - 0.03) / edge) * _smoothstep((0.32 - outward) / edge)
        image += 0.14 * np.exp(-(((y - clavicle_y) / 0.013) ** 2)) * reach * body
    mediastinum = ellipse(0.5, 0.42, 0.065, 0.30)
    heart = ellipse(0.53 + 0.2 * params.heart_width, 0.66, params.heart_width, params.heart_height)
    image = np.maximum(image, 0.55 * np.maximum(mediastinum, heart) + 0.12 * body)
    for lesion in params.opacities:
        distance2 = (image_x - lesion.x) ** 2 + (y - lesion.y) ** 2
        image += lesion.contrast * np.exp(-distance2 / (2 * (lesion.radius / 2) ** 2)) * lungs
    image = (image - 0.4) * params.contrast + 0.4 + params.exposure
    noise_rng = np.random.default_rng([seed, index, 1])
    image += noise_rng.normal(0, params.noise, size=image.shape)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def caption_for(params: PhantomParameters) -> str:
    """A report-style caption: 'Chest x-ray. Lung opacity. Opacity right lower zone.'"""
    if not params.opacities:
        return "Chest x-ray. Normal. The lungs are clear."
    places = sorted({f"{o.side} {o.zone} zone" for o in params.opacities})
    return f"Chest x-ray. Lung opacity. Opacity {' and '.join(places)}."


def phantom_labels(source: PhantomSource) -> list[str]:
    """Exactly round(count x prevalence) opacity images, at seeded positions."""
    rng = np.random.default_rng([source.seed, source.count])
    n_opacity = round(source.count * source.opacity_prevalence)
    labels = np.array([NORMAL] * source.count, dtype=object)
    labels[rng.permutation(source.count)[:n_opacity]] = OPACITY
    return [str(label) for label in labels]


def phantom_table(source: PhantomSource) -> pd.DataFrame:
    """The manifest: path, label, split, caption and the ground-truth parameters per image."""
    import pandas as pd

    return pd.DataFrame(phantom_rows(source))


def phantom_images(source: PhantomSource) -> list[RealImage]:
    """The phantom's images as real-image records, as read_phantom_images gives them, from
    the settings alone: nothing is drawn or read, which is all counting and planning need."""
    key = (phantom_digest(source), str(source.path))
    if key not in _LISTED:
        _LISTED.clear()  # one phantom at a time is all a command uses
        _LISTED[key] = [
            RealImage(path, source.path / path, label, split, caption_for(params))
            for path, label, split, params in _phantom_samples(source)
        ]
    return list(_LISTED[key])


_LISTED: dict[tuple[str, str], list[RealImage]] = {}


def _phantom_samples(source: PhantomSource) -> list[tuple[str, str, str, PhantomParameters]]:
    """(path, label, split, parameters) per image, in index order."""
    labels = phantom_labels(source)
    ids = [f"phantom-{index:06d}" for index in range(source.count)]
    splits = assign_splits(
        dict(zip(ids, labels, strict=True)), source.split.seed, source.split.val, source.split.test
    )
    return [
        (
            f"images/{image_id}.png",
            label,
            splits[image_id],
            phantom_parameters(source.seed, index, label, source.difficulty),
        )
        for index, (image_id, label) in enumerate(zip(ids, labels, strict=True))
    ]


def phantom_rows(source: PhantomSource) -> list[dict]:
    """The manifest's rows (see phantom_table)."""
    rows = []
    for index, (path, label, split, params) in enumerate(_phantom_samples(source)):
        largest = max(params.opacities, key=lambda o: o.radius * o.contrast, default=None)
        rows.append(
            {
                "path": path,
                "label": label,
                "split": split,
                "caption": caption_for(params),
                "index": index,
                "opacity_count": len(params.opacities),
                "opacity_side": largest.side if largest else None,
                "opacity_zone": largest.zone if largest else None,
                "opacity_x": largest.x if largest else None,
                "opacity_y": largest.y if largest else None,
                "opacity_radius": largest.radius if largest else None,
                "opacity_contrast": largest.contrast if largest else None,
                "parameters": json.dumps(asdict(params)),
            }
        )
    return rows


def phantom_digest(source: PhantomSource) -> str:
    """What decides every pixel: the source's settings (not its folder) and the drawing code."""
    settings = source.model_dump(mode="json", exclude={"path"})
    return sha256_of_json({"settings": settings, "version": PHANTOM_VERSION})


def materialise_phantom(source: PhantomSource) -> Path:
    """Draw the phantom into source.path once; later calls reuse it while the settings match.
    Returns the manifest's path. The folder is built aside and renamed into place, so a
    crash never leaves a half-drawn dataset that looks complete."""
    folder = source.path
    manifest = folder / MANIFEST_NAME
    digest, recorded = phantom_digest(source), _recorded_digest(folder)
    if recorded == digest and manifest.is_file():
        return manifest
    if folder.exists() and any(folder.iterdir()) and recorded is None:
        raise SourceError(
            f"source.path {folder}: folder exists and is not a synth phantom; "
            "point source.path at a new or phantom-only folder"
        )
    from PIL import Image  # drawing only: counting and planning never import it

    with atomic_folder(folder, ".drawing") as staging, output_errors(folder.parent):
        (staging / "images").mkdir()
        table = phantom_table(source)
        for row in table.itertuples(index=False):
            # The parameters are pure functions of (seed, index, label): drawn again, not parsed.
            params = phantom_parameters(source.seed, row.index, row.label, source.difficulty)
            pixels = draw_phantom(params, source.image_size, source.seed, row.index)
            Image.fromarray(pixels, mode="L").save(staging / row.path, optimize=False)
        table.to_parquet(staging / MANIFEST_NAME, index=False)
        (staging / RECORD_NAME).write_text(
            json.dumps(
                {
                    "digest": digest,
                    "version": PHANTOM_VERSION,
                    **source.model_dump(mode="json", exclude={"path"}),
                },
                indent=2,
            ),
        )
    return manifest


def _recorded_digest(folder: Path) -> str | None:
    try:
        return json.loads((folder / RECORD_NAME).read_text())["digest"]
    except (OSError, ValueError, KeyError):
        return None


def read_phantom_images(source: PhantomSource) -> list[RealImage]:
    """The phantom's images (drawn on first use) as real-image records."""
    from synth.sources.manifest import read_manifest

    return read_manifest(materialise_phantom(source))


def read_phantom_lesions(source: PhantomSource, image_ids: Sequence[str]) -> pd.DataFrame:
    """The ground truth of the given images (ids as read_phantom_images gives them), in their
    order: opacity_count, and the opacity_contrast and opacity_radius of the opacity with the
    largest radius x contrast (NaN on normal images)."""
    import pandas as pd

    columns = ["path", "opacity_count", "opacity_contrast", "opacity_radius"]
    table = pd.read_parquet(materialise_phantom(source), columns=columns)
    # read_manifest makes each image's id from its path column.
    return table.set_index("path").loc[list(image_ids)]


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)
