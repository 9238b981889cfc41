"""Runs for the studio's tests, made once a session on the small model, and a studio server
on loopback over them."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from synth.run import run_spec
from synth.spec import load_spec
from synth.throughput import THROUGHPUT_FILE_ENV
from tests.conftest import base_spec, write_spec
from tests.image_files import write_split_manifest

# A prompt a hostile spec author (or a caption) could carry: it must stay text in every view.
XSS_PROMPT = "Opacity <script>window.__xss=1</script><img src=x onerror=window.__xss=2> & done"


@dataclass(frozen=True)
class StudioRuns:
    curated: Path  # manifest source, qc on, every sample rejected once (kept best), batch 1
    plain: Path  # counts source, no qc, png at batch size 1: studio bytes equal the shard's
    hostile: Path  # no shards; a manifest listing paths out of its folder
    outside: Path  # a file outside every run and manifest folder


def make_studio_runs(root: Path, small_model: Path, small_lora: Path) -> StudioRuns:
    real = root / "real-data"
    write_split_manifest(real, {"train": (6, 14), "val": (4, 6), "test": (4, 6)},
                         np.random.default_rng(0))  # fmt: skip
    curated = base_spec(small_model, small_lora)
    curated["name"] = "curated"
    curated["source"] = {"kind": "manifest", "path": str(real / "real.csv"),
                         "labels": ["opacity", "normal"]}  # fmt: skip
    curated["target"] = {"synthetic": {"opacity": 6, "normal": 2}}
    curated["generator"]["batch_size"] = 1
    curated["eval"] = {"image_size": 32, "epochs": 1, "batch_size": 8, "patience": 1,
                       "allow_unverified_lora": True}  # fmt: skip
    # Nothing is this far from every real image: each sample's renders all fail the gate, the
    # best is kept (flagged) and the others are kept in rejected/.
    curated["qc"] = {"enabled": True, "max_real_similarity": 0.001, "max_attempts": 2,
                     "on_exhausted": "keep_best"}  # fmt: skip
    plain = base_spec(small_model, small_lora)
    plain["name"] = "plain"
    plain["generator"]["batch_size"] = 1
    plain["classes"]["opacity"]["prompts"].append(XSS_PROMPT)
    with pytest.MonkeyPatch.context() as patch:  # keep their throughput out of the user's
        patch.setenv(THROUGHPUT_FILE_ENV, str(root / "throughput.jsonl"))
        for name, data in (("curated", curated), ("plain", plain)):
            spec = load_spec(write_spec(root / "specs", data, f"{name}.yaml"))
            run_spec(spec, root / name, in_process=True, show_progress=False)

    # A stand-in report page: the studio serves whatever eval/report.html holds.
    (root / "curated" / "eval").mkdir()
    (root / "curated" / "eval" / "report.html").write_text(
        "<!doctype html><title>report</title><h1>Verdict: stand-in</h1>"
    )
    outside = root / "outside.png"
    outside.write_bytes((real / "real" / "train-normal-0.png").read_bytes())
    hostile_real = root / "hostile-data"
    (hostile_real / "real").mkdir(parents=True)
    (hostile_real / "real" / "ok.png").write_bytes(outside.read_bytes())
    (hostile_real / "real" / "link.png").symlink_to(outside)
    (hostile_real / "real.csv").write_text(
        "path,label\nreal/ok.png,normal\nreal/link.png,normal\n../outside.png,normal\n"
        f"{outside},opacity\n"
    )
    hostile = base_spec(small_model)
    hostile["name"] = "hostile"
    hostile["source"] = {"kind": "manifest", "path": str(hostile_real / "real.csv"),
                         "labels": ["opacity", "normal"]}  # fmt: skip
    write_spec(root / "hostile", hostile)
    return StudioRuns(root / "curated", root / "plain", root / "hostile", outside)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A studio app served by uvicorn on a loopback port, in a thread of this process."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the studio did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def request(self, path: str, body: dict | bytes | None = None, headers: dict | None = None):
        """(status, headers, body bytes); a dict body is sent as JSON with POST."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        request = urllib.request.Request(self.url + path, data=data, headers=headers or {})
        if data is not None and not request.has_header("Content-type"):
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.headers, err.read()

    def json(self, path: str, body: dict | None = None, headers: dict | None = None):
        status, _, data = self.request(path, body, headers)
        return status, json.loads(data)
