"""The demo page (``GET /`` and its static files), the examples endpoint, and the offline API docs.

- ``GET /`` and ``/static/...``: public (the page asks for the API key itself, when the server has one).
  Plain HTML, CSS and JavaScript from ``server/static``: no CDN, no build step. The page uses only the
  public API (models list, WebSocket stream, classify, examples, ``/v2`` server metadata).
- ``GET /v1/models/{name}/examples`` and ``.../examples/{i}``: the key, like every /v1 route.
- ``/docs`` (Swagger UI), ``/redoc`` and their assets from the ``fastapi-offline`` package, so they load
  with no internet; like ``/openapi.json`` they exist only when the server has no API key.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from server.auth import require_key
from server.dataplane import DataPlane, Plane
from server.errors import ErrorRoute, NotFound
from server.examples import Examples, load_examples
from server.jsonio import JSONBytesResponse
from server.schemas import errors, ok

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_URL = "/static"
DOCS_ASSETS_URL = "/docs-assets"
DOCS_URL, REDOC_URL = "/docs", "/redoc"
FAVICON_URL = f"{STATIC_URL}/favicon.svg"
REDOC_JS = "redoc.standalone.js"
REDOC_CDN_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"  # ReDoc's sidebar logo: the one outside URL

# The page talks to its own origin only (HTTP and WebSocket); nothing else may load.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data: blob:; "
        "style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class ExampleItem(BaseModel):
    index: int = Field(description="i, for GET /v1/models/{name}/examples/{i}")
    label: str = Field(description="the true label")
    source_index: int | None = Field(description="position in the data set's split it was taken from")


class ExampleList(BaseModel):
    model: str
    count: int
    dataset: str | None
    split: str | None
    examples: list[ExampleItem]


class Example(BaseModel):
    model: str
    index: int
    label: str = Field(description="the true label")
    inputs: list = Field(description="[T, *input_shape] numbers: the body of classify, or T stream steps")
    source_index: int | None


api = APIRouter(prefix="/v1", route_class=ErrorRoute, dependencies=[Depends(require_key)])
page = APIRouter(route_class=ErrorRoute)


def _examples(plane: DataPlane, name: str) -> tuple[Examples | None, str]:
    info = plane.model(name)  # unknown model: 404
    if info.manifest is None:  # the manifest itself failed to load: nothing to check examples against
        return None, f"model {name!r} has no examples (its manifest failed to load)"
    return load_examples(info.directory, info.manifest), f"model {name!r} has no examples"


@api.get(
    "/models/{name}/examples",
    summary="List a model's examples",
    response_model=None,
    responses={**ok(ExampleList), **errors(401, 404, 503)},
)
async def list_examples(name: str, plane: Plane) -> Response:
    """The examples shipped beside the model (real test inputs): ``{"model", "count", "dataset", "split",
    "examples": [{"index", "label", "source_index"}]}``; ``count`` is 0 for a model without any."""
    found, _ = _examples(plane, name)
    entries = found.entries if found is not None else ()
    return JSONBytesResponse(
        {
            "model": name,
            "count": len(entries),
            "dataset": found.dataset if found is not None else None,
            "split": found.split if found is not None else None,
            "examples": [
                {"index": i, "label": e.label, "source_index": e.index} for i, e in enumerate(entries)
            ],
        }
    )


@api.get(
    "/models/{name}/examples/{i}",
    summary="One example, ready to classify or stream",
    response_model=None,
    responses={**ok(Example), **errors(401, 404, 422, 500, 503)},
)
async def get_example(name: str, i: int, plane: Plane) -> Response:
    """Example ``i``: ``{"model", "index", "label", "inputs": [T × per-step shape], "source_index"}``, ready
    to send to classify (``inputs``) or to stream one step at a time. 404 when the model has no examples
    or ``i`` is out of range."""
    found, none_message = _examples(plane, name)
    if found is None or not found.entries:
        raise NotFound(none_message, "name")
    if not 0 <= i < len(found.entries):
        raise NotFound(f"example {i} is out of range: model {name!r} has {len(found.entries)}", "i")
    entry = found.entries[i]
    return JSONBytesResponse(
        {"model": name, "index": i, "label": entry.label, "inputs": entry.inputs, "source_index": entry.index}
    )


@page.get("/", include_in_schema=False)
async def index() -> Response:
    """The demo page."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=PAGE_HEADERS)


def _docs_page(render: Callable[..., HTMLResponse], fixed: dict[str, Any], **urls: str) -> Callable:
    """An endpoint answering ``render(**fixed, **urls)``, each of ``urls`` (a path on this server) behind
    the request's root path (a proxy prefix)."""

    async def endpoint(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return render(**fixed, **{key: f"{root}{path}" for key, path in urls.items()})

    return endpoint


def _docs_router(title: str, openapi_url: str) -> APIRouter:
    docs = APIRouter()
    oauth2_redirect = f"{DOCS_URL}/oauth2-redirect"
    swagger_ui = _docs_page(
        get_swagger_ui_html,
        # the default validator badge would call an outside host
        {"title": f"{title} - Swagger UI", "swagger_ui_parameters": {"validatorUrl": None}},
        openapi_url=openapi_url,
        oauth2_redirect_url=oauth2_redirect,
        swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=FAVICON_URL,
    )
    redoc = _docs_page(
        get_redoc_html,
        {"title": f"{title} - ReDoc", "with_google_fonts": False},
        openapi_url=openapi_url,
        redoc_js_url=f"{DOCS_ASSETS_URL}/{REDOC_JS}",
        redoc_favicon_url=FAVICON_URL,
    )
    add_page = functools.partial(docs.add_api_route, methods=["GET"], include_in_schema=False)
    add_page(DOCS_URL, swagger_ui, name="swagger_ui", summary="The API docs (Swagger UI, served offline).")

    @docs.get(oauth2_redirect, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        """Swagger UI's OAuth2 redirect page."""
        return get_swagger_ui_oauth2_redirect_html()

    add_page(REDOC_URL, redoc, name="redoc", summary="The API docs (ReDoc, served offline).")

    @docs.get(f"{DOCS_ASSETS_URL}/{REDOC_JS}", include_in_schema=False)
    async def redoc_js() -> Response:
        """ReDoc's script, its logo served by this server."""
        return Response(_offline_redoc_js(), media_type="text/javascript; charset=utf-8")

    return docs


def docs_assets_dir() -> Path:
    """Swagger UI and ReDoc, as shipped in the fastapi-offline wheel."""
    return Path(str(resources.files("fastapi_offline") / "static"))


@functools.cache
def _offline_redoc_js() -> bytes:
    """ReDoc with its sidebar logo taken from this server (it always loads it from a CDN otherwise)."""
    return (docs_assets_dir() / REDOC_JS).read_bytes().replace(REDOC_CDN_LOGO, FAVICON_URL.encode())


def install(app: FastAPI, *, docs: bool) -> None:
    """Add the page, its static files and the examples routes; the offline docs too when ``docs``
    (build the app with ``docs_url=None, redoc_url=None`` so FastAPI's CDN pages are not there)."""
    app.include_router(api)
    app.include_router(page)
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="static")
    if docs and app.openapi_url:
        app.include_router(_docs_router(app.title, app.openapi_url))
        app.mount(DOCS_ASSETS_URL, StaticFiles(directory=docs_assets_dir()), name="docs-assets")
