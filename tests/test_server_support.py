"""Helpers for the server tests (no tests here): the model directories to serve, apps, a live server.

Model directories: the bundled ``models/`` when it holds a PSN, a masked PSN and a sliding PSN model (the
real trained ones), else the tiny exported models of ``tests/fixtures.py`` (one per kind). Tests read T,
F and the labels from the manifests, so they hold for either.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn

from psn_runtime.manifest import MANIFEST_FILE, Manifest, NeuronKind
from server.app import build_app
from server.settings import BUNDLED_MODELS_DIR, Settings

NEEDED = (NeuronKind.PSN, NeuronKind.MASKED_PSN, NeuronKind.SLIDING_PSN)


@dataclass(frozen=True)
class Served:
    models_dir: Path
    by_kind: dict[NeuronKind, Manifest]  # one model of each kind found

    def name(self, kind: NeuronKind) -> str:
        return self.by_kind[kind].name

    def manifest(self, kind: NeuronKind) -> Manifest:
        return self.by_kind[kind]


def _scan(root: Path) -> dict[NeuronKind, Manifest]:
    found: dict[NeuronKind, Manifest] = {}
    if not root.is_dir():
        return found
    for directory in sorted(root.iterdir()):
        if (directory / MANIFEST_FILE).is_file():
            try:
                manifest = Manifest.load(directory)
            except ValueError:
                continue
            if len(manifest.input_shape) != 1:
                continue  # the helpers build [T, F] inputs; 2-D models: tests/test_zoo_export.py
            # prefer the model with the most features per step: tests slice and corrupt rows of x
            if manifest.kind not in found or manifest.features > found[manifest.kind].features:
                found[manifest.kind] = manifest
    return found


@functools.cache
def served() -> Served:
    bundled = _scan(BUNDLED_MODELS_DIR)
    if all(kind in bundled for kind in NEEDED):
        return Served(BUNDLED_MODELS_DIR, bundled)
    from fixtures import exported_models  # tiny untrained models, exported once per session

    root = exported_models()
    return Served(root, _scan(root))


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"models_dir": served().models_dir, "providers": ["CPUExecutionProvider"]}
    values.update(overrides)
    return Settings(**values)


def sequence(manifest: Manifest, batch: int | None = None, seed: int = 0) -> np.ndarray:
    """Random input [T, F] (or [batch, T, F]) float32 for the model."""
    shape = (manifest.T, manifest.features) if batch is None else (batch, manifest.T, manifest.features)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def live_server(app_settings: Settings) -> Iterator[str]:
    """A real uvicorn server (in a thread, on a free loopback port) for clients that need a socket."""
    sock = free_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        build_app(app_settings),
        log_level="warning",
        lifespan="on",
        ws_max_size=app_settings.max_ws_message_bytes,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


REPO = Path(__file__).resolve().parents[1]


@dataclass
class ServeProcess:
    base: str  # http://127.0.0.1:PORT
    log: Path
    returncode: int | None = field(default=None)  # set once the process has exited


@contextmanager
def psn_serve(
    log: Path, models: Path, *, api_key: str | None = None, env: dict[str, str] | None = None
) -> Iterator[ServeProcess]:
    """A real ``psn serve`` subprocess on a free loopback port, ready (/readyz 200) within 90 s; SIGTERM on
    exit (SIGKILL after 20 s). ``returncode`` tells how it ended."""
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    environ = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    environ.pop("PSN_API_KEY", None)
    if api_key is not None:
        environ["PSN_API_KEY"] = api_key
    command = [sys.executable, "-m", "psn.cli", "serve", "--port", str(port), "--models-dir", str(models)]
    command += ["--providers", "CPUExecutionProvider"]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environ, cwd=REPO)
    handle = ServeProcess(f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"psn serve exited with {proc.returncode}:\n{log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{handle.base}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"psn serve was not ready in 90 s:\n{log.read_text()}")
            time.sleep(0.1)
        yield handle
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        handle.returncode = proc.returncode
