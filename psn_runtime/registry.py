"""Model directories -> verified ORT sessions. A directory that fails is FAILED with its reason; it never
stops the others from loading."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from psn_runtime.config import RuntimeConfig
from psn_runtime.errors import InferenceError, ModelLoadError
from psn_runtime.manifest import (
    FULL_GRAPH,
    INPUT_NAME,
    LOGITS_NAME,
    SCHEMA_VERSION,
    STEP_GRAPH,
    STEP_LOGITS_NAME,
    Manifest,
)
from psn_runtime.providers import make_session, preload_cuda_once, resolve_providers
from psn_runtime.results import ClassifyResult, ModelInfo, ModelStatus, softmax_fast
from psn_runtime.unrolled import classify_logits
from psn_runtime.validate import ClassifyInput

log = logging.getLogger(__name__)

_LOGITS_ONLY = [LOGITS_NAME]

_ORT_TYPES = {"float32": "tensor(float)", "int64": "tensor(int64)"}
_NP_TYPES = {"float32": np.float32, "int64": np.int64}
Dims = tuple[int | None, ...]  # expected dims after the batch axis; None = any size


@dataclass
class LoadedModel:
    """A READY model: its manifest and sessions (step is None for full-only models)."""

    name: str
    directory: Path
    manifest: Manifest
    full: ort.InferenceSession
    step: ort.InferenceSession | None
    providers: dict[str, list[str]]
    warnings: list[str] = field(default_factory=list)

    def info(self) -> ModelInfo:
        return ModelInfo(
            self.name,
            ModelStatus.READY,
            self.directory,
            self.manifest,
            self.providers,
            None,
            list(self.warnings),
        )

    def classify(self, x: ClassifyInput, version: str) -> ClassifyResult:
        """One prediction per sequence of ``x`` (checked for this model) from the full graph; a sequence
        longer than it holds runs the step graph, as a stream would (InferenceError when ORT fails)."""
        try:
            if x.unrolled:
                logits = classify_logits(self.step, self.manifest, x.array)  # [B, C]
            else:
                (logits,) = self.full.run(_LOGITS_ONLY, {INPUT_NAME: x.array})  # [B, C]
        except Exception as e:
            raise InferenceError(f"model {self.name!r}: onnxruntime failed: {e}") from e
        best = logits.argmax(axis=1)  # [B]
        labels = self.manifest.labels
        return ClassifyResult(logits, softmax_fast(logits), best, [labels[i] for i in best.tolist()], version)


def read_manifest(directory: Path) -> Manifest:
    try:
        return Manifest.load(directory)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"bad manifest: {_one_line(e)}") from e


def load_model(directory: Path, manifest: Manifest, config: RuntimeConfig) -> LoadedModel:
    """Check one model directory against its manifest and make its sessions; raises ModelLoadError."""
    if manifest.schema_version != SCHEMA_VERSION:
        raise ModelLoadError(
            f"manifest schema_version {manifest.schema_version}, this runtime reads {SCHEMA_VERSION}"
        )
    _check_state_names(manifest)
    blobs = {name: _verified_bytes(directory, name, digest) for name, digest in manifest.sha256.items()}

    providers, warnings = resolve_providers(config.providers)
    preload_cuda_once(providers)
    full = _session(blobs[FULL_GRAPH], FULL_GRAPH, config, providers, warnings)
    _check_full_io(full, manifest)
    step = None
    if manifest.streams:
        step = _session(blobs[STEP_GRAPH], STEP_GRAPH, config, providers, warnings)
        _check_step_io(step, manifest)
    if config.warmup:
        _warm_up(full, step, manifest)
    got = {FULL_GRAPH: full.get_providers()}
    if step is not None:
        got[STEP_GRAPH] = step.get_providers()
    for w in warnings:  # reported by the server once per cause (ModelInfo.warnings), not once per model
        log.debug("model %s: %s", manifest.name, w)
    return LoadedModel(manifest.name, Path(directory), manifest, full, step, got, warnings)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _check_state_names(m: Manifest) -> None:
    inputs = [s.input for s in m.states]
    outputs = [s.output for s in m.states]
    if len(set(inputs)) != len(inputs) or INPUT_NAME in inputs:
        raise ModelLoadError(f"state input names must be distinct and not {INPUT_NAME!r}: {inputs}")
    if len(set(outputs)) != len(outputs) or LOGITS_NAME in outputs:
        raise ModelLoadError(f"state output names must be distinct and not {LOGITS_NAME!r}: {outputs}")


def _verified_bytes(directory: Path, name: str, digest: str) -> bytes:
    if Path(name).name != name or name in ("", ".", ".."):
        raise ModelLoadError(f"sha256 lists {name!r}, which is not a plain file name")
    path = Path(directory) / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelLoadError(f"missing file {name}") from None
    except OSError as e:
        raise ModelLoadError(f"cannot read {name}: {e}") from e
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest.lower():
        raise ModelLoadError(f"sha256 mismatch for {name}: manifest says {digest}, file has {actual}")
    return data


def _session(
    data: bytes, graph: str, config: RuntimeConfig, providers: list[str], warnings: list[str]
) -> ort.InferenceSession:
    try:
        session, got_warnings = make_session(data, config, providers)
    except Exception as e:  # ORT raises its own (Fail, InvalidProtobuf, ...) for a corrupt or invalid graph
        raise ModelLoadError(f"onnxruntime cannot load {graph}: {_one_line(e)}") from e
    warnings += [f"{graph}: {w}" for w in got_warnings]
    return session


def _check_io(
    graph: str,
    metas: list,
    expected: dict[str, tuple[Dims, str]],
    kind: str,
    exact: bool,
) -> None:
    """Check graph inputs or outputs against the expected [batch, *dims] and element type."""
    by_name = {m.name: m for m in metas}
    missing = [n for n in expected if n not in by_name]
    if missing:
        raise ModelLoadError(f"{graph} lacks {kind} {missing} (it has {list(by_name)})")
    extra = [n for n in by_name if n not in expected]
    if exact and extra:
        raise ModelLoadError(f"{graph} has {kind} {extra} that the manifest does not describe")
    for name, (dims, elem) in expected.items():
        meta = by_name[name]
        if meta.type != elem:
            raise ModelLoadError(f"{graph} {kind} {name!r} is {meta.type}, expected {elem}")
        shape = list(meta.shape)
        if len(shape) != len(dims) + 1:
            raise ModelLoadError(f"{graph} {kind} {name!r} has shape {shape}, expected rank {len(dims) + 1}")
        if isinstance(shape[0], int):
            raise ModelLoadError(
                f"{graph} {kind} {name!r} has a fixed batch axis {shape[0]}; it must be dynamic"
            )
        for i, (want, have) in enumerate(zip(dims, shape[1:], strict=True)):
            if want is not None and isinstance(have, int) and have != want:
                raise ModelLoadError(
                    f"{graph} {kind} {name!r} has shape {shape}; axis {i + 1} should be {want} "
                    "per the manifest"
                )


def _check_full_io(session: ort.InferenceSession, m: Manifest) -> None:
    t_dim = None if m.variable_length else m.T
    _check_io(
        FULL_GRAPH,
        session.get_inputs(),
        {INPUT_NAME: ((t_dim, *m.input_shape), "tensor(float)")},
        "input",
        True,
    )
    outputs = {LOGITS_NAME: ((m.num_classes,), "tensor(float)")}
    if any(o.name == STEP_LOGITS_NAME for o in session.get_outputs()):
        outputs[STEP_LOGITS_NAME] = ((t_dim, m.num_classes), "tensor(float)")
    _check_io(FULL_GRAPH, session.get_outputs(), outputs, "output", False)
    if m.variable_length:
        t_axis = session.get_inputs()[0].shape[1]
        if isinstance(t_axis, int):
            raise ModelLoadError(f"manifest says variable_length but {FULL_GRAPH} fixes T={t_axis}")


def _check_step_io(session: ort.InferenceSession, m: Manifest) -> None:
    inputs = {INPUT_NAME: (tuple(m.input_shape), "tensor(float)")}
    outputs = {LOGITS_NAME: ((m.num_classes,), "tensor(float)")}
    for s in m.states:
        inputs[s.input] = (tuple(s.shape), _ORT_TYPES[s.dtype])
        outputs[s.output] = (tuple(s.shape), _ORT_TYPES[s.dtype])
    _check_io(STEP_GRAPH, session.get_inputs(), inputs, "input", True)
    _check_io(STEP_GRAPH, session.get_outputs(), outputs, "output", False)


def _warm_up(full: ort.InferenceSession, step: ort.InferenceSession | None, m: Manifest) -> None:
    """Run each graph once on a batch of one; check the shapes that come out."""
    try:
        (logits,) = full.run([LOGITS_NAME], {INPUT_NAME: np.zeros((1, m.T, *m.input_shape), np.float32)})
        if m.variable_length and m.T > 1:
            (short,) = full.run([LOGITS_NAME], {INPUT_NAME: np.zeros((1, 1, *m.input_shape), np.float32)})
            _expect(FULL_GRAPH, LOGITS_NAME + " (T=1)", short, (1, m.num_classes), np.float32)
    except Exception as e:
        raise ModelLoadError(f"warm-up run of {FULL_GRAPH} failed: {_one_line(e)}") from e
    _expect(FULL_GRAPH, LOGITS_NAME, logits, (1, m.num_classes), np.float32)
    if step is None:
        return
    feed = {INPUT_NAME: np.zeros((1, *m.input_shape), np.float32)}
    for s in m.states:
        feed[s.input] = np.full((1, *s.shape), s.init, dtype=_NP_TYPES[s.dtype])
    names = [LOGITS_NAME] + [s.output for s in m.states]
    try:
        outs = step.run(names, feed)
    except Exception as e:
        raise ModelLoadError(f"warm-up run of {STEP_GRAPH} failed: {_one_line(e)}") from e
    _expect(STEP_GRAPH, LOGITS_NAME, outs[0], (1, m.num_classes), np.float32)
    for s, out in zip(m.states, outs[1:], strict=True):
        _expect(STEP_GRAPH, s.output, out, (1, *s.shape), _NP_TYPES[s.dtype])


def _expect(graph: str, name: str, arr: np.ndarray, shape: tuple[int, ...], dtype: type) -> None:
    if arr.shape != shape or arr.dtype != dtype:
        raise ModelLoadError(
            f"{graph} output {name!r} came out {arr.dtype}{list(arr.shape)}, "
            f"expected {np.dtype(dtype)}{list(shape)}"
        )
