"""Model directories for the runtime tests: tiny untrained models of every kind, exported once per test
run with ``exporters.export_model`` into the run's shared folder (read-only, shared by the pytest-xdist
workers), plus helpers to copy them somewhere a test may damage them. Import it as ``tests.fixtures``.

A fresh network barely fires (BatchNorm statistics 0/1), so its logits would not depend on the input;
``tiny_model`` randomizes the BatchNorm statistics and the neuron biases so that outputs vary with the
input and a wrong state shows up as a wrong answer.
"""

from __future__ import annotations

import asyncio
import atexit
import fcntl
import functools
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

T, F, C = 8, 5, 3
K = 3
KINDS: dict[str, int | None] = {"psn": None, "masked_psn": K, "sliding_psn": K, "lif": None}
STREAMING = ("masked_psn", "sliding_psn", "lif")
WAIT_S = 60.0  # a bound on a hang (an event that never comes), never a timing


def tiny_model(kind: str, k: int | None, seed: int = 0):
    """A tiny mlp network whose neurons all fire (see tests/nets.py), in eval mode."""
    from tests.nets import tiny_model as randomized_tiny_model

    return randomized_tiny_model(kind, T, k, arch="mlp", features=F, classes=C, seed=seed)


SESSION_DIR_ENV = "PSNTESTS_SESSION_DIR"  # set by tests/conftest.py: one folder per test run, all workers


def session_dir() -> Path:
    """The test run's shared folder (every pytest-xdist worker sees the same one; conftest.py makes it and
    removes it at the end), or a folder of this process's own when run outside pytest."""
    shared = os.environ.get(SESSION_DIR_ENV)
    if shared:
        return Path(shared)
    return _own_dir()


@functools.cache
def _own_dir() -> Path:
    root = Path(tempfile.mkdtemp(prefix="psn-tests-"))
    atexit.register(shutil.rmtree, root, True)
    return root


@functools.cache
def exported_models() -> Path:
    """A directory holding one model directory per kind (named after the kind). Do not modify it.

    Exported once per test run: the first worker to get here exports (under a lock), the others wait for it
    and reuse the result."""
    root = session_dir()
    done = root / "exported-models"
    with open(root / "exported-models.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.is_dir():
            from exporters import export_model

            work = Path(tempfile.mkdtemp(prefix="exporting-", dir=root))
            for kind, k in KINDS.items():
                export_model(
                    tiny_model(kind, k),
                    work / kind,
                    name=kind,
                    dataset="random",
                    test_accuracy=0.0,
                    command=f"tests/fixtures.py tiny_model({kind!r}, {k})",
                )
            work.rename(done)  # whole, or not at all
    return done


def copy_models(dst: Path, kinds: tuple[str, ...] = tuple(KINDS)) -> Path:
    """Copy the exported model directories of ``kinds`` into dst (created); returns dst."""
    src = exported_models()
    dst.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        shutil.copytree(src / kind, dst / kind)
    return dst


def run_full(models_dir: Path, kind: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits [B, C], step_logits [B, T, C]) of the model's full.onnx run directly by ORT."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(models_dir / kind / "full.onnx"), providers=["CPUExecutionProvider"])
    logits, step_logits = sess.run(["logits", "step_logits"], {"x": np.ascontiguousarray(x, np.float32)})
    return logits, step_logits


def sequences(n: int, seed: int = 0, length: int = T) -> np.ndarray:
    """n random input sequences [n, length, F] float32."""
    return np.random.default_rng(seed).standard_normal((n, length, F)).astype(np.float32)


def make_runtime(models_dir: Path, observer: Any = None, **config):
    """A loaded Runtime over models_dir (CPU provider unless config says otherwise), with ``observer`` (a
    :class:`Recorder`, say) given its hooks."""
    from psn_runtime import Runtime, RuntimeConfig

    config.setdefault("providers", ["CPUExecutionProvider"])
    runtime = Runtime(RuntimeConfig(models_dir=models_dir, **config), observer=observer)
    runtime.load()
    return runtime


class Recorder:
    """A RuntimeObserver that records every hook call (the runtime logs and ignores a hook's exceptions, so
    a check belongs in the test, after the fact, not in a hook)."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, int]] = []
        self.seconds: list[float] = []
        self.opened: list[str] = []
        self.closed: list[tuple[str, str]] = []
        self.versions: set[str] = set()  # of every step batch, stream opened and stream closed
        self.statuses: list[Any] = []  # ModelInfo of every status change
        self.on_close: Callable[[str, str], None] | None = None  # called after recording a close

    def on_step_batch(self, model: str, version: str, size: int, seconds: float) -> None:
        self.batches.append((model, size))
        self.seconds.append(seconds)
        self.versions.add(version)

    def on_stream_open(self, model: str, version: str) -> None:
        self.opened.append(model)
        self.versions.add(version)

    def on_stream_close(self, model: str, version: str, reason: str) -> None:
        self.closed.append((model, reason))
        self.versions.add(version)
        if self.on_close is not None:
            self.on_close(model, reason)

    def on_model_status(self, info: Any) -> None:
        self.statuses.append(info)


class OrtRuns:
    """Controls every ``onnxruntime.InferenceSession.run`` of this process while installed (pytest's
    monkeypatch undoes it): ``hold()`` makes the runs from then on wait until ``release()``, ``started()``
    waits (without blocking the event loop) until one of them has begun, ``fail_next(exc)`` makes the next
    run raise. For the runtime's worker-thread path (``inline_max_rows=0``): no sleeps, no timing."""

    def __init__(self, monkeypatch: Any) -> None:
        import onnxruntime as ort

        real = ort.InferenceSession.run
        self._open = threading.Event()
        self._open.set()
        self._begun = threading.Semaphore(0)
        self._fail: Exception | None = None

        def run(session: Any, *args: Any, **kwargs: Any) -> Any:
            self._begun.release()
            failure, self._fail = self._fail, None
            if failure is not None:
                raise failure
            if not self._open.wait(WAIT_S):
                raise TimeoutError(f"OrtRuns held a run for {WAIT_S} s: the test never released it")
            return real(session, *args, **kwargs)

        monkeypatch.setattr(ort.InferenceSession, "run", run)

    def hold(self) -> None:
        self._begun = threading.Semaphore(0)
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def fail_next(self, exc: Exception) -> None:
        self._fail = exc

    async def started(self) -> None:
        """Until a run begun after hold() is in progress."""
        begun = self._begun
        ok = await asyncio.get_running_loop().run_in_executor(None, begun.acquire, True, WAIT_S)
        assert ok, f"no onnxruntime run began within {WAIT_S} s"


def ort_workers(model: str) -> set[threading.Thread]:
    """The live ORT worker threads of a model's streams (the runtime names them ``psn-ort-<model>``)."""
    return {t for t in threading.enumerate() if t.name == f"psn-ort-{model}"}


def batcher_running(model: str) -> bool:
    """Is a step batcher of the model running on this event loop (the task ``psn-batcher-<model>``)?"""
    return any(t.get_name() == f"psn-batcher-{model}" and not t.done() for t in asyncio.all_tasks())


async def yield_to_others(times: int = 20) -> None:
    """Let every ready task of the event loop run ``times`` turns (no time passes: asyncio.sleep(0))."""
    for _ in range(times):
        await asyncio.sleep(0)


def running_means(step_logits: np.ndarray) -> np.ndarray:
    """[B, T, C] step logits -> [B, T, C] mean of the logits of steps 0..t."""
    counts = np.arange(1, step_logits.shape[1] + 1, dtype=np.float64)[None, :, None]
    return np.cumsum(step_logits.astype(np.float64), axis=1) / counts
