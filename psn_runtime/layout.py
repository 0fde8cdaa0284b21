"""The models dir on disk: which model versions it holds.

A folder under the models dir is either

- a model directory (``manifest.json`` inside): one version of the model the manifest names, the
  manifest's ``version``; or
- a folder of numbered version folders, each a model directory (``NAME/1/``, ``NAME/2/``: Triton's layout).
  The model's name is the folder's (the manifest must agree), its version the number (it wins over the
  manifest's ``version``, with a warning when they differ).

Anything else (a folder with neither, stray files, non-numbered subfolders) is ignored. Versions compare as
integers; a version string that is not a number sorts below every number, by its text.

A version's ``fingerprint`` (its files' names, sizes and modification times) tells a poll that it changed
on disk. Write a new version elsewhere and move it in (one rename), so that no scan sees half a folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from psn_runtime.errors import ModelLoadError
from psn_runtime.manifest import MANIFEST_FILE, Manifest

Fingerprint = tuple[tuple[str, int, int], ...]  # (file name, size, mtime_ns) per file, sorted


def version_key(version: str) -> tuple[int, int, str]:
    """Sort key: numbers by value, above any other text (which sorts by itself)."""
    if version.isdecimal():
        return (1, int(version), "")
    return (0, 0, version)


def numbered(name: str) -> bool:
    """A version folder's name: a decimal number without leading zeros."""
    return name.isdecimal() and name.isascii() and str(int(name)) == name


def place_of(directory: Path) -> tuple[str, str | None]:
    """(model name, version) that a model directory written to ``directory`` takes from its place: a
    numbered folder ``NAME/V`` is version V of model NAME; any other folder is a model directory named
    after itself, whose version is its manifest's (None here). For exporters (``--out models/NAME/2``)."""
    directory = Path(directory).resolve()
    if numbered(directory.name) and directory.parent.name:
        return directory.parent.name, directory.name
    return directory.name, None


@dataclass(frozen=True)
class VersionDir:
    """One model version found on disk (``error`` says why it cannot load; the manifest is None when it
    could not be read)."""

    name: str
    version: str
    directory: Path
    manifest: Manifest | None
    fingerprint: Fingerprint
    error: str | None = None
    warnings: tuple[str, ...] = field(default=())
    flat: bool = True  # a model directory right under the models dir (not a numbered version folder)

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.version)


def fingerprint(directory: Path) -> Fingerprint:
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return ()
    out = []
    for entry in entries:
        try:
            if entry.is_file():
                st = entry.stat()
                out.append((entry.name, st.st_size, st.st_mtime_ns))
        except OSError:
            continue
    return tuple(sorted(out))


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _read(directory: Path) -> tuple[Manifest | None, str | None]:
    try:
        return Manifest.load(directory), None
    except (OSError, ValueError) as e:
        return None, f"bad manifest: {_one_line(e)}"


def _flat(directory: Path) -> VersionDir:
    manifest, error = _read(directory)
    name = manifest.name if manifest is not None else directory.name
    version = manifest.version if manifest is not None else ""
    return VersionDir(name, version, directory, manifest, fingerprint(directory), error)


def _numbered(parent: Path, directory: Path) -> VersionDir:
    name, version = parent.name, directory.name
    manifest, error = _read(directory)
    warnings: tuple[str, ...] = ()
    if manifest is not None and manifest.name != name:
        error = (
            f"the manifest names model {manifest.name!r}, but its version folder is in {name}/ (a numbered "
            "version folder takes the name of the folder above it)"
        )
    elif manifest is not None and manifest.version != version:
        warnings = (
            f"the manifest says version {manifest.version!r}; served as version {version} (its folder)",
        )
        manifest = manifest.model_copy(update={"version": version})
    return VersionDir(name, version, directory, manifest, fingerprint(directory), error, warnings, False)


def scan(models_dir: Path) -> list[VersionDir]:
    """Every model version under models_dir, sorted by folder. ModelLoadError if models_dir is unusable."""
    models_dir = Path(models_dir)
    try:
        if not models_dir.is_dir():
            raise ModelLoadError(f"models_dir {str(models_dir)!r} is not a directory")
        folders = sorted(p for p in models_dir.iterdir() if p.is_dir())
    except OSError as e:
        raise ModelLoadError(f"cannot read models_dir {str(models_dir)!r}: {e}") from e
    found: list[VersionDir] = []
    for folder in folders:
        try:
            if (folder / MANIFEST_FILE).is_file():
                found.append(_flat(folder))
                continue
            versions = [
                p
                for p in folder.iterdir()
                if p.is_dir() and numbered(p.name) and (p / MANIFEST_FILE).is_file()
            ]
        except OSError:  # removed or unreadable while we looked: the next scan sees what is there
            continue
        found += [_numbered(folder, p) for p in sorted(versions, key=lambda p: int(p.name))]
    return found


def select(found: list[VersionDir], latest: int | None) -> tuple[list[VersionDir], list[VersionDir]]:
    """(versions to serve, versions left out by the policy ``latest:N``); None keeps all. A second model
    directory with a (name, version) already found is a failure that names the first, under its folder's
    name (a numbered one is left out)."""
    first: dict[tuple[str, str], Path] = {}
    unique: list[VersionDir] = []
    duplicates: list[VersionDir] = []
    left_out: list[VersionDir] = []
    for v in found:
        if v.key not in first:
            first[v.key] = v.directory
            unique.append(v)
            continue
        error = f"duplicate model name {v.name!r} (already loaded from {first[v.key]})"
        if v.flat:
            duplicates.append(replace(v, name=v.directory.name, error=error))
        else:
            left_out.append(replace(v, error=error))
    if latest is not None:
        by_name: dict[str, list[str]] = {}
        for v in unique:
            by_name.setdefault(v.name, []).append(v.version)
        kept = {(n, v) for n, vs in by_name.items() for v in sorted(vs, key=version_key)[-latest:]}
        left_out += [v for v in unique if v.key not in kept]
        unique = [v for v in unique if v.key in kept]
    return unique + duplicates, left_out
