"""``psn serve --workers N``: N serving processes on one port, one per core.

Each worker is a fresh Python process (multiprocessing, spawn) running the same server as ``--workers 1``
(``cli.server_class()``: on SIGTERM it stops accepting, closes its stream WebSockets with 1001 and drains)
on its own listening socket bound with SO_REUSEPORT to the same address: the kernel spreads new connections
over the workers by a hash of the connection, and a WebSocket (one connection) stays on the worker that
accepted it, with its stream state. Every answer names its worker in ``X-PSN-Worker: <pid>``.

This process supervises: it forwards SIGTERM/SIGINT to every worker as SIGTERM (a second SIGINT would make
uvicorn skip the drain), waits for them to drain, restarts a worker that dies on its own (one that dies
before its app has started ends the whole server: a bad model directory would only crash again), and
owns the Prometheus multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``, a temporary folder it creates
and removes): each worker writes its metrics there, and ``/metrics`` on any worker sums every worker's.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from server.metrics import MULTIPROC_ENV
from server.settings import Settings

log = logging.getLogger("psn.server")

STOP_TIMEOUT_S = 15.0  # beyond the drain grace: then SIGKILL
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


WORKER_HEADER = b"x-psn-worker"


class WorkerHeader:
    """ASGI wrapper: every HTTP response and WebSocket handshake of this worker names it in
    ``X-PSN-Worker: <pid>`` (which process answered; a stream stays on the one that accepted it)."""

    def __init__(self, app: Any, on_ready: Callable[[], None] | None = None) -> None:
        self.app = app
        self.on_ready = on_ready
        self.header = (WORKER_HEADER, str(os.getpid()).encode())

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":

            async def send_ready(message: dict) -> None:
                if message["type"] == "lifespan.startup.complete" and self.on_ready is not None:
                    self.on_ready()  # models loaded: from now on a death is a crash, not a failed start
                await send(message)

            await self.app(scope, receive, send_ready)
            return

        async def send_named(message: dict) -> None:
            if message["type"] in ("http.response.start", "websocket.accept"):
                message = {**message, "headers": [*message.get("headers", ()), self.header]}
            await send(message)

        await self.app(scope, receive, send_named)


def _worker_app(settings: Settings, ready: Any) -> WorkerHeader:
    from server.app import build_app

    return WorkerHeader(build_app(settings), ready.set)


def worker_main(env: dict[str, str], options: dict[str, Any], ready: Any) -> None:
    """One worker (in a spawned process): the settings from ``env``, its own SO_REUSEPORT socket."""
    _die_with_parent()
    os.environ.update(env)
    import uvicorn

    from server.cli import _configure_logging, server_class
    from server.listen import bind_socket

    settings = Settings()
    _configure_logging(settings.log_level)
    sock = bind_socket(options["host"], options["port"], reuse_port=True)
    config = uvicorn.Config(partial(_worker_app, settings, ready), factory=True, **options)
    server = server_class()(config)
    server.run(sockets=[sock])
    raise SystemExit(0 if server.started else 3)


class Supervisor:
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.options = options
        self.count = settings.workers
        self.ctx = mp.get_context("spawn")
        self.procs: list[tuple[Any, Any]] = []  # (process, its ready event: set once its app started)
        self.stopping = False
        self.metrics_dir = ""

    def _stop(self, signum: int, frame: object) -> None:
        if not self.stopping:
            log.info("signal %d: stopping %d worker(s)", signum, len(self.procs))
        self.stopping = True

    def _start(self, env: dict[str, str]) -> tuple[Any, Any]:
        ready = self.ctx.Event()
        proc = self.ctx.Process(target=worker_main, args=(env, self.options, ready), name="psn-worker")
        proc.start()
        return proc, ready

    def run(self) -> int:
        # the port is held by the caller for the server's life (server.listen.bind_http): bound, not
        # listening, SO_REUSEPORT; options["port"] is the port it bound (never 0)
        host, port = self.options["host"], self.options["port"]
        self.metrics_dir = tempfile.mkdtemp(prefix="psn-metrics-")
        env = {**self.settings.env(), MULTIPROC_ENV: self.metrics_dir}
        # in this process's environment too, so a spawned worker has it before anything imports
        # prometheus_client (which picks its value class once, at import)
        previous_dir = os.environ.get(MULTIPROC_ENV)
        os.environ[MULTIPROC_ENV] = self.metrics_dir
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        status = 0
        try:
            log.info("starting %d workers on http://%s:%d (SO_REUSEPORT)", self.count, host, port)
            self.procs = [self._start(env) for _ in range(self.count)]
            status = self._supervise(env)
        finally:
            self._stop_all()
            for s, handler in previous.items():
                signal.signal(s, handler)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
            if previous_dir is None:
                os.environ.pop(MULTIPROC_ENV, None)
            else:
                os.environ[MULTIPROC_ENV] = previous_dir
        return status

    def _supervise(self, env: dict[str, str]) -> int:
        while not self.stopping:
            mp.connection.wait([p.sentinel for p, _ in self.procs], timeout=0.5)
            for i, (proc, ready) in enumerate(self.procs):
                if proc.is_alive() or self.stopping:
                    continue
                self._forget(proc.pid)
                if not ready.is_set():
                    log.error(
                        "worker %d exited with status %s before its app started: stopping",
                        proc.pid,
                        proc.exitcode,
                    )
                    return 1
                log.warning("worker %d exited with status %s: starting another", proc.pid, proc.exitcode)
                self.procs[i] = self._start(env)
        return 0

    def _forget(self, pid: int | None) -> None:
        """A gone worker's live gauges (open streams, pools) must not count any more."""
        if pid is None:
            return
        from prometheus_client import multiprocess

        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid, self.metrics_dir)

    def _stop_all(self) -> None:
        """SIGTERM every worker (each closes its streams with 1001 and drains), wait, SIGKILL leftovers."""
        for proc, _ in self.procs:
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc, _ in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("worker %d did not stop in time: killing it", proc.pid)
                proc.kill()
                proc.join(5)
            self._forget(proc.pid)


def serve_workers(settings: Settings, options: dict[str, Any]) -> int:
    """Run ``settings.workers`` workers on options["port"], which the caller has bound and holds."""
    return Supervisor(settings, options).run()
