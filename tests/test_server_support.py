"""Helpers for the server tests (no tests here): the model directories to serve, apps, a live server.

Model directories: the bundled ``models/`` when it holds a PSN, a masked PSN and a sliding PSN model (the
real trained ones), else the tiny exported models of ``tests/fixtures.py`` (one per kind). Tests read T,
F and the labels from the manifests, so they hold for either.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn

from psn_runtime.manifest import MANIFEST_FILE, Manifest, NeuronKind
from server import launcher
from server.app import build_app
from server.listen import bind_http
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
    from tests.fixtures import exported_models  # tiny untrained models, exported once per test run

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


@contextmanager
def in_thread(
    app: Any, app_settings: Settings, server_class: type = uvicorn.Server
) -> Iterator[tuple[str, Any]]:
    """``app`` served by a real ``server_class`` (uvicorn's; ``psn serve``'s drains on the way out) in a
    thread, on a loopback port it holds from the start: (``http://127.0.0.1:PORT``, the server)."""
    sock = bind_http("127.0.0.1", 0, workers=1)
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", ws_max_size=app_settings.max_ws_message_bytes
    )
    server = server_class(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@contextmanager
def live_server(app_settings: Settings) -> Iterator[str]:
    """A real uvicorn server (in a thread) for clients that need a socket: its base URL."""
    with in_thread(build_app(app_settings), app_settings) as (base, _):
        yield base


@contextmanager
def triton_client(app_settings: Settings) -> Iterator[Any]:
    """``tritonclient.http``'s client, unmodified, of a live server of ``app_settings``."""
    import tritonclient.http as httpclient

    with live_server(app_settings) as base:
        client = httpclient.InferenceServerClient(base.removeprefix("http://"))
        try:
            yield client
        finally:
            client.close()


@contextmanager
def psn_serve(
    log: Path, models: Path, *, api_key: str | None = None, env: dict[str, str] | None = None
) -> Iterator[launcher.Server]:
    """A real ``psn serve`` subprocess (server/launcher.py: on a loopback port it binds itself), CPU
    provider, ready (/readyz 200); SIGTERM on exit (SIGKILL after 20 s): ``process.returncode`` tells how it
    ended."""
    args = ["--providers", "CPUExecutionProvider"] + (["--api-key", api_key] if api_key is not None else [])
    with launcher.serve(*args, models_dir=models, log=log, env=env) as server:
        yield server
