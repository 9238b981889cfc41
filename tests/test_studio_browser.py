"""The studio in a real headless browser (Debian's chromium, driven by Playwright; no browser
download): browse, filter, open an image, compare, generate and read the report, with images
that render, filters that change the grid and URLs that restore it, no console error, and
hostile prompt text that stays text."""

from __future__ import annotations

import shutil
import time

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("chromium") is None,
        reason="Debian's chromium is not installed (.ci/run installs it with apt)",
    ),
]


@pytest.fixture()
def page(studio):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium"), args=["--no-sandbox"]
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.problems = []
        page.on("console", lambda m: m.type == "error" and page.problems.append(m.text))
        page.on("pageerror", lambda e: page.problems.append(str(e)))
        page.on("dialog", lambda d: (page.problems.append(f"dialog {d.message}"), d.dismiss()))
        yield page
        browser.close()


def _until(check, timeout: float = 60) -> None:
    """Poll from here: the studio's CSP forbids eval, which wait_for_function's strings need."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _images_rendered(page, selector: str) -> list[int]:
    _until(lambda: all(page.eval_on_selector_all(selector, "all => all.map(i => i.complete)")))
    return page.eval_on_selector_all(selector, "all => all.map(i => i.naturalWidth)")


def _cards(page) -> list[str]:
    return page.eval_on_selector_all(".card", "all => all.map(c => c.dataset.id)")


def _wait_for_grid_change(page, before: list[str]) -> list[str]:
    _until(lambda: _cards(page) != before)
    return _cards(page)


def test_browse_filter_detail_compare_generate_report(page, studio):
    page.goto(f"{studio.url}/#/browse?run=curated")
    page.wait_for_selector(".card img")
    everything = _cards(page)
    assert len(everything) == 8 and all(_images_rendered(page, ".card img"))

    page.select_option("select[name=label]", "opacity")
    opacity = _wait_for_grid_change(page, everything)
    assert len(opacity) == 6 and all(c.startswith("opacity-") for c in opacity)
    assert "label=opacity" in page.url

    page.select_option("select[name=status]", "all")
    with_rejected = _wait_for_grid_change(page, opacity)
    assert len(with_rejected) == 12
    assert page.locator(".badge.rejected").count() == 6

    page.eval_on_selector(  # the label-score slider, as a drag would set it
        "input[name=min_label_score]",
        "e => { e.value = '0.5'; e.dispatchEvent(new Event('input', {bubbles: true})); }",
    )
    scored = _wait_for_grid_change(page, with_rejected)
    assert "min_label_score=0.5" in page.url
    expected = studio.json(
        "/api/samples?run=curated&label=opacity&status=all&min_label_score=0.5&limit=200"
    )[1]
    assert len(scored) == expected["total"]

    shared = page.url  # a filtered grid is a link: opening it restores the filters
    page.goto("about:blank")
    page.goto(shared)
    page.wait_for_selector("#count:not(:empty)")
    assert _cards(page) == scored
    assert page.input_value("select[name=label]") == "opacity"

    page.goto(f"{studio.url}/#/browse?run=curated&source=real&label=normal")
    page.wait_for_selector(".card[data-source=real] img")
    assert len(_cards(page)) == 26 and all(_images_rendered(page, ".card img"))

    page.goto(f"{studio.url}/#/browse?run=curated")
    page.wait_for_selector(".card img")
    page.click(".card >> nth=0")
    page.wait_for_selector("#snippet")
    assert all(_images_rendered(page, "#sample-image, #nearest-real, #attempts img"))
    assert page.locator("#attempts figure").count() == 1
    assert "manual_seed(" in page.inner_text("#snippet")
    page.click("#reproduce")
    page.wait_for_selector("#rerender:not([hidden])", timeout=60_000)
    assert "largest difference from the stored image: 0 of 255" in page.inner_text("#rerender")

    page.goto(f"{studio.url}/#/compare?run=curated")
    page.click("#render-pair")
    page.wait_for_selector("#diff-map", timeout=60_000)
    assert len(_images_rendered(page, "#compare-out img")) == 2
    assert "largest" in page.inner_text("#compare-out")
    page.click("text=LoRA strength strip")
    page.click("#render-strip")
    _until(lambda: page.locator("#compare-out img").count() == 5)
    assert all(_images_rendered(page, "#compare-out img"))
    assert "LoRA scale 0.5" in page.inner_text("#compare-out")

    page.goto(f"{studio.url}/#/generate?run=plain")
    page.select_option("select[name=class]", "opacity")
    page.fill("input[name=seed]", "7")
    page.fill("input[name=steps]", "2")
    page.click("#generate")
    page.wait_for_selector("#generated", timeout=60_000)
    assert all(_images_rendered(page, "#generated"))
    assert page.get_attribute("#download", "download") == "studio-opacity-7.png"
    assert "Seed7" in page.inner_text("#generate-out").replace("\t", "").replace(" ", "")
    assert "seed=7" in page.url and "steps=2" in page.url

    page.goto(f"{studio.url}/#/report?run=curated")
    frame = page.frame_locator("iframe.report")
    assert "Verdict: stand-in" in frame.locator("h1").inner_text()
    assert page.problems == []


def test_hostile_prompt_text_stays_text_in_every_view(page, studio):
    page.goto(f"{studio.url}/#/browse?run=plain&q=script")
    page.wait_for_selector(".card img")
    page.click(".card >> nth=0")
    page.wait_for_selector("#snippet")
    assert "<script>window.__xss=1</script>" in page.inner_text("table.props")
    page.goto(
        f"{studio.url}/#/generate?run=plain&class=opacity&prompt=%3Cscript%3Ewindow.__xss%3D3%3C%2Fscript%3E"
    )
    assert page.input_value("textarea[name=prompt]") == "<script>window.__xss=3</script>"
    page.click("#generate")
    page.wait_for_selector("#generated", timeout=60_000)
    assert "<script>window.__xss=3</script>" in page.inner_text("#generate-out")
    assert page.eval_on_selector("body", "() => window.__xss") is None
    assert page.problems == []
