"""``make soak``: tests/soak.py's mixed classify + streaming load for PSN_SOAK_SECONDS (default 300 s) on
loopback; no errors, no stream or pool slot left, bounded RSS growth; writes docs/soak.json and
docs/soak.png (PSN_SOAK_OUT to write elsewhere)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SECONDS = float(os.environ.get("PSN_SOAK_SECONDS", "300"))
# the run, plus server start-up and model export, within pytest-timeout's limit (300 s in pyproject)
pytestmark = [pytest.mark.soak, pytest.mark.e2e, pytest.mark.timeout(int(SECONDS) + 300)]


def test_soak(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from soak import SoakConfig, soak

    seconds = SECONDS
    out = Path(os.environ.get("PSN_SOAK_OUT", REPO / "docs" / "soak"))
    result = soak(SoakConfig(seconds=seconds), out, log_dir=tmp_path)
    print({k: result[k] for k in ("errors", "errors_by_kind", "summary", "rss_mb", "after")})
    assert result["errors"] == 0, result["error_samples"]
    assert result["after"] == {
        "streams_open": 0.0,
        "pool_in_use": 0.0,
        "step_queue": 0.0,
        "server_errors_5xx": 0.0,
    }
    summary = result["summary"]
    assert summary["classify"]["count"] >= 0.9 * SoakConfig.classify_rate * seconds  # the rate was kept
    assert summary["step"]["count"] >= 0.5 * SoakConfig.streams * SoakConfig.step_rate * seconds
    assert result["rss_mb"]["growth"] < 20.0
    assert out.with_suffix(".png").stat().st_size > 10_000
