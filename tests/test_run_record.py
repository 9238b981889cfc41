"""run.json's typed record: its JSON round trip, what it refuses, and the files earlier
versions wrote."""

from __future__ import annotations

import json

import pytest

from synth.curate.summary import ClassCuration
from synth.run_record import Invocation, JudgeSummary, RunCuration, RunRecord, RunRecordError

# A curated run.json as synth wrote it before the record was typed (a failed invocation, then
# a complete one), so folders from then resume.
EARLIER = """{
  "spec_sha256": "b1", "settings_sha256": "a1", "name": "quickstart",
  "created_at": "2026-11-30T10:00:00+00:00", "status": "complete",
  "classes": {"opacity": 3, "normal": 0}, "shards": 1, "versions": {"torch": "2.9.1"},
  "invocations": [
    {"started_at": "2026-11-30T10:00:00+00:00", "status": "failed",
     "error": "KeyboardInterrupt: ", "finished_at": "2026-11-30T10:00:05+00:00",
     "total_seconds": 5.0, "startup_seconds": null, "shards_written": 0, "shard_seconds": {},
     "model_load_seconds": [], "workers": [], "devices": []},
    {"started_at": "2026-11-30T10:01:00+00:00", "status": "complete", "shards_reused": 0,
     "temporary_files_removed": 1, "write_mode": "worker", "driver_cpu_ms_per_image": 0.4,
     "worker_deaths": 0, "images_per_second": 2.5, "finished_at": "2026-11-30T10:01:09+00:00",
     "total_seconds": 9.1, "startup_seconds": 7.9, "shards_written": 1,
     "shard_seconds": {"0": 1.2}, "model_load_seconds": [3.3],
     "workers": ["12@node cpu float32"], "devices": ["cpu float32"]}
  ],
  "qc": {
    "judge": {"sha256": "j1", "val_auc": 0.81, "train_seconds": 4.5, "start": "random",
              "train_images": 40},
    "classes": {"opacity": {"planned": 3, "kept": 3, "passed": 2, "rejected_renders": 1,
                            "dropped": 0, "attempts": {"1": 2, "2": 1},
                            "rejections": {"label_score": 1}, "acceptance_rate": 0.5}}
  }
}"""


def _record() -> RunRecord:
    curation = ClassCuration(
        planned=3, kept=3, passed=2, rejected_renders=1, dropped=0, attempts={1: 2, 2: 1},
        rejections={"label_score": 1},
    )  # fmt: skip
    return RunRecord(
        spec_sha256="b1",
        created_at="2026-11-30T10:00:00+00:00",
        name="quickstart",
        settings_sha256="a1",
        classes={"opacity": 3},
        shards=1,
        invocations=(
            Invocation("2026-11-30T10:00:00+00:00", status="failed", error="Terminated: x"),
            Invocation("2026-11-30T10:01:00+00:00", shard_seconds={"0": 1.5}, workers=("1@h cpu",)),
        ),
        qc=RunCuration(JudgeSummary("j1", 0.81, 4.5, "random", 40), {"opacity": curation}),
    )


def test_a_record_reads_back_as_it_was_written():
    record = _record()
    assert RunRecord.from_json(record.to_json()) == record
    assert RunRecord.from_json(record.to_json().encode()) == record


def test_figures_an_invocation_did_not_reach_are_left_out_of_the_file():
    written = json.loads(_record().to_json())
    failed = written["invocations"][0]
    assert failed == {
        "started_at": "2026-11-30T10:00:00+00:00", "status": "failed", "error": "Terminated: x",
        "shard_seconds": {}, "model_load_seconds": [], "workers": [], "devices": [],
    }  # fmt: skip
    assert written["qc"]["classes"]["opacity"]["acceptance_rate"] == 0.5
    assert "qc" not in json.loads(RunRecord("x", "t").to_json())


def test_a_run_json_an_earlier_version_wrote_reads():
    record = RunRecord.from_json(EARLIER)
    assert record.last.status == "complete" and record.last.workers == ("12@node cpu float32",)
    assert record.invocations[0].startup_seconds is None
    assert record.qc is not None and record.qc.classes["opacity"].attempts == {1: 2, 2: 1}
    assert record.qc.classes["opacity"].acceptance_rate == 0.5
    assert record.generation_settings == "a1"
    # Before settings_sha256 existed, the spec's identity was the settings'.
    older = json.loads(EARLIER)
    del older["settings_sha256"]
    assert RunRecord.from_json(json.dumps(older)).generation_settings == "b1"


def test_replacing_the_last_invocation_sets_the_runs_status():
    record = _record()
    done = record.with_last(Invocation(record.last.started_at, status="complete"))
    assert done.status == "complete" and done.invocations[0] == record.invocations[0]
    assert len(done.invocations) == 2
    with pytest.raises(RunRecordError, match="no invocation"):
        _ = RunRecord("x", "t").last


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("", "Invalid JSON"),
        ("[1, 2]", "object"),
        ('{"spec_sha256": 5, "created_at": "t"}', "spec_sha256"),
        ('{"spec_sha256": "x", "created_at": 7}', "created_at"),
        ('{"spec_sha256": "x"}', "created_at: Field required"),
        ('{"spec_sha256": "x", "created_at": "t", "invocations": "oops"}', "invocations"),
        ('{"spec_sha256": "x", "created_at": "t", "invocations": [1]}', "invocations.0"),
        ('{"spec_sha256": "x", "created_at": "t", "status": "done"}', "status"),
        (
            '{"spec_sha256": "x", "created_at": "t", "invocations": '
            '[{"started_at": "t", "shards_written": "four"}]}',
            "invocations.0.shards_written",
        ),
    ],
)
def test_a_damaged_run_json_is_refused_naming_the_field(text: str, names: str):
    with pytest.raises(RunRecordError, match=names):
        RunRecord.from_json(text)
