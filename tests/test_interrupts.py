"""A crash never strands an output folder: Ctrl-C and SIGTERM at each point of a run, a full
disk, a shard deleted mid-run and leftovers of a killed run. After each, a plain re-run
completes with the same bytes as a run that was never interrupted."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from synth.errors import OutputError, Terminated
from synth.run import run_spec
from synth.spec import load_spec
from tests.conftest import base_spec, write_spec

pytestmark = pytest.mark.slow


@pytest.fixture()
def spec_path(tmp_path: Path, small_model: Path, small_lora: Path) -> Path:
    return write_spec(tmp_path, base_spec(small_model, small_lora))


@pytest.fixture()
def uninterrupted(spec_path: Path, tmp_path: Path) -> dict[str, list]:
    """The shards of a run that nothing interrupted: what every recovery must reproduce."""
    out = tmp_path / "clean"
    _run(spec_path, out)
    return _content(out)


def _run(spec_path: Path, out: Path, **kwargs):
    return run_spec(load_spec(spec_path), out, in_process=True, show_progress=False, **kwargs)


def _shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "data").glob("*.parquet"))}


def _content(out: Path) -> dict[str, list]:
    """Each shard's rows but `created_at`, which is when that folder's run began: what two
    output folders of one spec must agree on, image bytes included."""
    return {
        p.name: pq.read_table(p).drop_columns(["created_at"]).to_pylist()
        for p in sorted((out / "data").glob("*.parquet"))
    }


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.rglob(".tmp-*"))


def _last_invocation(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())["invocations"][-1]


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, Terminated])
@pytest.mark.parametrize(
    "point", ["before the plan", "plan write", "between shards", "shard write"]
)
def test_an_interrupt_at_any_point_leaves_a_folder_a_plain_rerun_completes(
    spec_path, tmp_path, uninterrupted, monkeypatch, interrupt, point
):
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        if point == "before the plan":
            # Planning reads the source and computes; nothing is written yet.
            def plan_for_spec(*args, **kwargs):
                raise interrupt()

            patch.setattr("synth.run.plan_for_spec", plan_for_spec)
        elif point == "plan write":
            # The plan's writer is mid-file: its temporary file exists.
            patch.setattr("synth.run._PLAN_ROWS_PER_WRITE", 1)
            original = pq.ParquetWriter.write_table
            calls = []

            def write_table(self, table, *args, **kwargs):
                calls.append(1)
                if len(calls) == 2:
                    assert _leftovers(out) == [".tmp-plan.parquet"]
                    raise interrupt()
                return original(self, table, *args, **kwargs)

            patch.setattr(pq.ParquetWriter, "write_table", write_table)
        else:
            import synth.shards

            original = synth.shards.pq.write_table
            written = []

            def write_table(table, where, *args, **kwargs):
                if len(written) == 2 and point == "between shards":
                    raise interrupt()
                result = original(table, where, *args, **kwargs)
                written.append(where)
                if len(written) == 2 and point == "shard write":
                    raise interrupt()  # the temporary file is written, not yet renamed
                return result

            patch.setattr(synth.shards.pq, "write_table", write_table)
        with pytest.raises(interrupt):
            _run(spec_path, out)
    if point == "before the plan":
        assert not out.exists()  # stopped before anything was written
        _run(spec_path, out)
        assert _content(out) == uninterrupted
        return
    assert _leftovers(out) == []
    reason = "interrupted by SIGTERM" if interrupt is Terminated else "interrupted (Ctrl-C)"
    assert _last_invocation(out)["status"] == "failed"
    assert _last_invocation(out)["error"] == reason
    _run(spec_path, out)
    assert _content(out) == uninterrupted
    assert _last_invocation(out)["status"] == "complete"


def test_a_killed_runs_temporary_files_are_cleaned_on_resume_and_by_overwrite(
    spec_path, tmp_path, uninterrupted, small_model, small_lora
):
    out = tmp_path / "out"
    _run(spec_path, out)
    # What SIGKILL or a power cut mid-write leaves: temporary files of synth's own names.
    for name in (".tmp-plan.parquet", ".tmp-run.json", ".tmp-spec.yaml", "data/.tmp-x.parquet"):
        (out / name).write_bytes(b"partial")
    _run(spec_path, out)
    assert _leftovers(out) == [] and _content(out) == uninterrupted
    # --overwrite with another spec removes them too.
    (out / ".tmp-plan.parquet").write_bytes(b"partial")
    other = base_spec(small_model, small_lora)
    other["seed"] = 99
    _run(write_spec(tmp_path, other, "other.yaml"), out, overwrite=True)
    assert _leftovers(out) == []
    # A name that is not synth's is still refused.
    (out / ".tmp-notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="holds '.tmp-notes.txt', so it is not a synth run"):
        _run(spec_path, out)


def test_a_full_disk_names_the_shard_and_records_the_failure(spec_path, tmp_path, monkeypatch):
    import synth.storage

    out = tmp_path / "out"
    original = synth.storage.fsync
    failing: list[str] = ["train-00001-of-00004.parquet"]  # names whose write hits a full disk

    def full_disk(path):
        if any(name in path.name for name in failing):
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(path)

    monkeypatch.setattr(synth.storage, "fsync", full_disk)
    with pytest.raises(OutputError, match=r"train-00001-of-00004.parquet: .*No space left"):
        _run(spec_path, out)
    failed = _last_invocation(out)
    assert failed["status"] == "failed" and "train-00001-of-00004.parquet" in failed["error"]
    assert not list((out / "data").glob(".tmp-*"))  # nothing half-written is left

    # When the disk then refuses run.json too, the error still names the shard, not run.json.
    def shard_then_everything(path):
        if "train-00001" in path.name:
            failing.append("")  # from here on every write fails, run.json's included
        return full_disk(path)

    monkeypatch.setattr(synth.storage, "fsync", shard_then_everything)
    with pytest.raises(OutputError, match=r"train-00001-of-00004.parquet: .*No space left"):
        _run(spec_path, tmp_path / "second")
    assert failing[-1] == ""  # the failure's record was refused too


def test_a_shard_deleted_during_the_run_fails_it_instead_of_calling_it_complete(
    spec_path, tmp_path, uninterrupted, monkeypatch
):
    import synth.shards

    out = tmp_path / "out"
    original = synth.shards.write_shard

    def write_then_delete_the_first(table, where, shard):
        written = original(table, where, shard)
        if where.name == "train-00003-of-00004.parquet":
            (where.path.parent / "train-00000-of-00004.parquet").unlink()
        return written

    monkeypatch.setattr(synth.shards, "write_shard", write_then_delete_the_first)
    with pytest.raises(OutputError, match=r"train-00000-of-00004.parquet: missing after the run"):
        _run(spec_path, out)
    assert _last_invocation(out)["status"] == "failed"
    monkeypatch.undo()
    _run(spec_path, out)
    assert _content(out) == uninterrupted


@pytest.mark.parametrize(
    ("sent", "exit_code", "in_process"),
    [(signal.SIGTERM, 143, True), (signal.SIGINT, 130, True), (signal.SIGTERM, 143, False)],
)
def test_a_signal_to_synth_run_stops_it_cleanly_and_the_rerun_completes(
    tmp_path, small_model, small_lora, sent, exit_code, in_process
):
    """In process, and through local Ray, whose start replaces SIGTERM's handler."""
    data = base_spec(small_model, small_lora)
    data["target"] = {"synthetic": {"opacity": 60, "normal": 20}}
    data["output"]["dir"] = "out"
    spec = write_spec(tmp_path, data)
    out = tmp_path / "out"
    command = [str(Path(sys.executable).parent / "synth"), "run", str(spec)]
    command += ["--in-process"] if in_process else []
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list((out / "data").glob("train-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert driver.poll() is None, "the run finished before the signal"
    os.kill(driver.pid, sent)
    _, stderr = driver.communicate(timeout=60)
    assert driver.returncode == exit_code, stderr[-2000:]
    assert "re-run the same command to resume" in stderr and "Traceback" not in stderr
    assert _leftovers(out) == []
    expected = "interrupted by SIGTERM" if sent == signal.SIGTERM else "interrupted (Ctrl-C)"
    assert _last_invocation(out)["error"] == expected
    finished = _shard_bytes(out)
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    for name, content in finished.items():  # kept, not rewritten
        assert (out / "data" / name).read_bytes() == content
    clean = tmp_path / "clean"
    subprocess.run([*command, "--out", str(clean)], capture_output=True, check=True, timeout=300)
    assert _content(out) == _content(clean)


@pytest.fixture()
def small_tmpfs(tmp_path: Path):
    """A 1 MB tmpfs of this test's own, where the platform lets it mount one (root on Linux)."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not root'})")
    try:
        yield mount_point
    finally:
        # Lazily when something still holds a file there: a mount left behind would make
        # pytest's clean-up of old temporary folders fail in later sessions.
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_really_full_disk_names_the_shard_and_the_rerun_completes_once_there_is_room(
    spec_path, tmp_path, uninterrupted, small_tmpfs
):
    clean = tmp_path / "clean"  # the uninterrupted run's folder: how much each file needs
    shards = sorted((clean / "data").glob("*.parquet"))
    others = sum(p.stat().st_size for p in clean.iterdir() if p.is_file())
    room = others * 3 + shards[0].stat().st_size * 1.5  # the run files and about one shard
    statistics = os.statvfs(small_tmpfs)
    filler = small_tmpfs / "filler"
    filler.write_bytes(b"\0" * int(statistics.f_bavail * statistics.f_frsize - room))
    out = small_tmpfs / "out"
    with pytest.raises(OutputError, match=r"No space left on device"):
        _run(spec_path, out)
    assert _leftovers(out) == []
    filler.unlink()
    _run(spec_path, out)
    assert _content(out) == uninterrupted and _last_invocation(out)["status"] == "complete"
