"""JSON views of the runtime's model records, shared by the v1 and v2 routes."""

from __future__ import annotations

from typing import Any

from psn_runtime import ModelInfo
from psn_runtime.manifest import FULL_GRAPH


def primary_provider(info: ModelInfo) -> str | None:
    """The execution provider the full-sequence session runs on first (what ``classify`` uses)."""
    got = info.providers.get(FULL_GRAPH) or next(iter(info.providers.values()), None)
    return got[0] if got else None


def model_view(info: ModelInfo) -> dict[str, Any]:
    """A model's record: the version that answers requests without one (``version``), and every version
    with its status and error (``versions``)."""
    return {
        "name": info.name,
        "status": str(info.status),
        "error": info.error,
        "version": info.version,
        "versions": [
            {"version": v.version, "status": str(v.status), "error": v.error} for v in info.versions
        ],
        "provider": primary_provider(info),
        "providers": info.providers,
        "warnings": list(info.warnings),
        "manifest": info.manifest.model_dump(mode="json") if info.manifest is not None else None,
    }
