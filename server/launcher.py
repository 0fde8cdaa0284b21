"""Start ``psn serve`` as a subprocess on a port it binds itself: the one launcher of tests and benchmarks.

    from server.launcher import serve

    with serve("--providers", "CPUExecutionProvider", models_dir=models, log=tmp / "server.log") as server:
        httpx.get(server.base_url + "/v1/models")       # server.process, server.port, server.ports

The server runs with ``--port 0 --port-file FILE`` (or ``port=`` a port an earlier run of it bound, to
restart on the same address): it binds first, then writes the port(s) it bound into FILE (server/listen.py);
the launcher reads them from there and waits until ``/readyz`` answers 200. No port is ever chosen before
the server has bound it, so parallel tests never race for one. ``stop()`` sends SIGTERM to the process by
its PID and SIGKILL after ``timeout`` seconds; leaving ``serve()`` always stops it.

The server's settings come from ``args`` and ``env`` only: the caller's ``PSN_*`` variables are not passed
on (a developer's ``PSN_API_KEY`` must not change what a test serves).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from server.listen import url

REPO = Path(__file__).resolve().parents[1]
REPORT_TIMEOUT_S = 60.0  # start Python, parse the settings, bind: seconds, even on a busy machine
READY_TIMEOUT_S = 90.0  # load every model
STOP_TIMEOUT_S = 20.0  # after SIGTERM (the drain takes up to server.cli.GRACE_S): then SIGKILL
POLL_S = 0.02
SETTINGS_PREFIX = "PSN_"  # the server's settings variables


class LaunchError(RuntimeError):
    """The server exited, or did not report its port or become ready in time (the message ends with the
    tail of its log)."""


class Server:
    """A running ``psn serve``: ``process`` (subprocess.Popen), ``ports`` ({"http": PORT, ...}),
    ``base_url`` (http://HOST:PORT), ``log`` (its stdout and stderr)."""

    def __init__(
        self,
        command: Callable[[dict[str, int], Path], list[str]],
        *,
        host: str,
        port: int,
        env: dict[str, str],
        log: Path | None,
        preexec_fn: Callable[[], Any] | None,
        name: str = "psn serve",
    ) -> None:
        self._command, self._env, self._preexec_fn, self.name = command, env, preexec_fn, name
        self._tmp = Path(tempfile.mkdtemp(prefix="psn-launch-"))
        self.host = host
        self.log = log if log is not None else self._tmp / "server.log"
        self.ports: dict[str, int] = {}
        self.report: dict[str, Any] = {}
        try:
            self._spawn({"http": port})
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise

    # -- what it bound
    @property
    def port(self) -> int:
        return self.ports["http"]

    @property
    def base_url(self) -> str:
        return url("http", self.host, self.port)

    @property
    def pid(self) -> int:
        return self.process.pid

    def ws_url(self, path: str) -> str:
        """``ws://HOST:PORT`` + path (``/v1/models/NAME/stream?...``)."""
        return url("ws", self.host, self.port) + path

    # -- life
    def _spawn(self, ports: dict[str, int]) -> None:
        port_file = self._tmp / "ports.json"
        port_file.unlink(missing_ok=True)
        with open(self.log, "a") as out:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                self._command(ports, port_file),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env,
                cwd=REPO,
                preexec_fn=self._preexec_fn,
            )
        try:
            self.report = self._wait_for_report(port_file)
        except BaseException:
            self.stop(signal.SIGKILL)
            raise
        self.ports = {name: int(p) for name, p in self.report["ports"].items()}

    def _wait_for_report(self, port_file: Path) -> dict[str, Any]:
        deadline = time.monotonic() + REPORT_TIMEOUT_S
        while not port_file.exists():
            self._check_alive("before it reported its port")
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"{self.name} did not report its port in {REPORT_TIMEOUT_S:.0f} s{self._tail()}"
                )
            time.sleep(POLL_S)
        return json.loads(port_file.read_text())

    def wait_ready(self, timeout: float = READY_TIMEOUT_S, path: str = "/readyz") -> None:
        """Until ``GET path`` answers 200 (every model loaded); LaunchError if it exits or times out."""
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.base_url, timeout=5.0) as client:
            while True:
                self._check_alive("before it was ready")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(path).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise LaunchError(f"{self.name} was not ready in {timeout:.0f} s{self._tail()}")
                time.sleep(POLL_S)

    def _check_alive(self, when: str) -> None:
        if self.process.poll() is not None:
            raise LaunchError(
                f"{self.name} exited with status {self.process.returncode} {when}{self._tail()}"
            )

    def restart(self, *, ready: bool = True) -> None:
        """Stop it (SIGTERM) if it runs, then start it again with the same arguments on the same ports."""
        self.stop()
        self._spawn(self.ports)
        if ready:
            self.wait_ready()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """Send ``sig`` to the process (by PID) and wait for it to exit; SIGKILL after ``timeout`` seconds.
        Returns its exit status (negative: the signal that ended it)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def close(self) -> None:
        """Stop it and remove the launcher's temporary folder (and with it a log not given by the caller)."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _tail(self) -> str:
        return f"; its log ({self.log}) ends:\n{self.log_tail()}"

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def server_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The caller's environment less its ``PSN_*`` variables, the repository on PYTHONPATH, then ``env``."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIX)}
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), out.get("PYTHONPATH")) if p)
    out["PYTHONUNBUFFERED"] = "1"
    out.update(env or {})
    return out


def start(
    *args: str,
    models_dir: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    log: Path | None = None,
    env: Mapping[str, str] | None = None,
    ready: bool = True,
    ready_timeout: float = READY_TIMEOUT_S,
    grpc: bool = False,
    prefix: Sequence[str] = (),
    preexec_fn: Callable[[], Any] | None = None,
) -> Server:
    """Start ``psn serve --host HOST --port PORT [--models-dir DIR] ARGS...`` and return it once it has
    bound its port(s) (and, with ready=True, answers /readyz 200). ``grpc``: serve gRPC too, on a port it
    binds itself (``ports["grpc"]``; off by default). ``prefix``: a command the server runs under
    (``taskset -c 0``); ``log``: where its output goes (appended; default a temporary file)."""

    def command(ports: dict[str, int], port_file: Path) -> list[str]:
        """The command line; ``ports``: {"http": 0} the first time, the ports bound before on a restart."""
        grpc_port = str(ports.get("grpc", 0)) if grpc else "off"
        argv = [
            *prefix,
            sys.executable,
            "-m",
            "psn.cli",
            "serve",
            "--host",
            host,
            "--port",
            str(ports["http"]),
        ]
        argv += ["--grpc-port", grpc_port, "--port-file", str(port_file)]
        if models_dir is not None:
            argv += ["--models-dir", str(models_dir)]
        return argv + list(args)

    server = Server(command, host=host, port=port, env=server_env(env), log=log, preexec_fn=preexec_fn)
    if ready:
        try:
            server.wait_ready(ready_timeout)
        except BaseException:
            server.close()
            raise
    return server


@contextlib.contextmanager
def serve(*args: str, **options: Any) -> Iterator[Server]:
    """:func:`start` as a context manager: the server is stopped (SIGTERM, then SIGKILL) on the way out."""
    server = start(*args, **options)
    try:
        yield server
    finally:
        server.close()


__all__ = ["LaunchError", "Server", "serve", "start"]
