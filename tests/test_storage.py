"""synth.storage: one Location for local folders and URLs, every write whole or absent, and
the run lock, on a local disk and on an S3-compatible server (moto, on loopback)."""

from __future__ import annotations

import json
import pickle
import time

import pyarrow as pa
import pytest

from synth.errors import OutputError
from synth.storage import (
    LOCK_STALE_S,
    Location,
    atomic_file,
    atomic_folder,
    exclusive_lock,
    location,
)


@pytest.fixture(params=["local", "s3"])
def folder(request, tmp_path) -> Location:
    if request.param == "local":
        return location(tmp_path / "run")
    return location(request.getfixturevalue("bucket") + "/run")


def test_a_location_reads_writes_lists_and_removes_the_same_way_everywhere(folder: Location):
    assert not (folder / "a.txt").exists() and folder.names() == []
    folder.make_folder()
    (folder / "a.txt").write_bytes("é")
    (folder / "data" / "train-00000-of-00002.parquet").write_table(pa.table({"x": [1, 2]}))
    (folder / "data" / "train-00001-of-00002.parquet").write_table(pa.table({"x": [3]}))
    assert (folder / "a.txt").read_text() == "é" and (folder / "a.txt").is_file()
    assert folder.names() == ["a.txt", "data"]
    shards = (folder / "data").files("train-*.parquet")
    assert [s.name for s in shards] == ["train-00000-of-00002.parquet",
                                        "train-00001-of-00002.parquet"]  # fmt: skip
    assert shards[1].parquet().read().column("x").to_pylist() == [3]
    assert shards[0].parquet().metadata.num_rows == 2  # the footer alone
    assert pickle.loads(pickle.dumps(folder)) == folder  # sent to workers as its URL
    (folder / "data").remove_tree()
    (folder / "a.txt").remove()
    assert folder.names() == [] and (folder / "data").files() == []


def test_a_conditional_create_succeeds_once(folder: Location):
    folder.make_folder()
    assert (folder / "once").create_exclusive(b"first")
    assert not (folder / "once").create_exclusive(b"second")
    assert (folder / "once").read_bytes() == b"first"


def test_file_urls_and_relative_paths_are_local_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert location("run") == Location(str(tmp_path / "run"))
    assert location(f"file://{tmp_path}/run").local
    assert location("s3://bucket/run/").url == "s3://bucket/run"
    with pytest.raises(TypeError, match="is a URL, not a local path"):
        open(location("s3://bucket/x"))  # noqa: SIM115


def test_a_failed_local_write_leaves_the_old_file_and_no_leftover(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_file(target) as temporary:
        temporary.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    with pytest.raises(RuntimeError), atomic_folder(tmp_path / "model") as building:
        (building / "weights").write_text("half")
        raise RuntimeError
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_a_store_that_refuses_a_write_is_one_clear_error(bucket):
    missing = location("s3://synth-no-such-bucket-here/run")
    with pytest.raises(OutputError, match=r"s3://synth-no-such-bucket-here/run/x: cannot write"):
        (missing / "x").write_bytes(b"data")


def test_the_lock_refuses_a_second_holder_and_is_released(folder: Location):
    folder.make_folder()
    lock = folder / ".synth.lock"
    with (
        exclusive_lock(lock, "busy"),
        pytest.raises(OutputError, match="busy"),
        exclusive_lock(lock, "busy"),
    ):
        pass
    with exclusive_lock(lock, "busy"):  # released at the end of the first
        pass


def test_an_object_store_lock_whose_driver_is_gone_is_taken_over(bucket):
    lock = location(bucket) / "run" / ".synth.lock"
    stale = {"host": "gone", "pid": 1, "heartbeat": time.time() - LOCK_STALE_S - 5}
    lock.write_bytes(json.dumps(stale))
    with exclusive_lock(lock, "busy"):
        assert json.loads(lock.read_bytes())["pid"] != 1
    assert not lock.exists()
    alive = {"host": "other", "pid": 2, "heartbeat": time.time()}
    lock.write_bytes(json.dumps(alive))
    with (
        pytest.raises(OutputError, match=r"busy \(lock .*held by pid 2 on other"),
        exclusive_lock(lock, "busy"),
    ):
        pass


def test_a_url_whose_filesystem_is_not_installed_is_one_clear_error():
    with pytest.raises(
        OutputError, match=r"nosuchscheme://b/run: cannot open a nosuchscheme:// URL"
    ):
        location("nosuchscheme://b/run").exists()
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(OutputError, match=r"install its filesystem package \(gcsfs\)"):
            (location("gs://b/run") / "x").write_bytes(b"x")
