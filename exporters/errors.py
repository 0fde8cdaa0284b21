"""The exporter's exceptions."""

from __future__ import annotations


class ExportError(ValueError):
    """The model cannot be exported (an unsupported layer, a non-causal masked PSN, bad metadata...)."""


class ExportCheckFailed(ExportError):
    """One of the export checks failed; nothing was written."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"export check {check!r} failed: {detail}")
        self.check = check
        self.detail = detail
