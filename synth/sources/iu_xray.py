"""The Indiana University chest X-ray source (Open-i / Kaggle), preprocessed as the thesis did,
with its weaknesses fixed, and every step counted in a funnel.

Two public layouts are read (detected from what the folder holds):
- Kaggle: indiana_reports.csv, indiana_projections.csv, images/images_normalized/*.png
- Open-i: ecgen-radiology/*.xml (or NLMCXR_reports.tgz), PNGs in images/ or NLMCXR_png/, and
  the DICOM metadata table nlmcxr_dicom_metadata.csv[.gz] for projections.

Reports alone are enough to plan; images are only needed to prepare, train and evaluate.
"""

from __future__ import annotations

import re
import tarfile
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from synth.errors import SourceError
from synth.sources import RealImage
from synth.sources.iu_text import (
    LabelRule,
    MeshFinding,
    build_caption,
    clean_text,
    headings,
    parse_mesh,
    task_label,
    term_matches,
)
from synth.sources.splits import assign_splits
from synth.spec import IUXraySource

FRONTAL, LATERAL, UNKNOWN = "frontal", "lateral", "unknown"
OTHER_LABEL = "other"  # studies that match no task label's rule
QUALITY_HEADINGS = ("technical quality of image unsatisfactory", "contrast media", "abdomen")
QUALITY_PHRASES = re.compile(r"\b(limited exam\w*|rotated|motion artifact\w*)\b", re.IGNORECASE)
_VIEW_POSITIONS = {"PA": FRONTAL, "AP": FRONTAL, "LL": LATERAL, "RL": LATERAL,
                   "LATERAL": LATERAL, "LARGE LATERAL": LATERAL}  # fmt: skip
# DICOM Patient Orientation (row, column directions): L/R across the image is a frontal view,
# A/P across it a lateral one.
_ORIENTATIONS = {"L": FRONTAL, "R": FRONTAL, "A": LATERAL, "P": LATERAL}
_METADATA_NAMES = ("nlmcxr_dicom_metadata.csv.gz", "nlmcxr_dicom_metadata.csv")


@dataclass(frozen=True)
class IUImage:
    image_id: str  # Open-i id, e.g. CXR1_1_IM-0001-3001
    file_name: str  # the PNG's name in the layout's image folder
    projection: str
    decided_by: str  # which rule decided the projection
    view_position: str  # PA, AP, LL... when recorded
    series: int  # DICOM series number, or order in the report


@dataclass(frozen=True)
class IUStudy:
    uid: str  # CXR<n>; one study is one patient in IU
    mesh: tuple[MeshFinding, ...]
    indication: str
    comparison: str
    findings: str
    impression: str
    images: tuple[IUImage, ...]


@dataclass(frozen=True)
class IURecord:
    """One kept study: its chosen frontal image, labels, caption and split."""

    uid: str
    image: IUImage
    labels: tuple[str, ...]  # multi-hot over MeSH headings
    label: str  # task label, or "other"
    mesh: tuple[str, ...]  # the MeSH findings as written, heading/qualifiers
    findings: str
    impression: str
    caption: str
    split: str


@dataclass
class Funnel:
    """Counts after each preprocessing step, and how each rule decided."""

    steps: list[tuple[str, int]] = field(default_factory=list)
    details: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, step: str, count: int) -> None:
        self.steps.append((step, count))

    def as_dict(self) -> dict:
        return {"steps": [{"step": s, "count": c} for s, c in self.steps], **self.details}

    def table(self) -> str:
        width = max(len(step) for step, _ in self.steps)
        lines = [f"{step:<{width}}  {count:>6}" for step, count in self.steps]
        for name, counts in self.details.items():
            lines.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        return "\n".join(lines)


@dataclass(frozen=True)
class IUDataset:
    records: tuple[IURecord, ...]
    funnel: Funnel
    layout: str


@dataclass(frozen=True)
class IUSource:
    dataset: IUDataset
    real_images: list[RealImage]
    image_dir: Path | None  # where the PNGs are, if they are there


def load_iu_source(source: IUXraySource) -> IUSource:
    """An `iu_xray` spec source: the preprocessed dataset and its records as RealImages."""
    from synth.sources.iu_text import DEFAULT_RULES, LabelRule

    missing = [lb for lb in source.labels if lb not in source.rules and lb not in DEFAULT_RULES]
    if missing:  # the label rules are this adapter's knowledge, not the spec's
        raise SourceError(
            f"source.rules has no rule for {missing}; give each one any_of/none_of/"
            f"max_headings/exactly (defaults exist only for {list(DEFAULT_RULES)})"
        )
    rules = {
        label: LabelRule(
            any_of=tuple(rule.any_of),
            none_of=tuple(rule.none_of),
            max_headings=rule.max_headings,
            exactly=tuple(rule.exactly) if rule.exactly is not None else None,
        )
        if (rule := source.rules.get(label)) is not None
        else DEFAULT_RULES[label]
        for label in source.labels
    }
    dataset = load_iu_dataset(
        source.path,
        rules,
        split_seed=source.split.seed,
        val_fraction=source.split.val,
        test_fraction=source.split.test,
        projections_csv=source.projections,
        metadata_table=source.metadata,
    )
    found = image_folder(source.path, dataset.layout)
    expected = found or source.path / "images"
    real_images = [
        RealImage(
            image_id=record.image.image_id,
            path=expected / record.image.file_name,
            label=record.label,
            split=record.split,
            caption=record.caption,
        )
        for record in dataset.records
    ]
    return IUSource(dataset, real_images, found)


def load_iu_dataset(
    folder: Path,
    rules: Mapping[str, LabelRule],
    split_seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    projections_csv: Path | None = None,
    metadata_table: Path | None = None,
) -> IUDataset:
    """Read either layout, then: frontal views, one per study, quality filter, labels, splits."""
    layout, studies = read_studies(folder, projections_csv, metadata_table)
    funnel = Funnel()
    funnel.add("reports", len(studies))
    with_images = [s for s in studies if s.images]
    funnel.add("reports with images", len(with_images))
    all_images = [image for s in with_images for image in s.images]
    funnel.add("images", len(all_images))
    funnel.details["projection decided by"] = dict(Counter(i.decided_by for i in all_images))
    funnel.add("frontal images", sum(i.projection == FRONTAL for i in all_images))

    chosen: list[tuple[IUStudy, IUImage]] = []
    for study in with_images:
        frontal = choose_frontal(study.images)
        if frontal is not None:
            chosen.append((study, frontal))
    funnel.add("studies with a frontal image (one kept each)", len(chosen))

    reasons: Counter[str] = Counter()
    kept = []
    for study, image in chosen:
        reason = quality_problem(study)
        if reason:
            reasons[reason] += 1
        else:
            kept.append((study, image))
    funnel.add("after the quality filter", len(kept))
    funnel.details["quality filter removed"] = dict(reasons)

    labelled = []
    for study, image in kept:
        heading_list = headings(study.mesh)
        label = task_label(dict(rules), heading_list) or OTHER_LABEL
        labelled.append((study, image, heading_list, label))
    splits = assign_splits(
        {s.uid: label for s, _, _, label in labelled}, split_seed, val_fraction, test_fraction
    )
    records = tuple(
        IURecord(
            uid=study.uid,
            image=image,
            labels=tuple(heading_list),
            label=label,
            mesh=tuple("/".join((f.heading, *f.qualifiers)) for f in study.mesh),
            findings=clean_text(study.findings),
            impression=clean_text(study.impression),
            caption=build_caption(
                None if label == OTHER_LABEL else label,
                study.mesh,
                study.findings,
                study.impression,
            ),
            split=splits[study.uid],
        )
        for study, image, heading_list, label in labelled
    )
    funnel.details["labels"] = dict(Counter(r.label for r in records))
    funnel.details["splits"] = dict(Counter(r.split for r in records))
    return IUDataset(records, funnel, layout)


def choose_frontal(images: tuple[IUImage, ...]) -> IUImage | None:
    """One frontal image per study: PA before AP before an unrecorded view (erect PA is the
    standard film), then the earliest series, then the image id. Deterministic."""
    frontal = [i for i in images if i.projection == FRONTAL]
    if not frontal:
        return None
    preference = {"PA": 0, "AP": 1}
    return min(frontal, key=lambda i: (preference.get(i.view_position, 2), i.series, i.image_id))


def quality_problem(study: IUStudy) -> str | None:
    """Why the thesis's quality filter drops this study, or None."""
    for heading in headings(study.mesh):
        for bad in QUALITY_HEADINGS:
            if term_matches(bad, heading) and len(bad.split()) == len(heading.split()):
                return f"MeSH {bad}"
    match = QUALITY_PHRASES.search(f"{study.findings} {study.impression}")
    return f"text '{match.group(0).lower()}'" if match else None


# --- layouts ---------------------------------------------------------------------------------


def detect_layout(folder: Path) -> str:
    if not folder.is_dir():
        raise SourceError(
            f"{folder}: IU data folder not found; download the Kaggle 'Chest X-rays (Indiana "
            "University)' set or Open-i's NLMCXR reports and point source.path at it"
        )
    if (folder / "indiana_reports.csv").is_file():
        return "kaggle"
    if (folder / "ecgen-radiology").is_dir() or (folder / "NLMCXR_reports.tgz").is_file():
        return "openi"
    raise SourceError(
        f"{folder}: neither IU layout found; expected indiana_reports.csv (Kaggle) or "
        "ecgen-radiology/ or NLMCXR_reports.tgz (Open-i) in it"
    )


def image_folder(folder: Path, layout: str) -> Path | None:
    """Where the layout keeps its PNGs, if they are there."""
    candidates = (
        [folder / "images" / "images_normalized", folder / "images"]
        if layout == "kaggle"
        else [folder / "images", folder / "NLMCXR_png"]
    )
    return next((c for c in candidates if c.is_dir()), None)


def read_studies(
    folder: Path, projections_csv: Path | None = None, metadata_table: Path | None = None
) -> tuple[str, list[IUStudy]]:
    layout = detect_layout(folder)
    overrides = _read_projection_overrides(projections_csv) if projections_csv else {}
    if layout == "kaggle":
        return layout, _read_kaggle(folder, overrides)
    return layout, _read_openi(folder, overrides, metadata_table)


def _read_projection_overrides(path: Path) -> dict[str, str]:
    """A user's CSV of image id (or file name) and projection; it decides before any rule."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise SourceError(f"{path}: cannot read the projections CSV ({err})") from None
    id_column = next((c for c in ("image_id", "imageid", "filename") if c in table.columns), None)
    if id_column is None or "projection" not in table.columns:
        raise SourceError(
            f"{path}: the projections CSV needs columns image_id (or filename) and projection"
        )
    overrides = {}
    for image_id, projection in zip(table[id_column], table["projection"], strict=True):
        value = projection.strip().lower()
        if value not in (FRONTAL, LATERAL):
            raise SourceError(
                f"{path}: projection {projection!r} for {image_id}; use frontal or lateral"
            )
        overrides[_image_key(image_id)] = value
    return overrides


def _image_key(name: str) -> str:
    """One key for an image in any layout: Open-i's 'CXR1_1_IM-0001-3001', the metadata
    table's 'CXR1_IM-0001-3001' and Kaggle's '1_IM-0001-3001.dcm.png' all give
    '1_IM-0001-3001'."""
    stem = re.sub(r"(\.dcm)?\.png$", "", Path(name).name)
    return _metadata_key(stem).removeprefix("CXR")


def _metadata_key(image_id: str) -> str:
    """Open-i's report image id -> the DICOM table's imageid (the `_N_` part dropped)."""
    return re.sub(r"^(CXR\d+)_\d+_", r"\1_", image_id)


def _read_kaggle(folder: Path, overrides: dict[str, str]) -> list[IUStudy]:
    reports = _read_csv(folder / "indiana_reports.csv", ("uid", "MeSH", "findings", "impression"))
    projections = _read_csv(folder / "indiana_projections.csv", ("uid", "filename", "projection"))
    images_by_uid: dict[str, list[IUImage]] = {}
    for order, row in enumerate(projections.itertuples(index=False)):
        key = _image_key(row.filename)
        recorded = str(row.projection).strip().lower()
        projection, decided_by = (
            (overrides[key], "projections CSV")
            if key in overrides
            else (recorded if recorded in (FRONTAL, LATERAL) else UNKNOWN, "Kaggle projections")
        )
        images_by_uid.setdefault(str(row.uid), []).append(
            IUImage(f"CXR{key}", row.filename, projection, decided_by, "", order)
        )
    return [
        IUStudy(
            uid=f"CXR{row.uid}",
            mesh=parse_mesh([str(row.MeSH)]),
            indication=str(getattr(row, "indication", "")),
            comparison=str(getattr(row, "comparison", "")),
            findings=str(row.findings),
            impression=str(row.impression),
            images=tuple(images_by_uid.get(str(row.uid), ())),
        )
        for row in reports.itertuples(index=False)
    ]


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise SourceError(f"{path}: missing from the Kaggle IU layout; re-download the set")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise SourceError(f"{path}: missing column(s) {missing}; is this the Kaggle IU file?")
    return table


def _read_openi(
    folder: Path, overrides: dict[str, str], metadata_table: Path | None
) -> list[IUStudy]:
    metadata = _read_metadata(folder, metadata_table)
    studies = []
    for xml_text in _openi_xml_documents(folder):
        root = ET.fromstring(xml_text)
        uid_node = root.find("uId")
        uid = uid_node.get("id") if uid_node is not None else None
        if not uid:
            continue
        abstract = {
            node.get("Label", "").upper(): node.text or "" for node in root.iter("AbstractText")
        }
        mesh_node = root.find("MeSH")
        majors = [n.text or "" for n in mesh_node.findall("major")] if mesh_node is not None else []
        image_ids = [node.get("id") for node in root.findall("parentImage") if node.get("id")]
        images = _openi_images(image_ids, overrides, metadata)
        studies.append(
            IUStudy(
                uid=uid,
                mesh=parse_mesh(majors),
                indication=abstract.get("INDICATION", ""),
                comparison=abstract.get("COMPARISON", ""),
                findings=abstract.get("FINDINGS", ""),
                impression=abstract.get("IMPRESSION", ""),
                images=images,
            )
        )
    studies.sort(key=lambda s: int(re.sub(r"\D", "", s.uid) or 0))
    return studies


def _openi_images(
    image_ids: list[str], overrides: dict[str, str], metadata: dict[str, _DicomView]
) -> tuple[IUImage, ...]:
    images, undecided = [], []
    for order, image_id in enumerate(image_ids):
        dicom = metadata.get(_metadata_key(image_id))
        view = dicom.view_position if dicom else ""
        series = dicom.series if dicom and dicom.series else order + 1
        orientation = re.findall(r"[LRAPHF]", dicom.orientation) if dicom else []
        key = _image_key(image_id)
        if key in overrides:
            projection, decided_by = overrides[key], "projections CSV"
        elif view in _VIEW_POSITIONS:
            projection, decided_by = _VIEW_POSITIONS[view], "View Position"
        elif orientation and orientation[0] in _ORIENTATIONS:
            projection, decided_by = _ORIENTATIONS[orientation[0]], "Patient Orientation"
        else:
            projection, decided_by = UNKNOWN, "series order"
            undecided.append(len(images))
        images.append(IUImage(image_id, f"{image_id}.png", projection, decided_by, view, series))
    if undecided:
        # No view recorded: the study's earliest series is taken as frontal, unless the study
        # already has a recorded frontal. Where View Position is recorded, "earliest series is
        # frontal" agrees with it in 692 of 768 two-view studies (90%).
        has_frontal = any(i.projection == FRONTAL for i in images)
        first = min(undecided, key=lambda n: (images[n].series, n))
        for n in undecided:
            projection = FRONTAL if n == first and not has_frontal else LATERAL
            images[n] = replace(images[n], projection=projection)
    return tuple(images)


def _as_int(value: object, default: int) -> int:
    try:
        return int(str(value))
    except ValueError:
        return default


def _openi_xml_documents(folder: Path) -> Iterator[bytes]:
    xml_folder = folder / "ecgen-radiology"
    if xml_folder.is_dir():
        for path in sorted(xml_folder.glob("*.xml")):
            yield path.read_bytes()
        return
    with tarfile.open(folder / "NLMCXR_reports.tgz", "r:gz") as archive:
        for member in archive:
            if member.isfile() and member.name.endswith(".xml"):
                handle = archive.extractfile(member)
                if handle is not None:
                    yield handle.read()


@dataclass(frozen=True)
class _DicomView:
    view_position: str
    orientation: str
    series: int


def _read_metadata(folder: Path, metadata_table: Path | None) -> dict[str, _DicomView]:
    candidates = [metadata_table] if metadata_table else [folder / n for n in _METADATA_NAMES]
    path = next((c for c in candidates if c and c.is_file()), None)
    if path is None and metadata_table is None:
        path = _packaged_metadata_table()
    if path is None:
        raise SourceError(
            f"{folder}: no DICOM metadata table for projections; put nlmcxr_dicom_metadata.csv.gz "
            "(shipped in the torchxrayvision wheel) in the folder or set source.metadata"
        )
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "imageid" not in table.columns or "View Position" not in table.columns:
        raise SourceError(f"{path}: not the NLMCXR DICOM metadata table (no imageid/View Position)")
    for column in ("Patient Orientation", "Series Number"):
        if column not in table.columns:
            table[column] = ""
    table = table.drop_duplicates("imageid")
    return {
        image_id: _DicomView(view.strip().upper(), orientation, _as_int(series, 0))
        for image_id, view, orientation, series in zip(
            table["imageid"],
            table["View Position"],
            table["Patient Orientation"],
            table["Series Number"],
            strict=True,
        )
    }


def _packaged_metadata_table() -> Path | None:
    """torchxrayvision ships the table; use it when it is installed and the user gave none."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("torchxrayvision")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / _METADATA_NAMES[0]
    return path if path.is_file() else None
