"""Tour `synth studio` over a run in headless chromium: a screenshot of each view, and the
latencies and memory a user meets (first paint, a filter, an image, a generation).

    .venv/bin/python scripts/studio_tour.py runs/quickstart --shots docs/studio

It starts `synth studio` as its own process (so its memory is measured alone), drives Debian's
chromium with Playwright, and prints the figures as JSON. Medians over --repeats.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder (curated, with a report, is best)")
    parser.add_argument("--shots", type=Path, help="write browse/detail/compare/... PNGs here")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    synth = Path(sys.executable).parent / "synth"
    studio = subprocess.Popen([str(synth), "studio", str(args.run), "--port", str(port)],
                              stdout=subprocess.DEVNULL)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        figures = tour(base, args.run.resolve().name, studio.pid, args.shots, args.repeats)
    finally:
        studio.terminate()
        studio.wait(timeout=30)
    print(json.dumps(figures, indent=2))


def _get(url: str, body: bytes | None = None) -> bytes:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return response.read()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _until(check, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the studio did not answer in time")
        time.sleep(0.01)


def tour(base: str, run: str, pid: int, shots: Path | None, repeats: int) -> dict:
    from playwright.sync_api import sync_playwright

    _until(lambda: _try(lambda: _get(f"{base}/api/runs")))
    figures: dict = {"rss_mb_at_start": round(_rss_mb(pid))}
    samples = json.loads(_get(f"{base}/api/samples?run={run}&limit=200"))["samples"]
    ids = [s["sample_id"] for s in samples]
    figures["api_page_ms"] = _median_ms(
        [_timed(lambda: _get(f"{base}/api/samples?run={run}&limit=48")) for _ in range(repeats)]
    )
    filtered = f"{base}/api/samples?run={run}&label=opacity&q=right&limit=48"
    figures["api_filter_ms"] = _median_ms([_timed(lambda: _get(filtered)) for _ in range(repeats)])
    figures["api_image_ms"] = _median_ms(
        [_timed(lambda i=i: _get(f"{base}/api/samples/{run}/{i}/image")) for i in ids[:repeats]]
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"),
                                             args=["--no-sandbox"])  # fmt: skip
        paints, filters = [], []
        for _ in range(repeats):
            context = browser.new_context(viewport={"width": 1280, "height": 860})
            page = context.new_page()
            paints.append(_timed(lambda p=page: _first_paint(p, f"{base}/#/browse?run={run}")))
            for label in ("opacity", "normal"):
                before = _cards(page)
                filters.append(_timed(lambda p=page, b=before, x=label: _filter(p, x, b)))
            context.close()
        figures["page_first_paint_ms"] = _median_ms(paints)
        figures["page_filter_ms"] = _median_ms(filters)
        generate = {"run": run, "seed": 7}
        figures["generate_first_s"] = round(
            _timed(lambda: _get(f"{base}/api/generate", json.dumps(generate).encode())), 2
        )
        bodies = [json.dumps({**generate, "seed": n}).encode() for n in range(repeats)]
        figures["generate_warm_ms"] = _median_ms(
            [_timed(lambda b=b: _get(f"{base}/api/generate", b)) for b in bodies]
        )
        figures["rss_mb_with_pipeline"] = round(_rss_mb(pid))
        if shots is not None:
            shots.mkdir(parents=True, exist_ok=True)
            _screenshots(browser, base, run, shots)
        browser.close()
    return figures


def _try(action) -> bool:
    try:
        action()
        return True
    except OSError:
        return False


def _median_ms(seconds: list[float]) -> float:
    return round(statistics.median(seconds) * 1000, 1)


def _cards(page) -> list[str]:
    return page.eval_on_selector_all(".card", "all => all.map(c => c.dataset.id)")


def _all_images_loaded(page, selector: str) -> bool:
    done = page.eval_on_selector_all(selector, "all => all.map(i => i.complete && i.naturalWidth)")
    return bool(done) and all(done)


def _first_paint(page, url: str) -> None:
    """From navigation to a grid whose visible images have all rendered."""
    page.goto(url)
    _until(lambda: _all_images_loaded(page, ".card img"))


def _filter(page, label: str, before: list[str]) -> None:
    page.select_option("select[name=label]", label)
    _until(lambda: _cards(page) != before and _all_images_loaded(page, ".card img"))


def _screenshots(browser, base: str, run: str, shots: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    info = json.loads(_get(f"{base}/api/runs/{run}"))
    browse = f"{base}/#/browse?run={run}&label=opacity&status=all"
    if info["curated"]:
        browse += "&max_label_score=0.55"
    _first_paint(page, browse)
    page.screenshot(path=shots / "browse.png")
    rejected = json.loads(_get(f"{base}/api/samples?run={run}&status=rejected&limit=1"))
    sample = (rejected["samples"] or [None])[0]
    sample_id = sample["sample_id"] if sample else _cards(page)[0]
    page.goto(f"{base}/#/sample/{run}/{sample_id}")
    page.wait_for_selector("#snippet")
    _until(lambda: _all_images_loaded(page, "figure img"))
    page.screenshot(path=shots / "detail.png", full_page=True)
    label = next(iter(info["classes"]))
    for name, view, button, images in (
        ("compare", "compare?seed=7", "#render-pair", 2),
        ("strip", "compare?mode=strip&seed=7", "#render-strip", 5),
        ("generate", f"generate?class={label}&seed=7", "#generate", 1),
    ):
        page.goto(f"{base}/#/{view}&run={run}")
        page.click(button)
        out = "#generate-out img" if name == "generate" else "#compare-out img"
        _until(lambda o=out, n=images: page.locator(o).count() == n, timeout=600)
        _until(lambda o=out: _all_images_loaded(page, o))
        if name == "compare":
            page.wait_for_selector("#diff-map")
        page.screenshot(path=shots / f"{name}.png", full_page=True)
    if info["report"]:
        page.goto(f"{base}/#/report?run={run}")
        page.frame_locator("iframe.report").locator("h1").first.wait_for()
        page.screenshot(path=shots / "report.png")
    page.close()


if __name__ == "__main__":
    main()
