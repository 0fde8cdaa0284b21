"""The runtime's model versions, by name and version: which one answers, what the index says.

Each version found on disk has one record (``Version``): its status, and once READY its sessions and
streams. A request that names no version goes to the model's highest READY version (``default``). A
version being unloaded (UNLOADING) keeps its sessions and the streams open on it, takes no new work, and
is forgotten (removed from disk, or replaced by a changed copy) or marked UNAVAILABLE once it unloads.

Records are changed on the event loop's thread (the first load also from its loading thread, as each
model becomes ready); readers only look up dicts, whose single assignments are atomic. Every change bumps
one counter (``EPOCH``), so that the records a reader gets stay the same objects, cheaply, until something
changes (callers may cache on a record's identity).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from psn_runtime.errors import BadSnapshot, ModelNotReady, UnknownModel, VersionUnavailable
from psn_runtime.layout import Fingerprint, VersionDir, version_key
from psn_runtime.registry import LoadedModel
from psn_runtime.results import ModelInfo, ModelStatus
from psn_runtime.snapshot import SnapshotOrigin
from psn_runtime.streams import ModelStreams

EPOCH = [0]  # bumped by every change of a version's status, error or sessions and of the repository
_TRACKED = frozenset({"status", "error", "model"})


class Version:
    """One model version: its folder, its status, and its sessions and streams while it has them."""

    __slots__ = (
        "_info",
        "busy",
        "error",
        "failed_fingerprint",
        "found",
        "model",
        "removed",
        "status",
        "streams",
    )

    def __init__(self, found: VersionDir, status: ModelStatus, error: str | None = None) -> None:
        self.found = found
        self.status = status
        self.error = error
        self.model: LoadedModel | None = None
        self.streams: ModelStreams | None = None
        self.busy = 0  # classify calls running on it in a worker thread
        self.removed = False  # gone from disk or replaced: forgotten once it has unloaded
        self.failed_fingerprint: Fingerprint | None = None  # changed files that failed (until they change)
        self._info: tuple[int, ModelInfo] | None = None

    def __setattr__(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)
        if name in _TRACKED:
            EPOCH[0] += 1

    @property
    def name(self) -> str:
        return self.found.name

    @property
    def version(self) -> str:
        return self.found.version

    @property
    def idle(self) -> bool:
        """No open stream, no step in flight, no classify call running."""
        streams = self.streams
        return self.busy == 0 and (
            streams is None or (streams.open_streams == 0 and streams.pool.in_use == 0)
        )

    def info(self) -> ModelInfo:
        """Its record: the same object until its status, error or sessions change (callers may cache on
        the record's identity)."""
        epoch = EPOCH[0]  # read first: a change made meanwhile makes the next call build it again
        cached = self._info
        if cached is not None and cached[0] == epoch:
            return cached[1]
        info = self._make_info()
        self._info = (epoch, info)
        return info

    def _make_info(self) -> ModelInfo:
        model = self.model
        manifest = model.manifest if model is not None else self.found.manifest
        warnings = [*self.found.warnings, *(model.warnings if model is not None else [])]
        providers = dict(model.providers) if model is not None else {}
        return ModelInfo(
            self.name,
            self.status,
            self.found.directory,
            manifest,
            providers,
            self.error,
            warnings,
            self.version,
        )

    def __repr__(self) -> str:
        return f"<Version {self.name}/{self.version} {self.status}>"


@dataclass(frozen=True)
class IndexEntry:
    """One line of the repository index (Triton's): name, version, state, reason."""

    name: str
    version: str
    state: str  # READY | LOADING | UNLOADING | UNAVAILABLE
    reason: str


_TRITON_STATE = {
    ModelStatus.READY: "READY",
    ModelStatus.LOADING: "LOADING",
    ModelStatus.UNLOADING: "UNLOADING",
    ModelStatus.FAILED: "UNAVAILABLE",
    ModelStatus.UNAVAILABLE: "UNAVAILABLE",
}


class Repository:
    def __init__(self) -> None:
        self.names: dict[str, dict[str, Version]] = {}  # name -> version -> record, lowest version first
        self.default: dict[str, Version] = {}  # name -> the highest READY version
        self._infos: dict[str, tuple[int, ModelInfo]] = {}

    def get(self, name: str, version: str) -> Version | None:
        versions = self.names.get(name)
        return None if versions is None else versions.get(version)

    def add(self, entry: Version) -> None:
        """Make ``entry`` the record of its (name, version) (what it replaces is the caller's to retire)."""
        versions = dict(self.names.get(entry.name, {}))
        versions[entry.version] = entry
        self.names[entry.name] = dict(sorted(versions.items(), key=lambda kv: version_key(kv[0])))
        EPOCH[0] += 1
        self.refresh(entry.name)

    def discard(self, entry: Version) -> None:
        """Forget ``entry`` if it is still its (name, version)'s record."""
        versions = self.names.get(entry.name)
        if versions is None or versions.get(entry.version) is not entry:
            return
        versions = {v: e for v, e in versions.items() if e is not entry}
        if versions:
            self.names[entry.name] = versions
        else:
            del self.names[entry.name]
        EPOCH[0] += 1
        self.refresh(entry.name)

    def refresh(self, name: str) -> None:
        """Point ``default[name]`` at the highest READY version (or nowhere)."""
        ready = [e for e in self.names.get(name, {}).values() if e.status is ModelStatus.READY]
        if ready:
            self.default[name] = max(ready, key=lambda e: version_key(e.version))
        else:
            self.default.pop(name, None)
        EPOCH[0] += 1

    def versions(self, name: str) -> list[Version]:
        """Every version of ``name``, lowest first (UnknownModel when there is none)."""
        versions = self.names.get(name)
        if not versions:
            raise UnknownModel(name)
        return list(versions.values())

    def entries(self) -> list[Version]:
        return [e for name in sorted(self.names) for e in self.versions(name)]

    def describe(self, name: str) -> str:
        """Every version of a model and its status, for a message: ``1 ready, 2 unloading``."""
        return ", ".join(f"{e.version} {e.status}" for e in self.versions(name))

    def resuming(self, made_by: SnapshotOrigin) -> Version:
        """The READY version that resumes a snapshot made by ``made_by`` (see Runtime.snapshot_version)."""
        for entry in self.versions(made_by.model):  # UnknownModel
            if entry.status is not ModelStatus.READY:
                continue
            assert entry.streams is not None
            same_graph = entry.streams.snapshot_spec.graph_sha256 == made_by.graph_sha256
            if made_by.version is None and same_graph:
                return entry
            if entry.version == made_by.version:
                if not same_graph:
                    raise BadSnapshot(
                        f"snapshot was made by other files of model {made_by.model!r} version "
                        f"{made_by.version!r} (graph sha256 {made_by.graph_sha256[:12]}…) than this replica's"
                    )
                return entry
        wanted = made_by.version if made_by.version is not None else f"sha256 {made_by.graph_sha256[:12]}…"
        raise VersionUnavailable(
            f"the snapshot's version of model {made_by.model!r} ({wanted}) is not ready here (versions: "
            f"{self.describe(made_by.model)}); another replica may have it"
        )

    def serving(self, name: str, version: str | None, loading: bool) -> Version:
        """The READY version of ``name`` that takes a new request: ``version``, or (None) the highest READY
        one. Else why not: UnknownModel (ModelNotReady while the first load is still ``loading``),
        VersionUnavailable for a named version, ModelNotReady for a model with no READY version."""
        if version is None:
            entry = self.default.get(name)
            if entry is not None:
                return entry
        else:
            entry = self.get(name, version)
            if entry is not None and entry.status is ModelStatus.READY:
                return entry
        if name not in self.names:
            if loading:
                raise ModelNotReady(f"model {name!r}: the runtime is still loading its models")
            raise UnknownModel(name)
        if version is not None:
            if entry is None:
                raise self._missing(name, version)
            raise VersionUnavailable(
                f"model {name!r} version {version!r} is {entry.status}: it takes no new work here (versions: "
                f"{self.describe(name)})"
            )
        head = self.representative(name)
        if head.status is ModelStatus.LOADING:
            raise ModelNotReady(f"model {name!r} is still loading")
        if head.status is ModelStatus.FAILED:
            raise ModelNotReady(f"model {name!r} failed to load: {head.error}")
        raise ModelNotReady(f"model {name!r} is not loaded (versions: {self.describe(name)})")

    def record(self, name: str, version: str | None) -> ModelInfo:
        """A model's record (``version`` None), or one version's (VersionUnavailable when there is none)."""
        if name not in self.names:
            raise UnknownModel(name)
        if version is None:
            return self.info(name)
        entry = self.get(name, version)
        if entry is None:
            raise self._missing(name, version)
        return entry.info()

    def _missing(self, name: str, version: str) -> VersionUnavailable:
        return VersionUnavailable(
            f"model {name!r} has no version {version!r} here (versions: {self.describe(name)})"
        )

    def representative(self, name: str) -> Version:
        """The version a model's record describes: the one that answers, else the highest."""
        return self.default.get(name) or self.versions(name)[-1]

    def info(self, name: str) -> ModelInfo:
        """A model's record: its representative version's, with every version's (the same object while
        none of them changes)."""
        epoch = EPOCH[0]
        cached = self._infos.get(name)
        if cached is not None and cached[0] == epoch:
            return cached[1]
        versions = tuple(e.info() for e in self.versions(name))
        info = replace(self.representative(name).info(), versions=versions)
        self._infos[name] = (epoch, info)
        return info

    def infos(self) -> list[ModelInfo]:
        return [self.info(name) for name in sorted(self.names)]

    def index(self, on_disk: list[IndexEntry], ready_only: bool) -> list[IndexEntry]:
        """Every version known (loaded, loading, unloading, failed), then those of ``on_disk`` (versions
        found on disk and not loaded, with the reason) that are not known, by name and version."""
        out = [
            IndexEntry(e.name, e.version, _TRITON_STATE[e.status], e.error or "")
            for e in self.entries()
            if not ready_only or e.status is ModelStatus.READY
        ]
        if not ready_only:
            known = {(e.name, e.version) for e in out}
            out += [e for e in on_disk if (e.name, e.version) not in known]
        return sorted(out, key=lambda e: (e.name, version_key(e.version)))
