"""Export a network or checkpoint to a model directory: ``full.onnx``, ``step.onnx`` (streaming kinds) and
``manifest.json``. Everything is written to a temporary directory and checked there; only when every
check passes are the files moved into the model directory (anything else in it, such as a bundled
``checkpoint/``, is left alone)."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import onnx
import pydantic
from torch import nn

from exporters.build import build_full, build_step
from exporters.checks import check_onnx, check_parity
from exporters.errors import ExportCheckFailed, ExportError
from exporters.graph import OPSET
from exporters.loading import load_network
from exporters.parity import MAX_TIE_SAMPLES, CheckReport
from exporters.prepare import check_time_local, prepare
from psn.checkpoint import CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE, load_checkpoint
from psn.network import SeqClassifier
from psn_runtime.layout import place_of
from psn_runtime.manifest import (
    FULL_GRAPH,
    MANIFEST_FILE,
    STEP_GRAPH,
    Manifest,
    network_kind,
)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_sha256(directory: Path, manifest: Manifest) -> None:
    for name, digest in manifest.sha256.items():
        path = Path(directory) / name
        if not path.is_file() or sha256_file(path) != digest:
            raise ExportCheckFailed("sha256", f"{name} does not match the sha256 in the manifest")


def check_metadata(**fields: Any) -> None:
    """The manifest fields the caller gives (name, dataset, test_accuracy, command), each checked as the
    manifest checks it, before the graphs are built (a deep network's export takes a minute)."""
    for key, value in fields.items():
        info = Manifest.model_fields[key]
        try:
            pydantic.TypeAdapter(Annotated[info.annotation, info]).validate_python(value)
        except pydantic.ValidationError as exc:
            reason = exc.errors()[0]["msg"]
            raise ExportError(f"invalid manifest: {key}={value!r}: {reason}") from exc


def _install(staged: Path, out_dir: Path, graphs: list[str]) -> None:
    """Move the checked files into out_dir, each by an atomic rename; the manifest goes last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in [*graphs, MANIFEST_FILE]:
        partial = out_dir / f".{name}.partial"
        shutil.copyfile(staged / name, partial)
        os.replace(partial, out_dir / name)
    if STEP_GRAPH not in graphs:  # a re-export as a full-only model: drop a stale step graph
        (out_dir / STEP_GRAPH).unlink(missing_ok=True)


def export_module(
    module: nn.Module,
    out: Path | str,
    *,
    input_shape: Sequence[int],
    T: int,
    name: str,
    labels: Sequence[str] | None = None,
    dataset: str = "unknown",
    test_accuracy: float | None = None,
    command: str = "exporters.export_module",
    check: bool = True,
    report: CheckReport | None = None,
    max_tie_samples: float = MAX_TIE_SAMPLES,
) -> Manifest:
    """Export any PSN-family network to the model directory ``out``; returns the manifest written there.

    ``module`` maps time-major x [T, N, *input_shape] to per-step logits [T, N, C] (the class decision is
    the mean over T); its neurons are this project's (psn.neurons) or SpikingJelly's (multi-step
    PSN, MaskedPSN at λ = 1, SlidingPSN, LIFNode, ParametricLIFNode, IFNode) and every other layer is
    time-local. ``T`` is
    the sequence length (the longest accepted when every neuron takes any length); ``labels`` default
    to "0".."C-1". A network with a PSN gets full.onnx only; one whose neurons are all causal gets
    step.onnx as well and streams.

    With ``check`` (the default) nothing is written unless the ONNX checker and the parity checks pass
    (``ExportCheckFailed`` names the check). A sample whose spike sits on the threshold in one path and
    not in another (a float tie) is set aside after that layer; ``max_tie_samples`` bounds the share of
    each check's samples set aside (exporters/parity.py). ``report`` (a ``CheckReport``) receives every
    comparison. ``ExportError``: the network cannot be exported (a layer
    that mixes time, an unsupported neuron, a masked PSN at λ < 1, bad metadata...).
    """
    out_dir = Path(out)
    input_shape = tuple(int(d) for d in input_shape)
    if not 0.0 <= max_tie_samples < 1.0:
        raise ExportError(f"max_tie_samples={max_tie_samples!r}: expected a share in [0, 1)")
    check_metadata(name=name, dataset=dataset, test_accuracy=test_accuracy, command=command)
    was_training = module.training
    module.eval()
    try:
        p = prepare(module, input_shape, int(T))
        check_time_local(p)
        infos = [f.info for f in p.forms]
        kinds = [i.kind for i in infos]
        kind = network_kind(kinds)
        streams = all(i.streams for i in infos)
        variable = all(i.variable_length for i in infos)
        labels = [str(i) for i in range(p.classes)] if labels is None else [str(v) for v in labels]
        if len(labels) != p.classes:
            raise ExportError(f"{len(labels)} labels for a network with {p.classes} classes")
        k = next((i.k for i in infos if i.kind is kind), None)
        full = build_full(p, variable)
        step = build_step(p) if streams else None
        graphs = {FULL_GRAPH: full} | ({STEP_GRAPH: step.model} if step else {})
        with tempfile.TemporaryDirectory(prefix="psn-export-") as tmp:
            staged = Path(tmp)
            for file_name, proto in graphs.items():
                onnx.save(proto, str(staged / file_name))
            try:
                manifest = Manifest(
                    name=name,
                    version=place_of(out_dir)[1] or "1",  # --out models/NAME/2: version 2
                    kind=kind,
                    neurons=kinds,
                    T=p.T,
                    k=k,
                    input_shape=input_shape,
                    labels=labels,
                    variable_length=variable,
                    streams=streams,
                    max_steps=p.T if streams and any(k.facts.bounded for k in kinds) else None,
                    states=step.states if step else [],
                    opset=OPSET,
                    sha256={f: sha256_file(staged / f) for f in graphs},
                    dataset=dataset,
                    test_accuracy=test_accuracy,
                    parameters=count_parameters(module),
                    command=command,
                )
            except pydantic.ValidationError as exc:
                raise ExportError(f"invalid manifest: {exc}") from exc
            manifest.dump(staged)
            if check:
                check_onnx([staged / f for f in graphs])
                found = check_parity(
                    module,
                    p,
                    staged / FULL_GRAPH,
                    staged / STEP_GRAPH if step else None,
                    manifest.states,
                    variable_length=variable,
                    max_tie_samples=max_tie_samples,
                )
                if report is not None:
                    report.results.extend(found.results)
                    report.layer_names, report.layer_kinds = found.layer_names, found.layer_kinds
                    report.max_tie_samples = found.max_tie_samples
                check_sha256(staged, Manifest.load(staged))
            _install(staged, out_dir, list(graphs))
    finally:
        module.train(was_training)
    return manifest


def export_model(model: SeqClassifier, out_dir: Path | str, **options: Any) -> Manifest:
    """Export a ``SeqClassifier`` (what ``psn train`` builds): ``export_module`` with its T, features and
    labels; ``options`` are export_module's others (``name`` and ``dataset``, ``test_accuracy``,
    ``command``, ``check``, ``report``, ``max_tie_samples``)."""
    cfg = model.cfg
    return export_module(model, out_dir, input_shape=(cfg.features,), T=cfg.T, labels=cfg.labels, **options)


def count_parameters(module: nn.Module) -> int:
    return sum(t.numel() for t in module.parameters())


def export_command(ckpt_dir: Path | str, out_dir: Path | str, name: str | None) -> str:
    args = ["psn", "export", str(ckpt_dir), "--out", str(out_dir)]
    if name is not None:
        args += ["--name", name]
    return shlex.join(args)


def _zoo_config(ckpt_dir: Path) -> dict | None:
    """The config.json of a ``psn train-zoo`` checkpoint (it names its builder under "module"), else None."""
    try:
        config = json.loads((ckpt_dir / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None  # load_checkpoint reports a missing or bad config.json
    return config if isinstance(config, dict) and "module" in config else None


def export_checkpoint(
    ckpt_dir: Path | str,
    out_dir: Path | str,
    name: str | None = None,
    *,
    report: CheckReport | None = None,
    max_tie_samples: float = MAX_TIE_SAMPLES,
) -> Manifest:
    """Export a training checkpoint to ``out_dir`` (name: the directory's name): a ``psn train`` one
    (psn.checkpoint), or a ``psn train-zoo`` one, whose config.json names the builder (``psn.zoo:NET``),
    T, the per-step input shape and the labels."""
    ckpt_dir = Path(ckpt_dir)
    zoo = _zoo_config(ckpt_dir)
    if zoo is None:
        model, metrics = load_checkpoint(ckpt_dir)  # CheckpointError (a ValueError) if missing/bad
    else:
        model = load_network(str(zoo["module"]), ckpt_dir / WEIGHTS_FILE)
        metrics_path = ckpt_dir / METRICS_FILE
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    for key in ("dataset", "test_accuracy"):
        if key not in metrics:
            raise ExportError(f"{ckpt_dir / METRICS_FILE} has no {key!r}")
    train_cmd = metrics.get("command") or "unknown training command"
    if isinstance(train_cmd, list):
        train_cmd = shlex.join(str(a) for a in train_cmd)
    meta = {
        "name": name if name is not None else place_of(Path(out_dir))[0],  # models/NAME or models/NAME/2
        "dataset": str(metrics["dataset"]),
        "test_accuracy": float(metrics["test_accuracy"]),
        "command": f"{train_cmd} && {export_command(ckpt_dir, out_dir, name)}",
        "report": report,
        "max_tie_samples": max_tie_samples,
    }
    if zoo is None:
        return export_model(model, out_dir, **meta)
    return export_module(
        model, out_dir, input_shape=zoo["input_shape"], T=zoo["T"], labels=zoo["labels"], **meta
    )
