"""The demo page in a real headless browser (Debian's chromium driven by Playwright).

Each test leaves a screenshot under artifacts/ (git-ignored) for a person to look at.
Needs ``apt-get install chromium`` and ``pip install playwright`` (no ``playwright install``:
the system chromium is used).
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from tests.support.server import REPO_ROOT, Server, running_server
from tests.support.tiny_models import TINY_DEFAULTS

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="needs playwright (pip install playwright)"
)
CHROMIUM = (
    os.environ.get("ORTSERVE_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
)
if not Path(CHROMIUM).is_file():
    pytest.skip(
        f"no chromium at {CHROMIUM} (apt-get install chromium, or set ORTSERVE_TEST_CHROMIUM)",
        allow_module_level=True,
    )
ARTIFACTS = REPO_ROOT / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
RENDERED = """() => {
  const img = document.querySelector('#rendered');
  return img !== null && img.complete && img.naturalWidth > 0;
}"""


@pytest.fixture(scope="module")
def server(tiny_repo: Path) -> Iterator[Server]:
    with running_server(tiny_repo, **TINY_DEFAULTS) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    problems: list[str] = []

    def on_console(msg: Any) -> None:
        # an HTTP error status is logged as a failed load; the page shows those in #status,
        # which the tests check, so only script errors count here
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            problems.append(f"console error: {msg.text}")

    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", on_console)
    page.goto(server.url + "/")  # redirects to /demo
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    yield page
    context.close()
    assert not problems, problems


def shapes_image(path: Path) -> Path:
    img = Image.new("RGB", (320, 240), (30, 30, 30))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, 159, 119), fill=(250, 20, 20))
    draw.ellipse((170, 130, 300, 230), fill=(20, 240, 20))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return path


def screenshot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)
    assert (ARTIFACTS / name).stat().st_size > 0


@pytest.mark.parametrize(
    ("task", "model", "expect"),
    [
        ("detect", "tiny-yolo", '"detections"'),
        ("segment", "tiny-seg", '"semantic"'),
        ("segment", "tiny-maskrcnn", '"red-thing"'),
    ],
)
def test_uploading_an_image_shows_the_rendered_result_json_and_timings(
    page: Any, server: Server, tmp_path: Path, task: str, model: str, expect: str
) -> None:
    assert page.url == server.url + "/demo"
    page.select_option("#task", task)
    page.select_option("#model", model)
    page.fill("#confidence", "0.2")
    page.set_input_files("#file", str(shapes_image(tmp_path / "shapes.png")))  # runs at once
    page.wait_for_function(RENDERED, timeout=20_000)
    assert page.text_content("#status") == "done"
    assert page.eval_on_selector("#rendered", "img => [img.naturalWidth, img.naturalHeight]") == [
        320,
        240,
    ]
    assert expect in page.text_content("#json")
    assert f'"model": "{model}"' in page.text_content("#json")
    timings = page.text_content("#timings")
    assert "inference (batch)" in timings
    assert "ms" in timings
    screenshot(page, f"demo-{task}-{model}.png")


def test_a_pipeline_shows_the_picture_with_both_labels_and_stage_timings(
    page: Any, tmp_path: Path
) -> None:
    page.select_option("#task", "pipeline")
    assert page.eval_on_selector("#model", "s => s.value") == "tiny-pipeline"
    page.set_input_files("#file", str(shapes_image(tmp_path / "shapes.png")))
    page.wait_for_function(RENDERED, timeout=20_000)
    assert page.text_content("#status") == "done"
    assert page.eval_on_selector("#rendered", "img => [img.naturalWidth, img.naturalHeight]") == [
        320,
        240,
    ]
    json = page.text_content("#json")
    assert '"model": "tiny-pipeline"' in json
    assert '"classification"' in json
    timings = page.text_content("#timings")
    assert "detect stage" in timings and "classify stage" in timings
    screenshot(page, "demo-pipeline.png")


def test_classify_shows_the_image_with_ranked_predictions(page: Any, tmp_path: Path) -> None:
    page.select_option("#task", "classify")
    page.set_input_files("#file", str(shapes_image(tmp_path / "shapes.png")))
    page.wait_for_function(RENDERED, timeout=20_000)
    labels = page.eval_on_selector_all(
        ".predictions li span:first-child", "els => els.map(e => e.textContent)"
    )
    assert sorted(labels) == ["blue", "green", "red"]
    screenshot(page, "demo-classify.png")


def test_embed_shows_a_cosine_similarity_matrix(page: Any) -> None:
    page.select_option("#task", "embed")
    page.fill("#texts", "cat dog\ndog cat\nred truck")
    page.click("#run")
    page.wait_for_selector("#similarity", timeout=20_000)
    cells = page.eval_on_selector_all(
        "#similarity tbody tr",
        "rows => rows.map(r => [...r.querySelectorAll('td')].map(c => c.textContent))",
    )
    assert len(cells) == 3
    assert [cells[i][i] for i in range(3)] == ["1.000"] * 3
    assert cells[0][1] == "1.000"  # mean pooling ignores word order
    assert float(cells[0][2]) < 1.0
    screenshot(page, "demo-embed.png")


def test_errors_are_shown_not_thrown(page: Any, tmp_path: Path) -> None:
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_bytes(b"definitely not an image")
    page.select_option("#task", "detect")
    page.set_input_files("#file", str(not_an_image))
    page.wait_for_function("document.querySelector('#status').classList.contains('error')")
    assert page.text_content("#status").startswith("400:")
