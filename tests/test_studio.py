"""`synth studio`'s API against a real server on loopback, over runs made on the small model:
the contract's endpoints, filters, the images as stored, studio generation equal to the
engine's, the queue, errors that name the field, and what it refuses to serve."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synth.cli import main
from synth.studio.app import create_app
from synth.studio.catalog import Catalog, SampleQuery, open_runs, where_clause
from synth.studio.jobs import GenerationQueue
from tests.studio_runs import XSS_PROMPT, Server, free_port

pytestmark = pytest.mark.slow


def _rows(folder: Path) -> list[dict]:
    return pq.read_table(folder).to_pylist() if folder.is_dir() else []


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def test_runs_are_listed_with_their_row_counts(studio, studio_runs):
    status, runs = studio.json("/api/runs")
    assert status == 200
    assert [r["name"] for r in runs] == ["curated", "plain", "hostile"]
    assert runs[0] == {"name": "curated", "path": str(studio_runs.curated), "rows": 8}
    assert runs[1]["rows"] == 13 and runs[2]["rows"] == 0


def test_a_page_has_every_column_but_the_image_and_pages_tile_the_rows(studio, studio_runs):
    stored = _rows(studio_runs.plain / "data")
    status, page = studio.json("/api/samples?run=plain&limit=5")
    assert status == 200 and page["total"] == 13 and len(page["samples"]) == 5
    first = page["samples"][0]
    assert "image" not in first
    assert set(stored[0]) - {"image"} <= set(first)
    seen = []
    for offset in range(0, 15, 5):
        seen += [s["sample_id"] for s in studio.json(f"/api/samples?run=plain&limit=5&offset={offset}")[1]["samples"]]  # fmt: skip
    assert sorted(seen) == sorted(r["sample_id"] for r in stored) and len(set(seen)) == 13
    by_id = {r["sample_id"]: r for r in stored}
    assert first["seed"] == by_id[first["sample_id"]]["seed"]  # exact past 2**53
    assert first["prompt"] == by_id[first["sample_id"]]["prompt"]


def test_filters_by_class_text_seed_and_attempt(studio, studio_runs):
    stored = _rows(studio_runs.plain / "data")
    _, opacity = studio.json("/api/samples?run=plain&label=opacity&limit=200")
    assert opacity["total"] == 10 and {s["label"] for s in opacity["samples"]} == {"opacity"}
    _, text = studio.json("/api/samples?run=plain&q=PATCHY%20opacity&limit=200")
    expected = [r for r in stored if "patchy opacity" in r["prompt"].lower()]
    assert text["total"] == len(expected) > 0
    _, literal = studio.json("/api/samples?run=plain&q=%25&limit=200")  # % is text, not a wildcard
    assert literal["total"] == 0
    row = stored[3]
    _, by_seed = studio.json(f"/api/samples?run=plain&seed={row['seed']}")
    assert [s["sample_id"] for s in by_seed["samples"]] == [row["sample_id"]]
    _, later = studio.json("/api/samples?run=plain&attempt=2")
    assert later["total"] == 0


def test_curated_filters_scores_status_and_real_images(studio, studio_runs):
    kept, rejected = _rows(studio_runs.curated / "data"), _rows(studio_runs.curated / "rejected")
    assert len(kept) == 8 and len(rejected) == 8  # each sample: one render rejected, one kept
    _, page = studio.json("/api/samples?run=curated&status=rejected&limit=200")
    assert page["total"] == 8
    assert all(s["status"] == "rejected" and s["qc_reason"] for s in page["samples"])
    _, both = studio.json("/api/samples?run=curated&status=all&limit=200")
    assert both["total"] == 16
    scores = sorted(r["qc_label_score"] for r in kept)
    low, high = scores[2], scores[5]
    _, ranged = studio.json(
        f"/api/samples?run=curated&min_label_score={low}&max_label_score={high}&limit=200"
    )
    assert ranged["total"] == sum(low <= s <= high for s in scores)
    assert all(low <= s["qc_label_score"] <= high for s in ranged["samples"])
    _, passed = studio.json("/api/samples?run=curated&passed=true")
    assert passed["total"] == 0  # keep_best rows are flagged qc_passed false
    _, flagged = studio.json("/api/samples?run=curated&flagged=true&limit=200")
    assert flagged["total"] == sum(r["qc_real_similarity"] > 0.001 for r in kept)
    _, real = studio.json("/api/samples?run=curated&source=real&label=opacity&limit=200")
    assert real["total"] == 14
    assert all(s["source"] == "real" and s["split"] for s in real["samples"])
    _, everything = studio.json("/api/samples?run=curated&source=all&limit=200")
    assert everything["total"] == 8 + 40


def test_an_uncurated_run_refuses_score_filters_naming_the_column(studio):
    status, error = studio.json("/api/samples?run=plain&passed=true")
    assert status == 400 and error["field"] == "qc_passed" and "not curated" in error["error"]


def test_the_sql_never_holds_user_text():
    where, params = where_clause(SampleQuery(q="x' OR 1=1 --", label="a'b"), 0.9)
    assert "OR 1=1" not in where and "a'b" not in where
    assert params == ["a'b", "%x' OR 1=1 --%"]


def test_an_image_is_served_exactly_as_stored(studio, studio_runs):
    row = _rows(studio_runs.plain / "data")[0]
    status, headers, data = studio.request(f"/api/samples/plain/{row['sample_id']}/image")
    assert status == 200 and data == row["image"]["bytes"]
    assert headers["Content-Type"] == "image/png"
    rejected = _rows(studio_runs.curated / "rejected")[0]
    path = f"/api/samples/curated/{rejected['sample_id']}/image?attempt={rejected['attempt']}"
    assert studio.request(path)[2] == rejected["image"]["bytes"]


def test_the_detail_has_the_nearest_real_image_rejected_attempts_and_a_snippet(studio, studio_runs):
    kept = _rows(studio_runs.curated / "data")[0]
    status, detail = studio.json(f"/api/samples/curated/{kept['sample_id']}")
    assert status == 200 and detail["sample"]["seed"] == kept["seed"]
    assert [r["attempt"] for r in detail["rejected"]] == [a for a in (1, 2) if a != kept["attempt"]]
    nearest = detail["nearest_real"]
    assert nearest["id"] == kept["qc_nearest_real"]
    real_folder = Path(open_runs([studio_runs.curated])[0].spec.source.path).parent
    _, headers, data = studio.request(f"/api/real/curated/image?id={nearest['id']}")
    assert data == (real_folder / nearest["id"]).read_bytes()
    assert headers["Content-Type"] == "image/png"
    assert f"manual_seed({kept['seed']})" in detail["snippet"]


def test_the_snippet_reproduces_the_image_with_plain_diffusers(studio, studio_runs, tmp_path):
    """The issue's promise: provenance alone is enough, within one 8-bit level."""
    row = next(r for r in _rows(studio_runs.plain / "data") if r["lora"])
    _, detail = studio.json(f"/api/samples/plain/{row['sample_id']}")
    script = tmp_path / "reproduce.py"
    script.write_text(detail["snippet"])
    subprocess.run([sys.executable, str(script)], cwd=tmp_path, check=True, timeout=300)
    made = _pixels((tmp_path / f"{row['sample_id']}.png").read_bytes())
    assert np.abs(made - _pixels(row["image"]["bytes"])).max() <= 1


def _as_request(row: dict, run: str) -> dict:
    keys = ("prompt", "negative_prompt", "seed", "steps", "guidance_scale", "lora_scale",
            "width", "height", "sample_id", "attempt")  # fmt: skip
    return {"class": row["label"], "run": run, **{k: row[k] for k in keys}}


def test_studio_generation_is_the_engines_to_the_byte(studio, studio_runs):
    """png, the same device, threads and batch size (1): the same file, provenance and all."""
    for row in _rows(studio_runs.plain / "data")[:3]:
        status, headers, data = studio.request("/api/generate", _as_request(row, "plain"))
        assert status == 200 and headers["Content-Type"] == "image/png"
        assert data == row["image"]["bytes"]


def test_studio_generation_of_a_curated_row_is_its_file(studio, studio_runs):
    """A curated row's file also carries the gate's scores: a reproduction whose pixels are the
    row's gets them too (the studio does not score), so it is the row's file; kept and
    rejected renders alike."""
    kept = next(r for r in _rows(studio_runs.curated / "data") if r["attempt"] == 2)
    rejected = next(r for r in _rows(studio_runs.curated / "rejected") if r["attempt"] == 1)
    for row in (kept, rejected):
        _, _, data = studio.request("/api/generate", _as_request(row, "curated"))
        assert data == row["image"]["bytes"], row["attempt"]
    unnamed = {**_as_request(kept, "curated"), "sample_id": None, "attempt": None}
    _, _, data = studio.request("/api/generate", unnamed)
    assert (_pixels(data) == _pixels(kept["image"]["bytes"])).all()
    assert "qc_label_score" not in Image.open(io.BytesIO(data)).text  # never scored here


def test_generate_fills_defaults_from_the_spec_and_records_them(studio):
    status, headers, data = studio.request("/api/generate", {"run": "plain", "class": "opacity"})
    assert status == 200
    text = Image.open(io.BytesIO(data)).text
    seed = int(headers["X-Synth-Seed"])
    assert text["Seed"] == str(seed) and text["steps"] == "3" and text["lora_scale"] == "0.8"
    assert text["Description"] == "Chest x-ray. Lung opacity. Opacity lung base right."
    assert text["sample_id"] == f"studio-opacity-{seed}"
    again = studio.request("/api/generate", {"run": "plain", "class": "opacity", "seed": seed})
    assert again[2] == data  # a random seed, once known, reproduces the image
    zero = studio.request("/api/generate", {"run": "plain", "class": "opacity", "seed": seed,
                                            "lora_scale": 0})  # fmt: skip
    assert zero[2] != data


def test_bad_requests_are_4xx_naming_the_field(studio):
    cases = [
        ({"run": "plain", "class": "cardiomegaly"}, 400, "class"),
        ({"run": "plain", "steps": 101}, 422, "steps"),
        ({"run": "plain", "guidance_scale": -1}, 422, "guidance_scale"),
        ({"run": "plain", "lora_scale": 2.5}, 422, "lora_scale"),
        ({"run": "plain", "width": 4096}, 400, "width"),
        ({"run": "plain", "height": 30}, 422, "height"),
        ({"run": "plain", "class": "normal", "lora_scale": 0.5}, 400, "lora_scale"),
        ({"run": "plain", "prompt": "x" * 5000}, 422, "prompt"),
        ({"run": "plain", "temperature": 1}, 422, "temperature"),
        ({"run": "nope"}, 404, "run"),
    ]
    for body, status, field in cases:
        got, error = studio.json("/api/generate", body)
        assert (got, error["field"]) == (status, field), body
        assert field in error["error"]
    got, _, data = studio.request("/api/generate", b"{not json")
    assert got == 422 and json.loads(data)["error"]
    got, _, data = studio.request("/api/generate", b"{" + b" " * 70_000 + b"}")
    assert got == 413 and json.loads(data)["field"] == "body"
    for path, status, field in [
        ("/api/samples/plain/opacity-999999/image", 404, "sample_id"),
        ("/api/samples/plain/opacity-999999", 404, "sample_id"),
        ("/api/samples?run=plain&limit=0", 422, "limit"),
        ("/api/samples?run=plain&status=lost", 422, "status"),
        ("/api/samples?run=ghost", 404, "run"),
        ("/runs/plain/report", 404, "report"),
    ]:
        got, error = studio.json(path)
        assert (got, error["field"]) == (status, field), path


def test_nothing_outside_the_runs_and_manifest_folders_is_served(studio, studio_runs):
    secret = studio_runs.outside.read_bytes()
    status, _, data = studio.request("/api/real/hostile/image?id=real/ok.png")
    assert status == 200 and data == secret  # the same bytes, but inside the folder
    for image_id in ["real/link.png", "../outside.png", str(studio_runs.outside),
                     "real/../../outside.png", "%2e%2e/outside.png"]:  # fmt: skip
        status, _, data = studio.request(f"/api/real/hostile/image?id={image_id}")
        assert status == 404 and data != secret, image_id
    for path in ["/static/../../tests/conftest.py", "/static/%2e%2e/%2e%2e/pyproject.toml",
                 "/static/..%2f..%2fpyproject.toml", "/static//etc/passwd",
                 "/api/samples/plain/..%2f..%2frun.json/image", "/runs/..%2fplain/report",
                 "/api/samples/%2e%2e/spec.yaml/image"]:  # fmt: skip
        status, _, data = studio.request(path)
        assert status in (400, 404), path
        assert b"[project]" not in data and b"root:" not in data and b"generator" not in data


def test_headers_forbid_inline_scripts_and_user_text_comes_back_as_data(studio):
    status, headers, page = studio.request("/")
    assert status == 200 and b'<script src="/static/app.js"' in page
    directives = dict(
        d.strip().split(" ", 1) for d in headers["Content-Security-Policy"].split(";")
    )
    assert directives["script-src"] == "'self'" and directives["default-src"] == "'none'"
    assert headers["X-Content-Type-Options"] == "nosniff"
    _, page = studio.json("/api/samples?run=plain&q=%3Cscript%3E")
    assert [s["prompt"] for s in page["samples"]] == [XSS_PROMPT] * page["total"]
    assert page["total"] >= 1


def test_a_foreign_host_header_is_refused(studio):
    status, error = studio.json("/api/runs", headers={"Host": "evil.example:80"})
    assert status == 400 and error["field"] == "host"


def test_another_sites_page_cannot_queue_work(studio):
    """A page elsewhere can POST to 127.0.0.1 without a preflight only as a form or text, and
    the browser names its origin."""
    body = json.dumps({"run": "plain", "seed": 1}).encode()
    cases = [
        ({"Content-Type": "text/plain"}, 415, "content-type"),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "content-type"),
        ({"Origin": "http://evil.example"}, 403, "origin"),
        ({"Sec-Fetch-Site": "cross-site"}, 403, "origin"),
    ]
    for headers, status, field in cases:
        got, _, data = studio.request("/api/generate", body, headers)
        assert (got, json.loads(data)["field"]) == (status, field), headers
    assert studio.request("/api/generate", body, {"Origin": studio.url})[0] == 200


def test_with_a_token_every_request_needs_it(studio_runs):
    app = create_app(Catalog(open_runs([studio_runs.plain])), token="s3cret")
    with Server(app) as server:
        assert server.json("/api/runs")[0] == 401
        assert server.request("/static/app.js")[0] == 401
        assert server.json("/api/runs", headers={"Authorization": "Bearer s3cret"})[0] == 200
        assert server.json("/api/runs", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert server.json("/api/runs?token=%C3%A9")[0] == 401  # not ASCII: still a 401
        status, headers, _ = server.request("/?token=s3cret")
        assert status == 200 and "synth_token=s3cret" in headers["Set-Cookie"]
        cookie = {"Cookie": "synth_token=s3cret"}
        assert server.request("/static/app.js", headers=cookie)[0] == 200


def test_requests_queue_one_at_a_time_and_a_burst_past_the_bound_is_refused(studio_runs):
    app = create_app(Catalog(open_runs([studio_runs.plain])), GenerationQueue(max_waiting=2))
    results: dict[int, int] = {}

    with Server(app) as server:

        def post(n: int) -> None:
            body = {"class": "normal", "seed": n, "steps": 20}
            results[n] = server.request("/api/generate", body, {"X-Synth-Job": f"job{n}"})[0]

        first = threading.Thread(target=post, args=(0,))
        first.start()  # loads the model: seconds, while the next wait
        while server.json("/api/queue?job=job0")[1]["position"] != 0:
            time.sleep(0.01)
        twin = server.json("/api/generate", {"seed": 9}, {"X-Synth-Job": "job0"})
        assert twin[0] == 409 and twin[1]["field"] == "x-synth-job"
        burst = [threading.Thread(target=post, args=(n,)) for n in range(1, 7)]
        for thread in burst:
            thread.start()
        positions = set()  # of every burst job: which two got queued is up to arrival order
        while any(t.is_alive() for t in burst):
            for n in range(1, 7):
                state = server.json(f"/api/queue?job=job{n}")[1]
                positions.add(state["position"])
                assert state["running"] <= 1  # one device: one job at a time
            time.sleep(0.01)
        first.join()
        assert results[0] == 200
        codes = sorted(results[n] for n in range(1, 7))
        assert codes.count(429) >= 4 and set(codes) <= {200, 429}
        assert codes.count(200) == 2  # the two that fit the queue
        assert server.request("/api/generate", {"seed": 1})[0] == 200  # still up
        assert positions - {None} <= {0, 1, 2} and positions & {1, 2}  # it waited, and said


def test_out_of_memory_is_a_clear_503_and_the_app_stays_up(studio_runs, monkeypatch):
    import torch

    import synth.studio.jobs as jobs

    real_render, calls = jobs.render, []

    def render_once_out_of_memory(job, renderer):
        calls.append(job)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_render(job, renderer)

    monkeypatch.setattr(jobs, "render", render_once_out_of_memory)
    with Server(create_app(Catalog(open_runs([studio_runs.plain])))) as server:
        status, error = server.json("/api/generate", {"seed": 3})
        assert status == 503 and error["field"] == "generate"
        assert "out of GPU memory rendering 32x32" in error["error"]
        assert "lower width and height" in error["error"]
        assert server.request("/api/generate", {"seed": 3})[0] == 200


def test_the_report_is_served_without_scripts(studio_runs, tmp_path):
    run = tmp_path / "with-report"
    run.mkdir()
    (run / "spec.yaml").write_text((studio_runs.plain / "spec.yaml").read_text())
    (run / "eval").mkdir()
    (run / "eval" / "report.html").write_text("<h1>Verdict</h1><script>alert(1)</script>")
    with Server(create_app(Catalog(open_runs([run])))) as server:
        status, headers, data = server.request("/runs/with-report/report")
        assert status == 200 and data.startswith(b"<h1>Verdict</h1>")
        assert headers["Content-Type"].startswith("text/html")
        assert "script-src" not in headers["Content-Security-Policy"]  # default-src 'none'
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert server.json("/api/runs/with-report")[1]["report"] is True
    report = run / "eval" / "report.html"
    report.unlink()
    report.symlink_to(studio_runs.outside)  # a report that is a link out of the run
    with Server(create_app(Catalog(open_runs([run])))) as server:
        status, _, data = server.request("/runs/with-report/report")
        assert status == 404 and data != studio_runs.outside.read_bytes()


def test_run_folders_with_quotes_in_their_names_are_read(studio_runs, tmp_path):
    """Shard paths are written into DuckDB's SQL: a quote in a folder name must stay text."""
    import shutil

    odd = tmp_path / "o'neil'); DROP TABLE x; --"
    shutil.copytree(studio_runs.plain, odd)
    with Server(create_app(Catalog(open_runs([odd])))) as server:
        status, page = server.json("/api/samples?limit=1")
        assert status == 200 and page["total"] == 13
        row = page["samples"][0]
        path = f"/api/samples/{urllib.parse.quote(page['run'])}/{row['sample_id']}/image"
        assert server.request(path)[0] == 200


def test_studio_cli_refusals_are_one_line_with_exit_2(studio_runs, tmp_path, capsys):
    cases = [
        ([], "give RUN_DIR"),
        ([str(tmp_path)], "not a synth run folder"),
        ([str(studio_runs.plain), "--host", "0.0.0.0"], "--token"),
        ([str(studio_runs.plain), "--port", "70000"], "--port 70000"),
        # a spec whose output.dir (runs/plain beside it) was never run
        (["--spec", str(studio_runs.plain.parent / "specs" / "plain.yaml")], "no spec.yaml"),
    ]
    for args, message in cases:
        assert main(["studio", *args]) == 2, args
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and message in error, args
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["studio", str(studio_runs.plain), "--port", str(port)]) == 2
        assert "already in use" in capsys.readouterr().err


def test_a_network_host_with_a_token_serves_and_warns(studio_runs):
    port = free_port()
    command = [str(Path(sys.executable).parent / "synth"), "studio", str(studio_runs.plain),
               "--host", "0.0.0.0", "--port", str(port), "--token", "t0ken"]  # fmt: skip
    studio = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "http://0.0.0.0:" in studio.stdout.readline()
        server = Server.__new__(Server)
        server.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:  # the line comes before uvicorn listens
            try:
                assert server.json("/api/runs")[0] == 401
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert server.json("/api/runs", headers={"X-Synth-Token": "t0ken"})[0] == 200
    finally:
        studio.terminate()
        _, error = studio.communicate(timeout=30)
    assert "warning: serving on 0.0.0.0" in error
