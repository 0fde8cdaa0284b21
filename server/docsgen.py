"""``make docs`` (``python -m server.docsgen``): the tables in docs/ that the code defines, written from it.

Three tables live between ``<!-- BEGIN GENERATED name ... -->`` and ``<!-- END GENERATED name -->`` markers
in any docs/*.md page, and are rewritten from:

- ``routes``: the app's routes (method, path, who may call it, tag, summary), as ``build_app`` makes them;
- ``errors``: ``server.errors.ERROR_TABLE``, one row per error with one column per field of its spec
  (HTTP status, WebSocket close code or error event, and whatever else the table holds);
- ``settings``: ``server.settings.Settings`` (flag, environment variable, default, meaning).

``python -m server.docsgen --check`` changes nothing and exits 1 naming the stale pages (tests/test_docs.py
runs the same check in ``make test``).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import sys
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from server import apidoc, errors
from server.cli import default_text, flag_text
from server.settings import Settings

DOCS_DIR = Path(__file__).resolve().parents[1] / "docs"
_REGION = re.compile(
    r"(?P<begin><!-- BEGIN GENERATED (?P<name>[\w-]+)[^>]*-->\n)"
    r"(?P<body>.*?)"
    r"(?P<end><!-- END GENERATED (?P=name) -->)",
    re.S,
)
_WS_NAMES = {
    1001: "going away",
    1003: "unsupported data",
    1008: "policy violation",
    1009: "message too big",
    1011: "internal error",
    1012: "service restart",
    1013: "try again later",
}


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _first_line(doc: str | None) -> str:
    """A docstring's first paragraph, on one line."""
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split()) if doc else ""


def _first_sentence(text: str) -> str:
    head, dot, _ = text.partition(". ")
    return head + "." if dot else text


# -- routes ------------------------------------------------------------------------------------------------
def _route_entries(app: Any) -> list[Any]:
    try:  # FastAPI >= 0.160 keeps included routers as they are; this walks them
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: app.routes is already flat
        return list(app.routes)
    return list(iter_route_contexts(app.routes))


_SAMPLE_PARAMS = {"name": "no-such-model", "version": "1", "i": "0"}


def _needs_key(client: Any, route: Any) -> bool:
    """Asked without a key, does the route refuse (HTTP 401, WebSocket close 1008)? The app's lifespan
    does not run, so nothing is loaded: a route that does not check the key fails some other way."""
    from starlette.websockets import WebSocketDisconnect

    path = re.sub(r"{(\w+)(:[^}]*)?}", lambda m: _SAMPLE_PARAMS.get(m[1], "x"), route.path)
    methods = sorted(m for m in (getattr(route, "methods", None) or ()) if m != "HEAD")
    if not methods and getattr(route, "endpoint", None) is None:  # a Mount
        return client.get(path + "/").status_code == 401
    if not methods:  # a WebSocket route
        try:
            with client.websocket_connect(path) as ws:
                ws.receive_text()
        except WebSocketDisconnect as exc:
            return exc.code == errors.WS_POLICY_VIOLATION
        return False
    return client.request(methods[0], path).status_code == 401


def _describe(route: Any) -> tuple[str, str, str]:
    """(route, tag, what) for one route."""
    path = route.path
    methods = sorted(m for m in (getattr(route, "methods", None) or ()) if m != "HEAD")
    if not methods and getattr(route, "endpoint", None) is None:  # a Mount: static files
        return f"`GET {path}/...`", "", f"static files ({route.name})"
    verb = " ".join(methods) if methods else "WS"
    summary = getattr(route, "summary", None) or _first_line(getattr(route, "description", None))
    if not summary:
        summary = _first_sentence(_first_line(getattr(getattr(route, "endpoint", None), "__doc__", None)))
    tags = [str(t) for t in (getattr(route, "tags", None) or ())] or [apidoc.tag_for(path) or ""]
    return f"`{verb} {path}`", ", ".join(tags), summary


def routes_table() -> str:
    with warnings.catch_warnings():  # Starlette's notice about httpx, irrelevant to an in-process probe
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from server.app import build_app

    with_docs = build_app(Settings(api_key=None))
    with_key = build_app(Settings(api_key="k" * 16))
    client = TestClient(with_key, raise_server_exceptions=False)  # no lifespan: nothing loads
    keyed = {_key(route): route for route in _route_entries(with_key)}
    rows = []
    for route in _route_entries(with_docs):
        if not isinstance(getattr(route, "path", None), str):
            continue  # router machinery (a protocol's fallback), not a route anyone calls
        twin = keyed.get(_key(route))
        auth = "only without a key" if twin is None else "key" if _needs_key(client, twin) else "no"
        name, tag, what = _describe(route)
        if route.path == "/openapi.json":
            what = what or "the OpenAPI schema"
        fmt = getattr(getattr(route, "original_route", route), "error_format", None)
        rows.append([name, auth, str(fmt.value if fmt is not None else "–"), tag, what])
    order = [t["name"] for t in apidoc.TAGS]
    rows.sort(key=lambda row: order.index(row[3]) if row[3] in order else len(order))  # stable: app order
    return _table(["route", "auth", "error body", "tag", "what"], rows)


def _key(route: Any) -> tuple[str, frozenset[str]]:
    return route.path, frozenset(getattr(route, "methods", None) or ())


# -- errors ------------------------------------------------------------------------------------------------
def _ws_text(code: int | None) -> str:
    if code is None:
        return "error event"
    name = _WS_NAMES.get(code)
    return f"close {code}" + (f" ({name})" if name else "")


def _value_text(value: Any) -> str:
    if value is None:
        return "–"
    return str(getattr(value, "name", value))


def _spec_columns(spec_type: type) -> list[tuple[str, Callable[[Any], str]]]:
    """One column per field of the error spec; unknown fields are shown as they are (a new protocol's
    column, e.g. a gRPC status, appears without a change here)."""
    columns: list[tuple[str, Callable[[Any], str]]] = []
    names = [f.name for f in dataclasses.fields(spec_type)]
    for name in names:
        if name == "status":
            columns.append(("HTTP", lambda s: str(s.status) + (" + Retry-After" if s.retry_after_s else "")))
        elif name == "ws_close":
            columns.append(("WebSocket", lambda s: _ws_text(s.ws_close)))
        elif name == "retry_after_s":
            continue  # shown with the HTTP status
        else:
            header = name.replace("_", " ").replace("grpc", "gRPC")
            columns.append((header, lambda s, name=name: _value_text(getattr(s, name))))
    return columns


def _what(cls: type) -> str:
    own = cls.__dict__.get("__doc__")
    if own:
        return _first_line(own)
    words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", cls.__name__).split()
    return " ".join(w if w.isupper() else w.lower() for w in words)


def _bodies() -> str:
    """One line per error body format, written by the server's own formatter."""
    formats = getattr(errors, "ErrorFormat", None)
    if formats is None:
        return ""
    sample = {"error": {"code": "<code>", "message": "<message>", "param": "<param, when one is at fault>"}}
    lines = [f"- `{fmt.value}`: `{json.dumps(errors.format_body(sample, fmt))}`" for fmt in formats]
    intro = "Error bodies, by the route's format (the routes table's *error body* column):"
    return intro + "\n\n" + "\n".join(lines)


def errors_table() -> str:
    table = errors.ERROR_TABLE
    spec_type = type(next(iter(table.values())))
    columns = _spec_columns(spec_type)
    entries = sorted(table.items(), key=lambda item: (item[1].status == 500, item[1].status, item[0].code))
    rows = []
    for cls, spec in entries:
        code = getattr(cls, "code", cls.__name__)
        rows.append([f"`{code}`", *(render(spec) for _, render in columns), _what(cls)])
    internal = errors.INTERNAL
    rows.append(["`internal_error`", *(render(internal) for _, render in columns), "anything unexpected"])
    bodies = _bodies()
    table = _table(["code", *(header for header, _ in columns), "when"], rows)
    return f"{bodies}\n\n{table}" if bodies else table


# -- settings ----------------------------------------------------------------------------------------------
def settings_table() -> str:
    rows = []
    for name, field in Settings.model_fields.items():
        flag, env = f"`{flag_text(name, field)}`", f"`PSN_{name.upper()}`"
        rows.append([flag, env, default_text(name, field), field.description or ""])
    return _table(["flag", "env", "default", "meaning"], rows)


GENERATORS: dict[str, Callable[[], str]] = {
    "routes": routes_table,
    "errors": errors_table,
    "settings": settings_table,
}


def render(text: str, tables: dict[str, str]) -> str:
    """The page with every generated region replaced (unknown region names are an error)."""

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in tables:
            raise KeyError(f"unknown generated region {name!r} (known: {sorted(tables)})")
        return match["begin"] + tables[name] + match["end"]

    return _REGION.sub(replace, text)


def stale_pages(docs_dir: Path = DOCS_DIR, *, write: bool = False) -> list[Path]:
    """The pages whose generated regions differ from the code; rewritten when ``write``."""
    tables = {name: make() for name, make in GENERATORS.items()}
    stale = []
    for page in sorted(docs_dir.glob("*.md")):
        text = page.read_text()
        new = render(text, tables)
        if new != text:
            stale.append(page)
            if write:
                page.write_text(new)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.docsgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page is stale")
    parser.add_argument("--docs", type=Path, default=DOCS_DIR, help="the docs folder (default: docs/)")
    args = parser.parse_args(argv)
    stale = stale_pages(args.docs, write=not args.check)
    for page in stale:
        print(f"{'stale' if args.check else 'wrote'}: {page}", file=sys.stderr if args.check else sys.stdout)
    if args.check and stale:
        print("docs/ differs from the code: run `make docs` and commit the result", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
