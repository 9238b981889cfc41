"""run.json: what a run folder holds and how each `synth run` of it went. Pure: typed records
and their JSON text; synth.run reads and writes the file.

A run.json that a crash damaged, or a hand edit left with fields of the wrong types, does not
parse (`RunRecordError`); the run's identity is then taken from its shards.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import pydantic

from synth.curate.summary import ClassCuration

InvocationStatus = Literal["running", "complete", "failed"]


class RunRecordError(ValueError):
    """run.json is not JSON, or a field has the wrong type."""


@dataclass(frozen=True)
class Invocation:
    """One `synth run` of the folder. It is written when the invocation starts, saying
    "running" (what a crashed or killed one is left saying), and again when it ends.
    Figures an invocation did not reach (a failure, or nothing to render) are None and left
    out of the file."""

    started_at: str  # ISO 8601, UTC, seconds
    status: InvocationStatus = "running"
    error: str | None = None  # why it failed
    note: str | None = None  # e.g. that there was nothing to do
    shards_reused: int | None = None  # complete shards an earlier invocation wrote
    temporary_files_removed: int | None = None  # leftovers of interrupted writes
    write_mode: str | None = None  # who wrote the shards: worker, driver or in-process
    write_fallback: str | None = None  # why output.write auto fell back to the driver
    driver_cpu_ms_per_image: float | None = None  # this process's CPU time, while generating
    steady_images_per_second: float | None = None  # past start-up, before teardown
    teardown_seconds: float | None = None  # from the last shard to the end of generation
    worker_deaths: int | None = None
    images_per_second: float | None = None  # over the whole of generation
    finished_at: str | None = None
    total_seconds: float | None = None
    startup_seconds: float | None = None  # from the command's start to the first shard
    shards_written: int | None = None
    shard_seconds: Mapping[str, float] = field(default_factory=dict)  # shard -> render seconds
    model_load_seconds: tuple[float, ...] = ()  # each worker's model load
    workers: tuple[str, ...] = ()  # "pid@host device", each worker that finished a shard
    devices: tuple[str, ...] = ()  # the workers' distinct devices, sorted

    def to_json(self) -> dict:
        return {k: v for k, v in _plain(self).items() if v is not None}


@dataclass(frozen=True)
class JudgeSummary:
    """The curation judge, as run.json sums it up (qc/judge.json has the whole record)."""

    sha256: str  # its weights
    val_auc: float
    train_seconds: float
    start: str  # "imagenet" or "random"
    train_images: int


@dataclass(frozen=True)
class RunCuration:
    """With qc on: the judge and what the gate did, per class, from every shard in the folder."""

    judge: JudgeSummary
    classes: Mapping[str, ClassCuration]

    def to_json(self) -> dict:
        return {
            "judge": asdict(self.judge),
            "classes": {label: c.to_json() for label, c in self.classes.items()},
        }


@dataclass(frozen=True)
class RunRecord:
    """run.json: the folder's run identity, its plan's shape, and every invocation."""

    spec_sha256: str  # the run's identity (synth.run.generation_sha256, with the judge's)
    created_at: str  # the first invocation's start: every image's created_at
    name: str = ""  # the spec's
    settings_sha256: str | None = None  # the identity but the judge's (equal without qc)
    status: InvocationStatus = "running"  # the last invocation's
    classes: Mapping[str, int] = field(default_factory=dict)  # synthetic images per class
    shards: int = 0
    versions: Mapping[str, str] = field(default_factory=dict)  # library versions
    invocations: tuple[Invocation, ...] = ()
    qc: RunCuration | None = None

    @property
    def generation_settings(self) -> str:
        """The identity but the judge's (runs from before settings_sha256 have only one)."""
        return self.settings_sha256 or self.spec_sha256

    @property
    def last(self) -> Invocation:
        if not self.invocations:
            raise RunRecordError("run.json records no invocation")
        return self.invocations[-1]

    def with_last(self, invocation: Invocation) -> RunRecord:
        """This record with its last invocation replaced, and its status set from it."""
        return replace(
            self, invocations=(*self.invocations[:-1], invocation), status=invocation.status
        )

    def to_json(self) -> str:
        data = {k: v for k, v in _plain(self).items() if v is not None}
        data["invocations"] = [i.to_json() for i in self.invocations]
        if self.qc is not None:
            data["qc"] = self.qc.to_json()
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> RunRecord:
        """Raises RunRecordError, naming the first wrong field, for anything but a run.json."""
        try:
            return _RECORD.validate_json(text)
        except pydantic.ValidationError as err:
            problem = err.errors()[0]
            where = ".".join(str(part) for part in problem["loc"]) or "the file"
            raise RunRecordError(f"{where}: {problem['msg']}") from None


def _plain(record) -> dict:
    """A record's own fields, one level deep (nested records are serialised by their owner)."""
    return {
        name: dict(value) if isinstance(value, Mapping) else value
        for name, value in vars(record).items()
    }


# Validation against the dataclasses' own annotations (lax: JSON's string keys become the
# ints ClassCuration.attempts has); extra keys, such as a class's acceptance_rate, are ignored.
_RECORD = pydantic.TypeAdapter(RunRecord)
