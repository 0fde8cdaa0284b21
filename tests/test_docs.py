"""The tables in docs/ that the code defines (routes, errors, settings) are what ``make docs`` writes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from server import docsgen, errors

ROOT = Path(__file__).resolve().parents[1]


def test_docs_match_the_code() -> None:
    stale = docsgen.stale_pages(ROOT / "docs")
    assert not stale, f"{[p.name for p in stale]} differ from the code: run `make docs` and commit the result"


def test_every_table_has_a_region_in_docs() -> None:
    text = "".join(page.read_text() for page in (ROOT / "docs").glob("*.md"))
    for name in docsgen.GENERATORS:
        assert f"<!-- BEGIN GENERATED {name}" in text and f"<!-- END GENERATED {name} -->" in text, name


def test_a_stale_region_is_found_and_rewritten(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "intro\n<!-- BEGIN GENERATED settings: x -->\nold table\n<!-- END GENERATED settings -->\nend\n"
    )
    assert docsgen.stale_pages(tmp_path, write=True) == [page]
    text = page.read_text()
    assert "old table" not in text and "| `--max-streams` | `PSN_MAX_STREAMS` | 1024 |" in text
    assert text.startswith("intro\n") and text.endswith("<!-- END GENERATED settings -->\nend\n")
    assert docsgen.stale_pages(tmp_path) == []
    assert docsgen.main(["--check", "--docs", str(tmp_path)]) == 0
    page.write_text(text.replace("| 1024 |", "| 1000 |"))
    assert docsgen.main(["--check", "--docs", str(tmp_path)]) == 1


def test_an_unknown_region_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "page.md").write_text("<!-- BEGIN GENERATED nothing -->\n<!-- END GENERATED nothing -->\n")
    with pytest.raises(KeyError, match="nothing"):
        docsgen.stale_pages(tmp_path)


def test_routes_table_says_who_may_call_each_route() -> None:
    rows = {line.split(" | ")[0].strip("| `"): line for line in docsgen.routes_table().splitlines()[2:]}
    assert "| key |" in rows["POST /v1/models/{name}/classify"]
    assert "| key |" in rows["WS /v1/models/{name}/stream"]  # checked inside the handler: close 1008
    assert "| no |" in rows["GET /healthz"] and "| no |" in rows["GET /v2/health/ready"]
    assert "| only without a key |" in rows["GET /docs"]
    assert "| only without a key |" in rows["GET /openapi.json"]


def test_errors_table_has_a_column_per_field_of_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    """A field added to the error spec (e.g. a gRPC status) becomes a column without a change here."""

    @dataclasses.dataclass(frozen=True)
    class Spec:
        status: int
        ws_close: int | None
        retry_after_s: int | None = None
        grpc_status: str = "UNKNOWN"

    table = {cls: Spec(s.status, s.ws_close, s.retry_after_s) for cls, s in errors.ERROR_TABLE.items()}
    monkeypatch.setattr(errors, "ERROR_TABLE", table)
    monkeypatch.setattr(errors, "INTERNAL", Spec(500, errors.WS_INTERNAL_ERROR, None, "INTERNAL"))
    lines = [line for line in docsgen.errors_table().splitlines() if line.startswith("|")]
    assert lines[0] == "| code | HTTP | WebSocket | gRPC status | when |"
    overloaded = next(line for line in lines if line.startswith("| `overloaded`"))
    assert "| 429 + Retry-After | error event | UNKNOWN |" in overloaded
    assert lines[-1].startswith("| `internal_error` | 500 | close 1011 (internal error) | INTERNAL |")
