"""The draw-a-digit page at /ui/ in headless Chromium against a real `bentoml serve`:
real MNIST test digits traced onto the pad as mouse (or finger) strokes must get their
label, an uploaded PNG and a phone photo of lined paper too, a text file a visible error;
the page shows the model's version and accuracy, loads nothing from other origins, and
keeps the accessible basics (keyboard, labels, contrast, phone width). Screenshots go to
tests/browser/artifacts/."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from harness.serve import free_port
from pipeline import photos
from serving.preprocess import digit_from_image
from tests.serving.images import render

pytestmark = pytest.mark.slow

DRAWN_LABELS = [0, 1, 2, 7]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1100, "height": 900}


# ----- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_to_draw(
    server: str, test_digits: tuple[np.ndarray, np.ndarray]
) -> dict[int, np.ndarray]:
    """For each label in DRAWN_LABELS, the first MNIST test digit the served model gets
    right with probability >= 0.95 from its own 28x28 array."""
    images, labels = test_digits
    answer = httpx.post(f"{server}/predict", json={"images": images.tolist()}, timeout=30).json()
    probabilities = np.array(answer["probabilities"])
    chosen = {}
    for label in DRAWN_LABELS:
        sure = np.flatnonzero((labels == label) & (probabilities[:, label] >= 0.95))
        assert sure.size, f"the stand-in model is never sure of a {label} in the first 300 digits"
        chosen[label] = images[sure[0]]
    return chosen


class Page:
    """A Playwright page on /ui/ that records requests to other origins and script errors."""

    def __init__(self, page: Any, server: str) -> None:
        self.page = page
        self.server = server
        self.foreign: list[str] = []
        self.script_errors: list[str] = []
        page.on("request", self._request)
        page.on("pageerror", lambda error: self.script_errors.append(str(error)))
        page.on("console", self._console)

    def _request(self, request: Any) -> None:
        if not request.url.startswith((self.server + "/", "data:", "blob:")):
            self.foreign.append(request.url)

    def _console(self, message: Any) -> None:
        if "Content Security Policy" in message.text:  # something the page tried to load
            self.foreign.append(message.text)

    def open(self) -> Page:
        self.page.goto(f"{self.server}/ui/")
        # expect() polls without eval, which the page's Content-Security-Policy forbids
        expect(self.page.locator("#model-info")).not_to_have_text("Loading model information…")
        return self

    def wait_idle(self) -> None:
        """Until no prediction is pending (the page keeps aria-busy on the result panel)."""
        self.page.wait_for_selector("#result[aria-busy=false]", timeout=15_000)

    def label(self) -> str:
        return self.page.inner_text("#label")

    def seen_pixels(self) -> np.ndarray:
        """The small 'image the model saw' canvas as (28, 28) uint8 (its red channel)."""
        rgba = self.page.evaluate(
            "Array.from(document.getElementById('seen').getContext('2d')"
            ".getImageData(0, 0, 28, 28).data)"
        )
        return np.array(rgba, dtype=np.uint8).reshape(28, 28, 4)[..., 0]

    def pad_png(self) -> bytes:
        data_url = self.page.evaluate("document.getElementById('pad').toDataURL('image/png')")
        return base64.b64decode(data_url.split(",", 1)[1])

    def shown_percentages(self) -> list[float]:
        texts = self.page.locator("#bars .pct").all_inner_texts()
        return [float(text.removesuffix(" %")) for text in texts]

    def screenshot(self, folder: Path, name: str) -> None:
        self.page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


@pytest.fixture
def ui(browser: Any, server: str) -> Iterator[Page]:
    """The page at desktop size; afterwards, no foreign requests and no script errors."""
    context = browser.new_context(viewport=DESKTOP)
    page = Page(context.new_page(), server)
    yield page
    context.close()
    assert page.foreign == [], f"the page loaded from other origins: {page.foreign}"
    assert page.script_errors == [], f"uncaught errors in the page: {page.script_errors}"


# ----- drawing --------------------------------------------------------------------------------


def ink_runs(digit: np.ndarray, threshold: int = 128) -> list[tuple[int, int, int]]:
    """(row, first column, last column) of every horizontal run of ink in a (28, 28) digit."""
    runs = []
    for row, line in enumerate(digit > threshold):
        edges = np.flatnonzero(np.diff(np.concatenate([[0], line.astype(np.int8), [0]])))
        runs += [(row, start, end - 1) for start, end in zip(edges[::2], edges[1::2], strict=True)]
    return runs


def strokes_on(pad_box: dict[str, float], digit: np.ndarray) -> list[tuple[float, ...]]:
    """The digit's ink runs as horizontal strokes (x0, y0, x1, y1) in page coordinates,
    the 28x28 grid scaled onto the middle 80 % of the pad."""
    cell = pad_box["width"] * 0.8 / 28
    left = pad_box["x"] + pad_box["width"] * 0.1
    top = pad_box["y"] + pad_box["height"] * 0.1
    strokes = []
    for row, first, last in ink_runs(digit):
        y = top + (row + 0.5) * cell
        strokes.append((left + (first + 0.5) * cell, y, left + (last + 0.5) * cell, y))
    return strokes


def draw_with_mouse(ui: Page, digit: np.ndarray) -> None:
    mouse = ui.page.mouse
    for x0, y0, x1, y1 in strokes_on(ui.page.locator("#pad").bounding_box(), digit):
        mouse.move(x0, y0)
        mouse.down()
        mouse.move(x1, y1, steps=2)
        mouse.up()


def draw_with_finger(ui: Page, digit: np.ndarray) -> None:
    """Real touch input through the DevTools protocol (Playwright has taps, not swipes)."""
    devtools = ui.page.context.new_cdp_session(ui.page)
    for x0, y0, x1, y1 in strokes_on(ui.page.locator("#pad").bounding_box(), digit):
        for kind, points in (
            ("touchStart", [{"x": x0, "y": y0}]),
            ("touchMove", [{"x": (x0 + x1) / 2, "y": y0}]),
            ("touchMove", [{"x": x1, "y": y1}]),
            ("touchEnd", []),
        ):
            devtools.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})
    devtools.detach()


def check_answer_matches_service(ui: Page, png: bytes) -> dict[str, Any]:
    """What the page shows equals what the service answers for the same image."""
    answer = httpx.post(
        f"{ui.server}/predict_image", content=png, headers={"Content-Type": "image/png"}
    ).json()
    assert ui.label() == str(answer["label"])
    np.testing.assert_array_equal(ui.seen_pixels(), np.array(answer["preprocessed"], np.uint8))
    expected = [round(100 * p, 1) for p in answer["probabilities"]]
    np.testing.assert_allclose(ui.shown_percentages(), expected, atol=0.051)
    best = ui.page.locator("#bars li.best .digit").all_inner_texts()
    assert best == [str(answer["label"])]
    unsure = ui.page.locator("#unsure")
    if answer["unsure"]:  # the cue, exactly when the service says so
        expect(unsure).to_be_visible()
    else:
        expect(unsure).to_be_hidden()
    return answer


# ----- tests ----------------------------------------------------------------------------------


def test_page_is_mounted_on_the_service_and_loads_only_its_own_assets(
    ui: Page, server: str
) -> None:
    redirect = httpx.get(f"{server}/ui")
    assert redirect.status_code == 307 and redirect.headers["location"].endswith("/ui/")
    for asset, media_type in [
        ("", "text/html"),
        ("app.js", "text/javascript"),
        ("style.css", "text/css"),
    ]:
        response = httpx.get(f"{server}/ui/{asset}")
        assert response.status_code == 200, asset
        assert response.headers["content-type"].startswith(media_type), asset
        assert "default-src 'self'" in response.headers["content-security-policy"]
    assert httpx.get(f"{server}/ui/missing.js").status_code == 404
    assert httpx.get(f"{server}/").status_code == 200  # the API page

    requested: list[str] = []
    ui.page.on("request", lambda request: requested.append(request.url))
    ui.open()
    assert {url.removeprefix(server) for url in requested} >= {
        "/ui/",
        "/ui/app.js",
        "/ui/style.css",
        "/model_info",
    }
    # ui's teardown asserts that nothing came from another origin


def test_page_shows_model_version_and_test_accuracy_from_model_info(ui: Page, server: str) -> None:
    info = httpx.post(f"{server}/model_info", json={}).json()
    line = ui.open().page.inner_text("#model-info")
    assert f"version {info['registry_version']}" in line
    assert f"{info['registry_model']}" in line
    assert f"test accuracy {100 * info['metrics']['test_accuracy']:.2f} %" in line


@pytest.mark.parametrize("label", DRAWN_LABELS)
def test_drawn_digit_gets_its_label(
    ui: Page, digits_to_draw: dict[int, np.ndarray], label: int, artifacts: Path
) -> None:
    ui.open()
    draw_with_mouse(ui, digits_to_draw[label])
    ui.wait_idle()
    ui.screenshot(artifacts, f"drawn_{label}")
    assert ui.label() == str(label)
    assert ui.page.inner_text("#source") == "From your drawing."
    check_answer_matches_service(ui, ui.pad_png())


def test_a_cross_that_is_no_digit_is_answered_as_a_guess(ui: Page, artifacts: Path) -> None:
    """A letter X has no right answer: the page says the model is unsure, not a bold digit."""
    ui.open()
    box = ui.page.locator("#pad").bounding_box()
    left, top = box["x"] + 60, box["y"] + 50
    right, bottom = box["x"] + box["width"] - 60, box["y"] + box["height"] - 50
    mouse = ui.page.mouse
    for (x0, y0), (x1, y1) in (((left, top), (right, bottom)), ((right, top), (left, bottom))):
        mouse.move(x0, y0)
        mouse.down()
        mouse.move(x1, y1, steps=12)
        mouse.up()
    ui.wait_idle()
    ui.screenshot(artifacts, "drawn_cross")
    assert check_answer_matches_service(ui, ui.pad_png())["unsure"]
    expect(ui.page.locator("#label")).to_have_class("guess")


def test_prediction_updates_while_a_stroke_is_still_being_drawn(ui: Page) -> None:
    ui.open()
    sent: list[str] = []
    ui.page.on(
        "request", lambda r: sent.append(r.url) if r.url.endswith("/predict_image") else None
    )
    box = ui.page.locator("#pad").bounding_box()
    x, top, bottom = box["x"] + box["width"] / 2, box["y"] + 40, box["y"] + box["height"] - 40
    mouse = ui.page.mouse
    mouse.move(x, top)
    mouse.down()
    for step in range(1, 31):  # a slow vertical stroke, about 1.5 s long
        mouse.move(x, top + (bottom - top) * step / 30)
        ui.page.wait_for_timeout(50)
    expect(ui.page.locator("#label")).not_to_have_text("–")  # answered before the pen lifts
    during = len(sent)
    assert during >= 2, f"{during} prediction(s) during a 1.5 s stroke; expected a few"
    mouse.up()
    ui.wait_idle()
    assert ui.label() == "1"  # a single vertical stroke
    assert len(sent) > during  # and the finished stroke is sent once more


def test_clear_empties_the_pad_and_the_answer(
    ui: Page, digits_to_draw: dict[int, np.ndarray]
) -> None:
    ui.open()
    draw_with_mouse(ui, digits_to_draw[7])
    ui.wait_idle()
    assert ui.label() == "7"
    ui.page.get_by_role("button", name="Clear").click()
    ui.wait_idle()
    assert ui.label() == "–"
    assert ui.shown_percentages() == [0.0] * 10
    assert not ui.seen_pixels().any()
    pad = np.asarray(Image.open(io.BytesIO(ui.pad_png())).convert("L"))
    assert not pad.any()  # all black again


def test_uploaded_png_gets_its_label_and_shows_the_image_the_model_saw(
    ui: Page, test_digits: tuple[np.ndarray, np.ndarray], artifacts: Path
) -> None:
    images, labels = test_digits
    png = render(images[1], size=240, dark_on_light=True)  # a "scan": dark ink on white paper
    ui.open()
    ui.page.get_by_label("upload a photo or scan").set_input_files(
        files=[{"name": "scan.png", "mimeType": "image/png", "buffer": png}]
    )
    ui.wait_idle()
    ui.screenshot(artifacts, "uploaded_png")
    assert ui.label() == str(labels[1])
    assert ui.page.inner_text("#source") == "From scan.png."
    np.testing.assert_array_equal(ui.seen_pixels(), digit_from_image(png))
    check_answer_matches_service(ui, png)
    assert ui.page.locator("#error").is_hidden()


def test_uploaded_photo_of_lined_paper_shows_the_digit_found_on_it(
    ui: Page, test_digits: tuple[np.ndarray, np.ndarray], artifacts: Path
) -> None:
    """A phone photo (640x480 JPEG: lined paper, uneven light, a small digit; see
    pipeline/photos.py): the page shows the label and the 28x28 digit found in it."""
    images, labels = test_digits
    jpeg = photos.photo(images[1], np.random.default_rng(0))
    ui.open()
    ui.page.get_by_label("upload a photo or scan").set_input_files(
        files=[{"name": "photo.jpg", "mimeType": "image/jpeg", "buffer": jpeg}]
    )
    ui.wait_idle()
    ui.screenshot(artifacts, "uploaded_photo")
    assert ui.label() == str(labels[1])
    assert ui.page.inner_text("#source") == "From photo.jpg."
    np.testing.assert_array_equal(ui.seen_pixels(), digit_from_image(jpeg))
    check_answer_matches_service(ui, jpeg)
    assert "the digit found on the page" in ui.page.inner_text("figcaption")


def test_uploaded_text_file_shows_a_visible_error(ui: Page, artifacts: Path) -> None:
    ui.open()
    ui.page.get_by_label("upload a photo or scan").set_input_files(
        files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a digit\n"}]
    )
    ui.wait_idle()
    error = ui.page.locator("#error")
    assert error.is_visible()
    assert error.get_attribute("role") == "alert"
    text = error.inner_text()
    assert "notes.txt" in text and "not a PNG or JPEG" in text and "HTTP 400" in text
    assert ui.label() == "–"
    ui.screenshot(artifacts, "error_text_upload")


@pytest.fixture
def page_without_service() -> Iterator[str]:
    """Only the page, served by uvicorn on 127.0.0.1 with no model service behind it, as
    when the service is down or not yet ready: /model_info and /predict_image fail."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from serving import ui as page_app

    port = free_port()
    app = Starlette(routes=[Mount("/ui", app=page_app.app)])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_service_that_does_not_answer_is_reported_in_the_page(
    browser: Any,
    page_without_service: str,
    digits_to_draw: dict[int, np.ndarray],
    artifacts: Path,
) -> None:
    context = browser.new_context(viewport=DESKTOP)
    ui = Page(context.new_page(), page_without_service).open()
    error = ui.page.locator("#error")
    assert error.is_visible()
    assert "No model information: the model service is not ready (HTTP 404" in error.inner_text()
    assert ui.page.inner_text("#model-info") == "Model information unavailable."
    draw_with_mouse(ui, digits_to_draw[1])
    ui.wait_idle()
    assert error.is_visible()
    assert error.inner_text().startswith(
        "Could not classify your drawing: the model service is not ready (HTTP 404"
    )
    assert ui.label() == "–"
    ui.screenshot(artifacts, "error_no_service")
    context.close()
    assert ui.script_errors == []


def test_controls_are_reachable_by_keyboard_and_labelled(
    ui: Page, digits_to_draw: dict[int, np.ndarray]
) -> None:
    ui.open()
    draw_with_mouse(ui, digits_to_draw[2])
    ui.wait_idle()
    assert ui.label() == "2"
    ui.page.locator("body").focus()
    reached = []
    for _ in range(6):
        ui.page.keyboard.press("Tab")
        reached.append(
            ui.page.evaluate("document.activeElement.id || document.activeElement.tagName")
        )
    assert reached[:5] == ["clear", "upload", "truth", "send-correction", "A"], reached
    ui.page.locator("#clear").focus()
    ui.page.keyboard.press("Enter")  # Clear works from the keyboard
    ui.wait_idle()
    assert ui.label() == "–"
    # Every control has an accessible name; the pad and the 28x28 image are described.
    assert ui.page.get_by_label("Or upload a photo or scan of a digit").count() == 1
    assert ui.page.get_by_role("img", name="Drawing area").count() == 1
    assert ui.page.get_by_role("img", name="The 28 by 28 image the model saw").count() == 1
    assert ui.page.evaluate("document.documentElement.lang") == "en"


def test_a_wrong_answer_is_corrected_from_the_keyboard_and_stored(
    ui: Page, digits_to_draw: dict[int, np.ndarray], feedback_dir: Path
) -> None:
    """ "Wrong? It was a _": chosen and sent with keys alone, the correction is stored with
    the 28x28 image the model saw."""
    from serving import feedback

    before = {(item["time"], item["label"]) for item in feedback.read(feedback_dir)}
    ui.open()
    expect(ui.page.locator("#correct")).to_be_hidden()  # nothing to correct yet
    draw_with_mouse(ui, digits_to_draw[2])
    ui.wait_idle()
    seen = ui.page.evaluate("state.seen")
    ui.page.locator("#truth").focus()
    ui.page.keyboard.press("7")  # a select takes its option's first letter
    ui.page.keyboard.press("Tab")
    assert ui.page.evaluate("document.activeElement.id") == "send-correction"
    ui.page.keyboard.press("Enter")
    expect(ui.page.locator("#correction-status")).to_have_text(
        "Thanks: kept as a 7, for the model to learn from."
    )
    items = feedback.read(feedback_dir)
    assert len(items) == len(before) + 1
    (item,) = [item for item in items if (item["time"], item["label"]) not in before]
    assert item["label"] == 7
    np.testing.assert_array_equal(item["pixels"], np.array(seen, dtype=np.uint8))


CONTRAST_SCRIPT = """() => {
  // WCAG 2 contrast of each visible text element against its nearest opaque background.
  const rgb = (css) => css.match(/[\\d.]+/g).map(Number);
  const luminance = ([r, g, b]) => [r, g, b]
    .map((v) => v / 255).map((v) => v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4)
    .reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
  const background = (element) => {
    for (let e = element; e; e = e.parentElement) {
      const colour = rgb(getComputedStyle(e).backgroundColor);
      if (colour.length === 3 || colour[3] === 1) return colour.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const found = [];
  for (const element of document.body.querySelectorAll("*")) {
    const own = [...element.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || !element.checkVisibility()) continue;
    const style = getComputedStyle(element);
    const [a, b] = [luminance(rgb(style.color)), luminance(background(element))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const size = parseFloat(style.fontSize), bold = parseInt(style.fontWeight) >= 700;
    const large = size >= 24 || (bold && size >= 18.66);
    found.push({text: element.textContent.trim().slice(0, 30), ratio, needed: large ? 3 : 4.5});
  }
  return found;
}"""


def test_text_has_sufficient_contrast(ui: Page, artifacts: Path) -> None:
    ui.open()
    ui.page.get_by_label("upload a photo or scan").set_input_files(
        files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"x"}]
    )  # so the error box is checked too
    ui.wait_idle()
    checked = ui.page.evaluate(CONTRAST_SCRIPT)
    assert len(checked) > 20 and any("notes.txt" in item["text"] for item in checked)
    poor = [item for item in checked if item["ratio"] < item["needed"]]
    assert poor == [], poor


def test_phone_width_finger_drawing(
    browser: Any, server: str, digits_to_draw: dict[int, np.ndarray], artifacts: Path
) -> None:
    context = browser.new_context(
        viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    ui = Page(context.new_page(), server).open()
    width = ui.page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1] == PHONE["width"], f"the page scrolls sideways: {width}"
    pad = ui.page.locator("#pad").bounding_box()
    assert pad["x"] >= 0 and pad["x"] + pad["width"] <= PHONE["width"]
    draw_with_finger(ui, digits_to_draw[0])
    ui.wait_idle()
    ui.screenshot(artifacts, "phone_drawn_0")
    assert ui.label() == "0"
    assert ui.page.evaluate("window.scrollY") == 0  # drawing did not scroll the page
    label_box = ui.page.locator("#label").bounding_box()
    assert label_box["y"] + label_box["height"] <= PHONE["height"]  # in view while drawing
    check_answer_matches_service(ui, ui.pad_png())
    context.close()
    assert ui.foreign == [] and ui.script_errors == []
