"""The demo page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by
Selenium; nothing is downloaded), against a real ``psn serve`` on a loopback port.

Marked ``browser``: ``make browser-test`` runs them (``--run-browser``); plain ``make test`` skips them.
With ``--run-browser`` a missing Chromium is a failure, not a skip.

Every test checks that the browser asked no host but the server for anything, and (except where errors are
the point) that the console stayed free of errors. The layout test saves ``docs/demo.png`` (1680×900) and
``docs/demo-phone.png`` (390×844).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from frames_model import NAME as FRAMES
from frames_model import write_frames_model, write_sum_model
from test_server_support import psn_serve as serve_process

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
SCREENSHOT = REPO / "docs" / "demo.png"
PHONE_SCREENSHOT = REPO / "docs" / "demo-phone.png"
SIZES = {"wide": (1680, 900), "laptop": (1280, 800), "phone": (390, 844)}
EVENTS = "events-no-examples"  # a model whose step is an event frame [2, 16, 16], with no examples.json
BROKEN = "broken-model"  # a model directory whose graph is not ONNX: it fails to load
SMNIST = ("smnist-psn", "smnist-masked-psn", "smnist-sliding-psn", "smnist-lif")
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
KEY = "browser-test-key-5c1e"
WINDOW = SIZES["wide"]


# -- a real server ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def psn_serve(log: Path, api_key: str | None = None, models: Path = MODELS) -> Iterator[str]:
    with serve_process(log, models, api_key=api_key) as proc:
        yield proc.base_url


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with psn_serve(tmp_path_factory.mktemp("browser") / "server.log") as base:
        yield base


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with psn_serve(tmp_path_factory.mktemp("browser") / "server-key.log", api_key=KEY) as base:
        yield base


@contextlib.contextmanager
def smnist_and(root: Path, add: Callable[[Path], object]) -> Iterator[str]:
    """A server of two sMNIST models copied into ``root`` and the models ``add(root)`` writes there."""
    for name in ("smnist-psn", "smnist-sliding-psn"):
        shutil.copytree(MODELS / name, root / name, ignore=shutil.ignore_patterns("checkpoint"))
    add(root)
    with psn_serve(root / "server.log", models=root) as base:
        yield base


@pytest.fixture(scope="module")
def frames_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Two sMNIST models and a model whose step is a whole [1, 28, 28] image (tests/frames_model.py)."""
    examples = MODELS / "smnist-psn" / "examples.json"
    with smnist_and(
        tmp_path_factory.mktemp("frames-models"), lambda root: write_frames_model(root, examples)
    ) as base:
        yield base


def events_and_broken(root: Path) -> None:
    """An event-frame model without examples, and a copy of it whose graph is not ONNX (it fails to load)."""
    w = np.random.default_rng(0).normal(size=(2 * 16 * 16, 3)).astype(np.float32)
    write_sum_model(
        root / EVENTS,
        name=EVENTS,
        shape=(2, 16, 16),
        T=6,
        w=w,
        labels=["left", "right", "up"],
        dataset="events",
    )
    shutil.copytree(root / EVENTS, root / BROKEN)
    manifest = json.loads((root / BROKEN / "manifest.json").read_text())
    (root / BROKEN / "manifest.json").write_text(json.dumps({**manifest, "name": BROKEN}))
    (root / BROKEN / "full.onnx").write_bytes(b"not an onnx graph")


@pytest.fixture(scope="module")
def mixed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Two sMNIST models, an event-frame model without examples and a model that fails to load."""
    with smnist_and(tmp_path_factory.mktemp("mixed-models"), events_and_broken) as base:
        yield base


# -- a real browser --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def driver() -> Iterator:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).is_file():
            pytest.fail(
                f"{path} is missing: apt-get install -y chromium chromium-driver (make browser-test does)"
            )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="psn-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        # a request to any other host fails to resolve, so nothing leaves even if the page tried
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    # an explicit chromedriver: Selenium Manager (which would download one) is never called
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Page:
    """The driver plus what the browser logged since the last ``open``."""

    def __init__(self, driver, base: str) -> None:
        self.driver = driver
        self.base = base

    def open(self, path: str) -> None:
        self.driver.get("about:blank")
        self.drain()
        self.driver.get(self.base + path)

    def drain(self) -> tuple[list[dict], list[str]]:
        console = self.driver.get_log("browser")
        urls = []
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                urls.append(message["params"]["request"]["url"])
            elif message["method"] == "Network.webSocketCreated":
                urls.append(message["params"]["url"])
        return console, urls

    def check_offline(self, console_errors_allowed: bool = False) -> list[str]:
        """Every request went to the server (or stayed inside the browser: data:, blob:); no console error."""
        console, urls = self.drain()
        origin = urlsplit(self.base).netloc
        outside = [u for u in urls if urlsplit(u).scheme not in ("data", "blob", "about", "chrome")]
        outside = [u for u in outside if urlsplit(u).netloc != origin]
        assert not outside, f"requests to other hosts: {outside}"
        assert any(urlsplit(u).netloc == origin for u in urls), "the log saw no request at all"
        if not console_errors_allowed:
            errors = [e for e in console if e["level"] in ("SEVERE", "WARNING")]
            assert not errors, f"console errors: {errors}"
        return urls

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def wait(self, what: str, predicate: Callable[[], object], timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                error = self.js("return document.getElementById('error')?.textContent")
                pytest.fail(f"timed out waiting for {what}; page error: {error!r}; panels: {self.panels()}")
            time.sleep(0.05)

    def panels(self) -> dict[str, dict[str, str]]:
        return self.js(
            "const out = {}; for (const p of document.querySelectorAll('[data-model]'))"
            " out[p.dataset.model] = {...p.dataset}; return out;"
        )

    def wait_done(self, names: tuple[str, ...], timeout: float = 60.0) -> dict[str, dict[str, str]]:
        def done() -> dict | None:
            panels = self.panels()
            finished = set(names) <= set(panels) and all(panels[n].get("done") == "true" for n in names)
            return panels if finished else None

        return self.wait("every panel to finish", done, timeout)

    def wait_ready(self) -> None:
        self.wait(
            "the page to load its models", lambda: self.js("return document.body.dataset.state") == "ready"
        )


@pytest.fixture
def page(driver, server: str) -> Page:
    return Page(driver, server)


def classify_labels(
    base: str, inputs: list, names: tuple[str, ...], key: str | None = None
) -> dict[str, str]:
    headers = {"X-API-Key": key} if key else {}
    labels = {}
    for name in names:
        response = httpx.post(f"{base}/v1/models/{name}/classify", json={"inputs": inputs}, headers=headers)
        response.raise_for_status()
        labels[name] = response.json()["predictions"][0]["label"]
    return labels


# -- tests ---------------------------------------------------------------------------------------------
def test_autoplay_of_a_real_digit_shows_the_psn_wait(page: Page, server: str) -> None:
    """The deep link plays test example 5 through the four sMNIST models: the PSN's first answer comes at
    step T-1 = 27, the others' at step 0; final labels equal POST classify of the same example."""
    page.open(f"/?models={','.join(SMNIST)}&sample=5&autoplay=1&interval_ms=120")
    page.wait(
        "the sliding PSN to reach step 12",
        lambda: int(page.panels().get("smnist-sliding-psn", {}).get("t", "-1")) >= 12,
    )
    psn = page.panels()["smnist-psn"]
    assert psn["label"] == "" and psn["firstReady"] == "" and psn["done"] == "false"  # still waiting
    assert page.driver.find_element("css selector", '[data-model="smnist-psn"] .waiting').is_displayed()

    panels = page.wait_done(SMNIST)
    order = page.js("return [...document.querySelectorAll('[data-model]')].map((p) => p.dataset.model)")
    assert order == list(SMNIST)  # side by side, in the order asked
    assert {n: panels[n]["firstReady"] for n in SMNIST} == {
        "smnist-psn": "27",
        "smnist-masked-psn": "0",
        "smnist-sliding-psn": "0",
        "smnist-lif": "0",
    }
    assert all(panels[n]["t"] == "27" for n in SMNIST)
    example = httpx.get(f"{server}/v1/models/smnist-psn/examples/5").json()
    assert example["label"] == "5"
    assert page.js("return window.psnDemo.inputs('smnist-lif')") == example["inputs"]
    expected = classify_labels(server, example["inputs"], SMNIST)
    assert {n: panels[n]["label"] for n in SMNIST} == expected
    page.check_offline()


def test_classify_button_and_interval_zero(page: Page, server: str) -> None:
    page.open("/?sample=2&autoplay=1&interval_ms=0")
    panels = page.wait_done(SMNIST)  # default: the four sMNIST models
    page.driver.find_element("id", "classify").click()
    page.wait(
        "classify answers",
        lambda: all(p.get("classifyLabel") for n, p in page.panels().items() if n in SMNIST),
    )
    after = page.panels()
    for name in SMNIST:
        assert after[name]["classifyLabel"] == panels[name]["label"]  # whole sequence == last streamed step
        text = page.driver.find_element("css selector", f'[data-model="{name}"] .classify-result').text
        assert "in the server" in text and "round trip" in text
    example = httpx.get(f"{server}/v1/models/smnist-psn/examples/2").json()
    assert {n: after[n]["classifyLabel"] for n in SMNIST} == classify_labels(
        server, example["inputs"], SMNIST
    )
    page.check_offline()


def _draw(page: Page, strokes: list[list[tuple[float, float]]], touch: bool = False) -> None:
    """Draw polylines given in [0, 1] coordinates of the stage canvas, with a mouse or a finger."""
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.interaction import POINTER_MOUSE, POINTER_TOUCH
    from selenium.webdriver.common.actions.pointer_input import PointerInput

    stage = page.driver.find_element("id", "stage")
    rect = page.js("const r = arguments[0].getBoundingClientRect(); return [r.left, r.top, r.width];", stage)
    left, top, side = rect
    for stroke in strokes:
        pointer = PointerInput(POINTER_TOUCH if touch else POINTER_MOUSE, "finger" if touch else "mouse")
        actions = ActionBuilder(page.driver, mouse=pointer, duration=8)
        points = []
        for (x0, y0), (x1, y1) in itertools.pairwise(stroke):
            points += [(x0 + (x1 - x0) * k / 8, y0 + (y1 - y0) * k / 8) for k in range(8)]
        points.append(stroke[-1])
        x, y = points[0]
        actions.pointer_action.move_to_location(int(left + x * side), int(top + y * side)).pointer_down()
        for x, y in points[1:]:
            actions.pointer_action.move_to_location(int(left + x * side), int(top + y * side))
        actions.pointer_action.pointer_up()
        actions.perform()


SEVEN = [[(0.28, 0.2), (0.72, 0.2), (0.45, 0.82)]]
ZERO = [[(0.5 + 0.22 * math.sin(a), 0.5 - 0.32 * math.cos(a)) for a in np.linspace(0, 2 * math.pi, 25)]]


@pytest.mark.parametrize(("digit", "strokes", "touch"), [("7", SEVEN, False), ("0", ZERO, True)])
def test_drawing_a_digit_and_playing_it(
    page: Page, server: str, digit: str, strokes: list, touch: bool
) -> None:
    page.open("/?interval_ms=0")
    page.wait_ready()
    page.driver.find_element("id", "tab-draw").click()
    _draw(page, strokes, touch=touch)
    page.wait(
        "the drawing to reach the panels", lambda: page.js("return window.psnDemo.inputs('smnist-psn')")
    )
    x = np.asarray(page.js("return window.psnDemo.inputs('smnist-psn')"), dtype=np.float64)  # [T=cols, rows]
    assert x.shape == (28, 28)
    assert x.min() >= 0 and x.max() == pytest.approx(1.0)  # MNIST's intensity range
    image = x.T  # [rows, cols]
    rows, cols = np.nonzero(image > 0.05)
    assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 in range(18, 23)  # ~20 px box
    mass = image.sum()
    centre = ((image.sum(1) * np.arange(28)).sum() / mass, (image.sum(0) * np.arange(28)).sum() / mass)
    assert centre == pytest.approx((14.0, 14.0), abs=0.6)  # centre of mass at (14, 14), like MNIST

    page.driver.find_element("id", "play").click()
    panels = page.wait_done(SMNIST)
    assert panels["smnist-psn"]["firstReady"] == "27" and panels["smnist-sliding-psn"]["firstReady"] == "0"
    labels = {n: panels[n]["label"] for n in SMNIST}
    assert labels == classify_labels(server, x.tolist(), SMNIST)
    assert sum(label == digit for label in labels.values()) >= 3, (
        labels
    )  # preprocessed like the training data
    page.check_offline()


def test_a_model_whose_step_is_a_whole_image(driver, frames_server: str, tmp_path: Path) -> None:
    """The page is generic over the per-step shape: a [1, 28, 28]-per-step model (T = 4) beside two
    sMNIST models plays its examples, and a drawing reaches it as the same image repeated over T."""
    page = Page(driver, frames_server)
    names = (FRAMES, "smnist-psn", "smnist-sliding-psn")
    page.open(f"/?models={','.join(names)}&sample=7&autoplay=1&interval_ms=0")
    panels = page.wait_done(names)
    assert (panels[FRAMES]["t"], panels[FRAMES]["firstReady"], panels[FRAMES]["label"]) == ("3", "0", "7")
    assert panels["smnist-psn"]["firstReady"] == "27"
    example = httpx.get(f"{frames_server}/v1/models/{FRAMES}/examples/7").json()
    assert np.asarray(example["inputs"]).shape == (4, 1, 28, 28)
    assert page.js(f"return window.psnDemo.inputs('{FRAMES}')") == example["inputs"]

    page.driver.find_element("id", "tab-draw").click()
    _draw(page, SEVEN)
    page.wait("the drawing to reach the panels", lambda: page.js(f"return window.psnDemo.inputs('{FRAMES}')"))
    frames = np.asarray(page.js(f"return window.psnDemo.inputs('{FRAMES}')"))  # [T, 1, 28, 28]
    columns = np.asarray(page.js("return window.psnDemo.inputs('smnist-psn')"))  # [T = cols, rows]
    assert frames.shape == (4, 1, 28, 28)
    assert all((frame == frames[0]).all() for frame in frames)  # one image, repeated over T
    np.testing.assert_array_equal(frames[0, 0], columns.T)  # the same preprocessed digit
    page.driver.find_element("id", "play").click()
    panels = page.wait_done(names)
    assert panels[FRAMES]["label"] == classify_labels(frames_server, frames.tolist(), (FRAMES,))[FRAMES]
    page.driver.save_screenshot(str(tmp_path / "frames.png"))
    page.check_offline()


def test_an_api_key_is_asked_for_as_a_browser_user_expects(driver, keyed_server: str) -> None:
    """A server with a key: the page asks for it (no talk of HTTP headers), says when it is wrong, keeps
    the right one, and hides the links to /docs, which such a server does not serve."""
    page = Page(driver, keyed_server)
    page.open("/")
    form = page.driver.find_element("id", "key-form")
    page.wait("the key form", form.is_displayed)
    assert "This server needs an API key" in form.text and "header" not in form.text.lower()
    assert page.js("return document.body.dataset.state") == "locked"
    assert not page.driver.find_element("id", "docs-link").is_displayed()
    key_field = page.driver.find_element("id", "api-key")
    assert key_field.get_attribute("type") == "password"
    key_field.send_keys("not-the-key")
    page.driver.find_element("id", "key-submit").click()
    hint = page.driver.find_element("id", "key-hint")
    page.wait("the wrong-key message", lambda: "not accepted" in hint.text)
    assert "401" in hint.text and "invalid API key" in hint.text
    assert not page.panels()

    key_field.clear()
    key_field.send_keys(KEY)
    page.driver.find_element("id", "key-submit").click()
    page.wait_ready()
    assert not form.is_displayed() and not page.driver.find_element("id", "error").is_displayed()
    time.sleep(0.5)  # the page asks the server whether it serves /docs
    assert not page.driver.find_element("id", "docs-link").is_displayed()
    page.driver.find_element("id", "play").click()
    panels = page.wait_done(SMNIST)  # the stream sockets carry the key too (?api_key=)
    assert panels["smnist-psn"]["firstReady"] == "27"
    page.js("localStorage.clear()")
    page.check_offline(console_errors_allowed=True)  # the two 401s are logged by the browser


def test_docs_links_show_on_a_server_without_a_key(page: Page) -> None:
    page.open("/")
    page.wait_ready()
    assert page.driver.find_element("id", "docs-link").is_displayed()
    assert httpx.get(page.base + "/docs").status_code == 200
    page.check_offline()


# -- the page on every screen ---------------------------------------------------------------------------
@contextlib.contextmanager
def viewport(page: Page, width: int, height: int) -> Iterator[None]:
    """The page as a screen of width × height CSS pixels sees it (a phone's: mobile, with its viewport)."""
    page.driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )
    try:
        yield
    finally:
        page.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


OUTSIDE = """
const vw = window.innerWidth, vh = window.innerHeight, out = [];
for (const [what, el] of arguments[0]) {
  const r = el.getBoundingClientRect();
  if (r.width === 0 || r.left < 0 || r.top < 0 || r.right > vw + 0.5 || r.bottom > vh + 0.5)
    out.push(`${what}: ${[r.left, r.top, r.right, r.bottom].map(Math.round)}`);
}
return {out, vw, vh, doc: document.documentElement.scrollWidth};
"""


def outside(page: Page, named: list[tuple[str, object]]) -> dict:
    """The named elements whose box is not wholly inside the viewport; the viewport's and page's widths."""
    return page.js(OUTSIDE, [[what, element] for what, element in named])


@pytest.mark.parametrize("size", list(SIZES), ids=lambda s: f"{s}-{SIZES[s][0]}x{SIZES[s][1]}")
def test_layout_fits_the_screen(page: Page, size: str) -> None:
    """Mid-sequence, without scrolling: no sideways scroll; Play, Classify, the interval and all four sMNIST
    panels with their name, answer and first-answer row inside the viewport (the phone shows the picker
    folded into one line). Writes docs/demo.png (wide) and docs/demo-phone.png (phone)."""
    width, height = SIZES[size]
    with viewport(page, width, height):
        page.open(f"/?models={','.join(SMNIST)}&sample=5&autoplay=1&interval_ms=250")
        page.wait(
            "the sliding PSN to reach step 12",
            lambda: int(page.panels().get("smnist-sliding-psn", {}).get("t", "-1")) >= 12,
        )
        assert page.panels()["smnist-psn"]["firstReady"] == ""  # the PSN still waits, 15 steps to go
        if size in ("wide", "phone"):  # mid-sequence: the PSN waits, the others answer
            shot = SCREENSHOT if size == "wide" else PHONE_SCREENSHOT
            shot.parent.mkdir(exist_ok=True)
            page.driver.save_screenshot(str(shot))
        find = page.driver.find_element
        named = [(what, find("id", what)) for what in ("play", "classify", "interval")]
        for name in SMNIST:
            for part in ("h2", ".answer", ".stats > div:first-child"):
                named.append((f"{name} {part}", find("css selector", f'[data-model="{name}"] {part}')))
        picker = "picker-summary" if size == "phone" else "model-picker"
        named.append((picker, find("id", picker)))
        if size == "phone":
            assert not find("id", "model-picker").is_displayed()  # folded: the summary names the models
            assert find("id", "picker-summary").text.startswith("models (4 of 9)")
        result = outside(page, named)
        assert (result["vw"], result["vh"]) == (width, height)
        assert result["doc"] <= width, f"the page scrolls sideways: {result['doc']} px wide"
        assert not result["out"], f"outside the {width}×{height} viewport: {result['out']}"
        page.wait_done(SMNIST)
    page.check_offline()


@pytest.mark.parametrize("width", [360, 375, 390, 412, 430])
def test_no_sideways_scroll_on_phones(page: Page, width: int) -> None:
    with viewport(page, width, 800):
        page.open("/?sample=3")
        page.wait_ready()
        for mode in ("draw", "sample"):
            page.driver.find_element("id", f"tab-{mode}").click()
            doc = page.js("return document.documentElement.scrollWidth")
            assert doc <= width, f"{mode}: the page is {doc} px wide on a {width} px screen"
    page.check_offline()


def test_header_and_thumbnails_follow_the_input_kind(page: Page) -> None:
    """The header says what one step is for the models on screen; the draw tab is off where a digit does
    not fit (a 1-D signal)."""
    page.open("/?models=smnist-psn,smnist-lif")
    page.wait_ready()
    lede = page.driver.find_element("id", "lede-input")
    assert lede.text == "one image column per step"
    assert page.driver.find_element("id", "tab-draw").is_enabled()
    page.open("/?models=mnist1d-psn,mnist1d-sliding-psn&sample=1&autoplay=1&interval_ms=0")
    page.wait_done(("mnist1d-psn", "mnist1d-sliding-psn"))
    assert page.driver.find_element("id", "lede-input").text == "one value of a 1-D signal per step"
    assert not page.driver.find_element("id", "tab-draw").is_enabled()
    page.open("/?models=mnist2d-sliding-psn")
    page.wait_ready()
    assert page.driver.find_element("id", "lede-input").text == "the whole 1×28×28 image at every step"
    titles = page.js("return [...document.querySelectorAll('.picker-title')].map((t) => t.textContent)")
    assert "sMNIST · a digit, one column per step" in titles and any(t.startswith("MNIST-1D") for t in titles)
    page.check_offline()


def test_a_failed_model_and_one_without_examples(driver, mixed_server: str) -> None:
    """A model that failed to load is a disabled chip with its reason (and a deep link naming it says so);
    a model without examples offers random inputs of its shape, which play and classify like any input."""
    page = Page(driver, mixed_server)
    page.open(f"/?models={BROKEN},smnist-psn")
    page.wait_ready()
    chip = page.driver.find_element("css selector", f'.model-chip[data-name="{BROKEN}"]')
    assert not chip.is_enabled() and chip.get_attribute("data-status") == "failed"
    assert chip.get_attribute("title").startswith(f"{BROKEN} failed to load: ")
    assert "failed" in chip.text
    error = page.driver.find_element("id", "error")
    assert error.is_displayed() and f"{BROKEN} failed to load" in error.text
    assert list(page.panels()) == ["smnist-psn"]
    with viewport(page, 390, 844):  # the long reason (two sha256) wraps on a phone
        page.open(f"/?models={BROKEN},smnist-psn&autoplay=1&interval_ms=0")
        page.wait_done(("smnist-psn",))
        error = page.driver.find_element("id", "error")
        assert f"{BROKEN} failed to load" in error.text  # still said after playing
        assert page.js("return document.documentElement.scrollWidth") <= 390

    page.open(f"/?models={EVENTS}&sample=2&autoplay=1&interval_ms=0")
    panels = page.wait_done((EVENTS,))
    assert panels[EVENTS]["t"] == "5" and panels[EVENTS]["firstReady"] == "0"
    thumbs = page.js("return [...document.querySelectorAll('.thumb')].map((t) => t.textContent)")
    assert thumbs == [f"r{i}" for i in range(10)]  # random inputs, as the model ships no examples
    x = np.asarray(page.js(f"return window.psnDemo.inputs('{EVENTS}')"))
    assert x.shape == (6, 2, 16, 16) and x.min() >= 0 and x.max() < 1
    assert panels[EVENTS]["label"] == classify_labels(mixed_server, x.tolist(), (EVENTS,))[EVENTS]
    note = page.driver.find_element("css selector", f'[data-model="{EVENTS}"] .panel-note')
    assert note.is_displayed() and "random input 2" in note.text
    assert page.driver.find_element("id", "lede-input").text == "one event frame (ON and OFF) per step"
    assert not page.driver.find_element("id", "tab-draw").is_enabled()  # no digit fits [2, 16, 16]
    page.check_offline()


def test_swagger_ui_renders_offline(page: Page) -> None:
    page.open("/docs")
    page.wait(
        "Swagger UI to render the API",
        lambda: page.js(
            "const t = document.querySelector('.swagger-ui .info .title');"
            "return t && t.textContent.includes('psn-serve')"
            " && document.querySelectorAll('.opblock').length > 10"
        ),
    )
    text = page.js("return document.body.innerText")
    assert "/v1/models/{name}/classify" in text and "/v1/models/{name}/examples/{i}" in text
    assert "Streams: WS /v1/models/{name}/stream" in text and "Snapshots" in text  # the WebSocket protocol
    tags = page.js("return [...document.querySelectorAll('.opblock-tag')].map((t) => t.dataset.tag)")
    assert tags[0] == "classify", tags  # in the declared order (streams has no HTTP operation to list)
    assert {"Open Inference Protocol", "models", "examples", "health"} <= set(tags), tags
    urls = page.check_offline()
    assert any(u.endswith("/docs-assets/swagger-ui-bundle.js") for u in urls)


def test_redoc_renders_offline(page: Page) -> None:
    page.open("/redoc")
    page.wait(
        "ReDoc to render the API",
        lambda: page.js(
            "const h = document.querySelector('h1');"
            "return h && h.textContent.includes('psn-serve')"
            " && document.body.innerText.includes('/v1/models/{name}/classify')"
        ),
        timeout=60,
    )
    urls = page.check_offline()
    assert any(u.endswith("/docs-assets/redoc.standalone.js") for u in urls)
