"""The viewer page end to end: headless Chromium, the page over HTTP, a TorchServe allowing its origin (CORS);
the method picker from the model's description (or the registry's methods.json), each kind of map shown.

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and the ``playwright``
package; Playwright's own browser download is never used.
"""

from __future__ import annotations

import base64
import functools
import io
import json
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image, ImageOps

from handlers.engine.methods import METHODS
from handlers.inspection import INPUT_SIZE, scenes, synthetic
from handlers.render.original import overlay_on_original
from handlers.testing.local_http import serving
from handlers.testing.torchserve import TorchServe, free_port

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is missing (pip install playwright)"
)

VIEWER_DIR = Path(__file__).resolve().parents[2] / "handlers" / "viewer"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DEV_CONFIG = Path(__file__).resolve().parents[2] / "config.properties"
WAIT_MS = 90_000


class QuietHandler(SimpleHTTPRequestHandler):
    """Serves the viewer folder without logging every request to stderr."""

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def viewer_origin() -> Iterator[str]:
    """``http://127.0.0.1:PORT`` serving handlers/viewer, as ``make viewer`` does on port 8090."""
    with serving(functools.partial(QuietHandler, directory=str(VIEWER_DIR))) as url:
        yield url


@pytest.fixture(scope="module")
def cors_server(model_store, viewer_origin, tmp_path_factory) -> Iterator[TorchServe]:
    """The default model behind config.properties' CORS settings, the origin moved to this test's viewer port."""
    config = {"cors_allowed_origin": viewer_origin}
    with TorchServe(
        model_store, {"inspection": "inspection.mar"}, tmp_path_factory.mktemp("cors"), config, base_config=DEV_CONFIG
    ) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, viewer_origin, cors_server):
    """The viewer, opened at its origin and pointed at the CORS server."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{viewer_origin}/")
    page.fill("#api-url", cors_server.url())
    yield page
    context.close()


@pytest.fixture(scope="module")
def sample_files(samples, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("viewer_samples")
    paths = {kind: folder / f"{kind.replace('+', '_')}.png" for kind in samples}
    for kind, path in paths.items():
        path.write_bytes(samples[kind])
    return paths


def overlays(page) -> list[dict]:
    return page.evaluate("""() => [...document.querySelectorAll('img.overlay')].map(img => ({
        method: img.dataset.method, target: img.dataset.target, src: img.src,
        width: img.naturalWidth, height: img.naturalHeight, complete: img.complete}))""")


def settle(page, condition: str) -> None:
    """Wait until the JS expression ``condition`` holds or the page shows an error (then fail with it)."""
    page.wait_for_function(f"() => ({condition}) || document.querySelector('#status.error') !== null", timeout=WAIT_MS)
    assert page.query_selector("#status.error") is None, page.inner_text("#status")


def overlay_targets(*targets: str) -> str:
    """JS condition: the drawn overlays explain exactly ``targets``, in order, and are decoded."""
    expected = json.dumps(list(targets), separators=(",", ":"))
    return (
        "(() => { const imgs = [...document.querySelectorAll('img.overlay')];"
        f" return JSON.stringify(imgs.map(i => i.dataset.target)) === '{expected}'"
        " && imgs.every(i => i.complete && i.naturalWidth > 0); })()"
    )


def decoded(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(src[len(prefix) :])))
    image.load()
    return image


def test_preflight_answers_the_viewer_origin(cors_server, viewer_origin):
    """The proposed cors_* keys work in TorchServe 0.12: OPTIONS from the page's origin is allowed."""
    answer = requests.options(
        f"{cors_server.url()}/predictions/inspection",
        timeout=30,
        headers={
            "Origin": viewer_origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-explain-format, x-explain-target",
        },
    )
    assert answer.status_code == 200
    assert answer.headers["Access-Control-Allow-Origin"] == viewer_origin
    assert "POST" in answer.headers["Access-Control-Allow-Methods"]
    assert "X-Explain-Target" in answer.headers["Access-Control-Allow-Headers"]


def test_page_shows_bars_and_both_overlays(page, sample_files):
    page.set_input_files("#file", str(sample_files["scratch"]))
    settle(page, overlay_targets("scratch", "scratch"))
    bars = page.eval_on_selector_all(
        "#bars .bar", "rows => rows.map(r => [r.dataset.label, Number(r.dataset.probability)])"
    )
    assert len(bars) == 3 and bars[0][0] == "scratch" and bars[0][1] > 0.5
    assert [bar[1] for bar in bars] == sorted((bar[1] for bar in bars), reverse=True)
    assert "top prediction: scratch" in page.inner_text("#status")
    assert page.evaluate("document.getElementById('input-image').naturalWidth") == INPUT_SIZE
    drawn = overlays(page)
    assert [(o["method"], o["target"]) for o in drawn] == [("gradcam", "scratch"), ("guided_gradcam", "scratch")]
    for overlay in drawn:
        assert (overlay["width"], overlay["height"]) == (INPUT_SIZE, INPUT_SIZE)
        picture = decoded(overlay["src"])
        assert picture.format == "PNG" and picture.size == (INPUT_SIZE, INPUT_SIZE)
        assert np.asarray(picture.convert("RGB"), dtype=np.float32).std() > 5
    assert decoded(drawn[0]["src"]).tobytes() != decoded(drawn[1]["src"]).tobytes()


def test_target_from_the_first_prediction_labels(page, sample_files):
    page.select_option("#method", "gradcam")
    page.set_input_files("#file", str(sample_files["scratch+dent"]))
    settle(page, overlay_targets("dent"))
    labels = page.eval_on_selector_all("#target-select option", "options => options.map(o => o.value)")
    assert set(labels) == {"", "ok", "scratch", "dent"}
    for target in ("scratch", "dent"):
        page.select_option("#target-select", target)
        settle(page, overlay_targets(target))
    page.fill("#target-text", "1")
    page.press("#target-text", "Enter")
    settle(page, overlay_targets("scratch"))
    assert overlays(page)[0]["method"] == "gradcam"


def test_browser_preflighted_request_is_allowed(page, cors_server, sample_files):
    """A JSON body with X-Explain-* headers makes Chromium send a real preflight: it must pass."""
    image = base64.b64encode(sample_files["dent"].read_bytes()).decode()
    answer = page.evaluate(
        """async ([url, image]) => {
        const response = await fetch(url, {method: 'POST', body: JSON.stringify({data: image}),
            headers: {'Content-Type': 'application/json', 'X-Explain-Format': 'overlay', 'X-Explain-Target': 'dent'}});
        return {status: response.status, body: await response.json()};
    }""",
        [f"{cors_server.url()}/predictions/inspection", image],
    )
    assert answer["status"] == 200
    assert answer["body"]["explanations"][0]["target"]["label"] == "dent" and "png" in answer["body"]["explanations"][0]


def test_server_errors_are_shown(page, sample_files):
    page.fill("#model", "no_such_model")
    page.set_input_files("#file", str(sample_files["ok"]))
    page.wait_for_selector("#status.error", timeout=WAIT_MS)
    message = page.inner_text("#status")
    assert "HTTP 404" in message and "no_such_model" in message
    assert overlays(page) == []


def test_management_api_allows_the_viewer_origin(cors_server, viewer_origin):
    """TorchServe applies cors_allowed_origin to the management port too: the page may read the description."""
    answer = requests.get(
        f"{cors_server.url('management')}/models/inspection",
        params={"customized": "true"},
        headers={"Origin": viewer_origin},
        timeout=30,
    )
    assert answer.status_code == 200 and answer.headers["Access-Control-Allow-Origin"] == viewer_origin
    assert [m["name"] for m in answer.json()[0]["customizedMetadata"]["methods"]] == list(METHODS)


def described(page, cors_server) -> None:
    """Point the page at the CORS server's management API and wait for its description."""
    page.fill("#management-url", cors_server.url("management"))
    page.dispatch_event("#management-url", "change")
    source = f"from its description (management API at {cors_server.url('management')})"
    page.wait_for_function(f"document.getElementById('method-source').textContent.includes({source!r})")


def shown_options(page) -> list[str]:
    return page.eval_on_selector_all("[data-option]:not([hidden])", "labels => labels.map(l => l.dataset.option)")


def test_method_picker_and_options_follow_the_description(page, cors_server):
    described(page, cors_server)
    assert "fallback" not in (page.get_attribute("#method-source", "class") or "")
    methods = page.eval_on_selector_all("#method option", "options => options.map(o => o.value)")
    assert methods == ["both", *METHODS]
    expected = {"activations": ["layer", "channel", "channels"], "occlusion": ["window", "stride"]}
    expected |= {"integrated_gradients": ["steps"], "gradcam": []}
    for method, options in expected.items():
        page.select_option("#method", method)
        assert shown_options(page) == options
        assert page.is_disabled("#target-select") == (not METHODS[method].class_specific)
    layers = page.eval_on_selector_all("#layer option", "options => options.map(o => o.value)")
    assert layers[:3] == ["", "features", "features.17"]


def test_activations_come_back_as_one_mosaic(page, cors_server, sample_files):
    described(page, cors_server)
    page.select_option("#method", "activations")
    page.select_option("#layer", "features.14")
    page.fill("#channels", "6")
    page.set_input_files("#file", str(sample_files["scratch"]))
    settle(page, "document.querySelector('img.overlay.tiles') !== null")
    (mosaic,) = overlays(page)
    assert mosaic["method"] == "activations" and mosaic["target"] == ""
    picture = decoded(mosaic["src"])
    assert picture.mode == "L" and picture.size == (3 * 17 - 1, 2 * 17 - 1), "2 x 3 tiles of 16 x 16, 1 px apart"
    assert page.inner_text("figure:has(img.tiles) figcaption") == "activations: 6 channels of features.14"


@pytest.mark.parametrize(
    ("method", "fields"), [("occlusion", {"#window": "32", "#stride": "16"}), ("integrated_gradients", {"#steps": "4"})]
)
def test_input_resolution_maps_are_shown(page, cors_server, sample_files, method, fields):
    described(page, cors_server)
    page.select_option("#method", method)
    for selector, value in fields.items():
        page.fill(selector, value)
    page.set_input_files("#file", str(sample_files["dent"]))
    settle(page, overlay_targets("dent"))
    (drawn,) = overlays(page)
    assert drawn["method"] == method and (drawn["width"], drawn["height"]) == (INPUT_SIZE, INPUT_SIZE)
    assert np.asarray(decoded(drawn["src"]).convert("RGB"), dtype=np.float32).std() > 5
    assert "input resolution, class-specific" in page.inner_text("figure:has(img.overlay) .note")


def test_registry_is_the_fallback_when_the_management_api_is_unreachable(page, sample_files):
    page.fill("#management-url", f"http://127.0.0.1:{free_port()}")
    page.dispatch_event("#management-url", "change")
    page.wait_for_function("document.getElementById('method-source').classList.contains('fallback')")
    assert "engine's registry" in page.inner_text("#method-source")
    methods = page.eval_on_selector_all("#method option", "options => options.map(o => o.value)")
    assert methods == ["both", *METHODS]
    page.select_option("#method", "eigencam")
    page.set_input_files("#file", str(sample_files["scratch"]))
    settle(page, overlay_targets(""))
    assert page.inner_text("figure:has(img.overlay) figcaption") == "eigencam: the image (class-agnostic)"


def upright_rgb(data: bytes) -> Image.Image:
    return ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")


def test_maps_on_the_original_picture(page, cors_server, tmp_path):
    """An EXIF-turned, non-square photo: the map is drawn over the upright photo at its size, as the client draws it."""
    rng = np.random.default_rng(20261128)
    taken = scenes.photo(synthetic.render("scratch", rng), (320, 192), orientation=6)
    path = tmp_path / "turned.jpg"
    path.write_bytes(taken.data)
    page.select_option("#method", "gradcam")
    page.select_option("#show-on", "original")
    assert page.is_visible("#alpha")
    page.set_input_files("#file", str(path))
    settle(page, overlay_targets("scratch"))
    (drawn,) = overlays(page)
    assert (drawn["width"], drawn["height"]) == (320, 192)
    answer = requests.post(
        f"{cors_server.url()}/predictions/inspection", files={"data": taken.data}, data={"format": "grid"}, timeout=60
    ).json()
    expected = overlay_on_original(
        upright_rgb(taken.data), np.array(answer["explanations"][0]["heatmap"]), answer["geometry"]["box"]
    )
    difference = np.abs(
        np.asarray(decoded(drawn["src"]).convert("RGB"), dtype=np.float64) - np.asarray(expected, dtype=np.float64)
    )
    assert difference.mean() < 1.0 and np.percentile(difference, 99) <= 4, (
        "the browser's JPEG decoding may differ slightly"
    )
    assert "the model saw the box (0, 0, 320, 192)" in page.inner_text("figure:has(img.original) .note")


def test_the_page_draws_what_the_renderer_draws_where_the_box_crops(page):
    """The page's sums against handlers.render.original on a box that cuts the picture (fractional, past one edge)."""
    rng = np.random.default_rng(5)
    picture = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    heatmap = rng.random((7, 9))
    box = [10.3, -4.6, 47.8, 30.2]
    rgba = np.concatenate([picture, np.full((37, 53, 1), 255, np.uint8)], axis=2)
    drawn = page.evaluate(
        """async ([pixels, width, height, heatmap, box]) => {
        const bitmap = await createImageBitmap(new ImageData(new Uint8ClampedArray(pixels), width, height));
        const canvas = drawOnOriginal(bitmap, heatmap, box, 0.6);
        return Array.from(canvas.getContext("2d").getImageData(0, 0, width, height).data);
    }""",
        [rgba.flatten().tolist(), 53, 37, heatmap.tolist(), box],
    )
    browser = np.array(drawn, dtype=np.int64).reshape(37, 53, 4)[..., :3]
    expected = np.asarray(overlay_on_original(Image.fromarray(picture), heatmap, box, alpha=0.6), dtype=np.int64)
    assert np.abs(browser - expected).max() <= 1
