"""The IU source on the 3,955 real Open-i reports that torchxrayvision's wheel ships."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import unicodedata
from pathlib import Path

import pandas as pd
import pytest

from synth.cli import main
from synth.errors import SourceError
from synth.sources.iu_text import DEFAULT_RULES, headings, parse_mesh, rule_matches
from synth.sources.iu_xray import IUDataset, load_iu_dataset, read_studies
from tests.conftest import base_spec, write_spec

TXV_DATA = (
    Path(next(iter(importlib.util.find_spec("torchxrayvision").submodule_search_locations)))
    / "data"
)


@pytest.fixture(scope="module")
def openi_folder(tmp_path_factory) -> Path:
    """The Open-i layout as downloaded: the report archive (the DICOM table comes from the
    torchxrayvision wheel, as the source does when the folder has none)."""
    folder = tmp_path_factory.mktemp("openi")
    shutil.copy(TXV_DATA / "NLMCXR_reports.tgz", folder)
    return folder


@pytest.fixture(scope="module")
def openi(openi_folder: Path) -> IUDataset:
    return load_iu_dataset(openi_folder, DEFAULT_RULES, split_seed=0)


def test_funnel_on_the_real_reports(openi: IUDataset):
    assert openi.layout == "openi"
    assert dict(openi.funnel.steps) == {
        "reports": 3955,
        "reports with images": 3851,
        "images": 7470,
        "frontal images": 5266,
        "studies with a frontal image (one kept each)": 3812,
        "after the quality filter": 3723,
    }
    assert openi.funnel.details["projection decided by"] == {
        "View Position": 4883,
        "series order": 2587,
    }
    assert openi.funnel.details["quality filter removed"] == {
        "MeSH technical quality of image unsatisfactory": 83,
        "MeSH contrast media": 3,
        "MeSH abdomen": 2,
        "text 'rotated'": 1,
    }


def test_label_counts_on_the_real_reports(openi: IUDataset):
    assert openi.funnel.details["labels"] == {"normal": 1372, "opacity": 270, "other": 2081}
    for record in openi.records:
        heading_list = headings(parse_mesh(record.mesh))
        assert list(record.labels) == heading_list
        if record.label == "opacity":
            assert rule_matches(DEFAULT_RULES["opacity"], heading_list)
            assert len(heading_list) <= 3
            assert not any("tube" in h.split() or "device" in h for h in heading_list)
        if record.label == "normal":
            assert heading_list == ["normal"]


def test_captions_are_clean_on_every_real_report(openi: IUDataset):
    for record in openi.records:
        caption = record.caption
        assert "XXXX" not in caption.upper()
        assert not any(unicodedata.category(ch)[0] == "C" for ch in caption), caption
        assert caption.startswith("Chest x-ray. ")
        if record.label == "opacity":
            assert caption.startswith("Chest x-ray. Lung opacity.")
        if record.label == "normal":
            assert caption.startswith("Chest x-ray. Normal.")


def test_splits_are_patient_level_stratified_and_seeded(openi: IUDataset, openi_folder: Path):
    assert openi.funnel.details["splits"] == {"train": 2607, "val": 372, "test": 744}
    uids = [r.uid for r in openi.records]
    assert len(uids) == len(set(uids))  # one record (one frontal image) per patient
    for label in ("normal", "opacity", "other"):
        records = [r for r in openi.records if r.label == label]
        test_share = sum(r.split == "test" for r in records) / len(records)
        assert abs(test_share - 0.2) < 0.01
    reshuffled = load_iu_dataset(openi_folder, DEFAULT_RULES, split_seed=1)
    assert [r.split for r in reshuffled.records] != [r.split for r in openi.records]


def test_one_frontal_image_per_study_prefers_pa(openi: IUDataset, openi_folder: Path):
    _, studies = read_studies(openi_folder)
    by_uid = {s.uid: s for s in studies}
    for record in openi.records:
        assert record.image.projection == "frontal"
        study_views = {
            i.view_position for i in by_uid[record.uid].images if i.projection == "frontal"
        }
        if "PA" in study_views:
            assert record.image.view_position == "PA"


def test_a_projections_csv_decides_first(openi_folder: Path, tmp_path: Path):
    overrides = tmp_path / "projections.csv"
    pd.DataFrame(
        {
            "image_id": ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"],
            "projection": ["lateral", "frontal"],
        }
    ).to_csv(overrides, index=False)
    dataset = load_iu_dataset(openi_folder, DEFAULT_RULES, projections_csv=overrides)
    assert dataset.funnel.details["projection decided by"]["projections CSV"] == 2
    study_1 = next(r for r in dataset.records if r.uid == "CXR1")
    assert study_1.image.image_id == "CXR1_1_IM-0001-4001"


def test_the_kaggle_layout_gives_the_same_labels_and_captions(
    openi: IUDataset, openi_folder: Path, tmp_path: Path
):
    """The Kaggle CSVs, written from the same real reports."""
    _, studies = read_studies(openi_folder)
    studies = studies[:400]
    reports, projections = [], []
    for study in studies:
        number = study.uid.removeprefix("CXR")
        reports.append(
            {
                "uid": number,
                "MeSH": ";".join("/".join((f.heading, *f.qualifiers)) for f in study.mesh),
                "Problems": "",
                "image": "Xray Chest PA and Lateral",
                "indication": study.indication,
                "comparison": study.comparison,
                "findings": study.findings,
                "impression": study.impression,
            }
        )
        for image in study.images:
            key = re.sub(r"^CXR\d+_(\d+_)?", "", image.image_id)
            projections.append(
                {
                    "uid": number,
                    "filename": f"{number}_{key}.dcm.png",
                    "projection": image.projection.capitalize(),
                }
            )
    folder = tmp_path / "kaggle"
    (folder / "images" / "images_normalized").mkdir(parents=True)
    pd.DataFrame(reports).to_csv(folder / "indiana_reports.csv", index=False)
    pd.DataFrame(projections).to_csv(folder / "indiana_projections.csv", index=False)
    kaggle = load_iu_dataset(folder, DEFAULT_RULES)
    assert kaggle.layout == "kaggle"
    by_uid = {r.uid: r for r in openi.records}
    compared = 0
    for record in kaggle.records:
        if record.uid in by_uid:
            assert (record.label, record.caption) == (
                by_uid[record.uid].label,
                by_uid[record.uid].caption,
            )
            compared += 1
    assert compared > 300


def test_plan_works_from_the_reports_alone(openi_folder: Path, tmp_path: Path, capsys):
    data = base_spec(tmp_path / "model")
    data["source"] = {"kind": "iu_xray", "path": str(openi_folder), "labels": ["opacity", "normal"]}
    data["target"] = {"distribution": {"opacity": 0.5, "normal": 0.5}, "total": "auto"}
    data["classes"]["opacity"]["prompts"] = "from_source"
    assert main(["plan", str(write_spec(tmp_path, data)), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    train_opacity = 270 - round(270 * 0.2) - round(270 * 0.1)
    train_normal = 1372 - round(1372 * 0.2) - round(1372 * 0.1)
    assert plan["classes"]["opacity"] == {
        "real": train_opacity,
        "target": train_normal,
        "synthetic": train_normal - train_opacity,
    }


def test_missing_folder_and_metadata_table_name_the_fix(tmp_path: Path, openi_folder: Path):
    with pytest.raises(SourceError, match="IU data folder not found"):
        load_iu_dataset(tmp_path / "nope", DEFAULT_RULES)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="neither IU layout found"):
        load_iu_dataset(tmp_path / "empty", DEFAULT_RULES)
    with pytest.raises(SourceError, match="no DICOM metadata table"):
        load_iu_dataset(openi_folder, DEFAULT_RULES, metadata_table=tmp_path / "none.csv")


def test_a_label_without_a_rule_is_refused_naming_the_rule_keys(tmp_path):
    from synth.errors import SourceError
    from synth.sources.iu_xray import load_iu_source
    from synth.spec import IUXraySource

    source = IUXraySource(kind="iu_xray", path=tmp_path, labels=["opacity", "cardiomegaly"])
    with pytest.raises(SourceError, match=r"source.rules has no rule for \['cardiomegaly'\]"):
        load_iu_source(source)
