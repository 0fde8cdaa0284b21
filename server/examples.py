"""Example inputs shipped beside a model: ``<model dir>/examples.json`` (written for the bundled models by
``psn examples``; a user's own model directory may add one by hand).

The file is read when first asked for and again whenever it changes on disk, and checked against the
model's manifest: every example must be [T, *per-step shape] finite numbers (T' <= T for a model that
accepts shorter sequences) with a label from the manifest's labels. A file that breaks these rules is a
server-side fault (500, the reason in the log), not the client's.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from psn_runtime.manifest import Manifest

EXAMPLES_FILE = "examples.json"


class ExampleEntry(BaseModel):
    model_config = ConfigDict(extra="ignore")

    label: str
    inputs: list = Field(description="[T, *per-step shape] numbers")
    index: int | None = Field(None, description="position in the data set's split it was taken from")


class ExamplesFile(BaseModel):
    model_config = ConfigDict(extra="ignore")

    dataset: str | None = None
    split: str | None = None
    examples: list[ExampleEntry]


class InvalidExamples(Exception):
    """examples.json exists but does not fit the model (a server-side fault: answered 500, logged)."""


@dataclass(frozen=True)
class Examples:
    dataset: str | None
    split: str | None
    entries: tuple[ExampleEntry, ...]


def _shape_of(value: object, where: str) -> tuple[int, ...]:
    """The shape of a rectangular nested list of finite numbers; InvalidExamples otherwise."""
    if isinstance(value, list):
        if not value:
            raise InvalidExamples(f"{where}: empty list")
        inner = [_shape_of(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if any(s != inner[0] for s in inner):
            raise InvalidExamples(f"{where}: ragged (rows of different shapes)")
        return (len(value), *inner[0])
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidExamples(f"{where}: {value!r} is not a finite number")
    return ()


def _check(doc: ExamplesFile, manifest: Manifest) -> None:
    shape = tuple(manifest.input_shape)
    for i, entry in enumerate(doc.examples):
        where = f"examples[{i}]"
        if entry.label not in manifest.labels:
            raise InvalidExamples(f"{where}.label {entry.label!r} is not one of the model's labels")
        got = _shape_of(entry.inputs, f"{where}.inputs")
        steps_ok = got[:1] == (manifest.T,) or (manifest.variable_length and 1 <= got[0] <= manifest.T)
        if not steps_ok or got[1:] != shape:
            takes = [manifest.T, *shape]
            raise InvalidExamples(f"{where}.inputs has shape {list(got)}, the model takes {takes}")


@functools.lru_cache(maxsize=64)
def _load(path: str, mtime_ns: int, size: int, manifest_json: str) -> Examples:
    """Parsed and checked; cached per (file, modification time, size, manifest)."""
    del mtime_ns, size  # part of the cache key only
    manifest = Manifest.model_validate_json(manifest_json)
    try:
        doc = ExamplesFile.model_validate(json.loads(Path(path).read_text()))
    except (OSError, ValueError, ValidationError) as e:
        raise InvalidExamples(f"{path}: {' '.join(str(e).split())}") from e
    _check(doc, manifest)
    return Examples(doc.dataset, doc.split, tuple(doc.examples))


def load_examples(directory: Path, manifest: Manifest) -> Examples | None:
    """The model directory's examples, or None when it has no examples.json."""
    path = Path(directory) / EXAMPLES_FILE
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return _load(str(path), stat.st_mtime_ns, stat.st_size, manifest.model_dump_json())
