"""Server processes of the serving suite on 127.0.0.1, pinned to cores, always stopped; CPU time of any
process.

A server binds its own port: ``psn serve`` through the one launcher (server/launcher.py), the floor apps with
``--port 0 --port-file FILE``, so no port is chosen before a server binds it. Peers that cannot (KServe,
LitServe) get a free port and are restarted on another one if it was taken meanwhile. The server runs on
one core (or a set of cores: ``--workers``) and the load (wrk, WebSocket clients, the profiler) on another.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import BenchError
from bench.models import REPO_ROOT

HOST = "127.0.0.1"
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Pinning:
    """The cores the server runs on and the core the load runs on (empty / None: not pinned)."""

    server: tuple[int, ...] = ()
    load: int | None = None

    @property
    def note(self) -> str:
        if not self.server:
            return "not pinned: server and load share the cores"
        where = "unpinned (shares the server's cores)" if self.load is None else f"on core {self.load}"
        return f"server pinned to core(s) {','.join(map(str, self.server))}, load (clients) {where}"

    def server_setup(self):
        return _child_setup(self.server)

    def load_setup(self):
        return _child_setup(() if self.load is None else (self.load,))


def choose_pinning(enabled: bool = True, server_cores: int = 1) -> Pinning:
    """The first ``server_cores`` cores for the server, the next one (if any) for the load."""
    cores = sorted(os.sched_getaffinity(0))
    if not enabled or len(cores) < server_cores + (1 if server_cores == 1 else 0):
        return Pinning()
    return Pinning(tuple(cores[:server_cores]), cores[server_cores] if server_cores < len(cores) else None)


def _child_setup(cores: tuple[int, ...]):
    """In the child before exec: die with the suite (SIGTERM when its parent goes), pin to ``cores``."""

    def setup() -> None:
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if cores:
            os.sched_setaffinity(0, set(cores))

    return setup


def pin_self(core: int | None) -> None:
    if core is not None:
        os.sched_setaffinity(0, {core})


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _stat_cpu(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15 of stat)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live children (LitServe's workers, uvicorn's with
    --workers), all their threads, from /proc."""
    total = _stat_cpu(Path(f"/proc/{pid}/stat"))
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            total += sum(cpu_seconds(int(c)) for c in (task / "children").read_text().split())
    return total


@dataclass(frozen=True)
class ThreadTimes:
    """CPU seconds and context switches of a process, its main thread apart from the others."""

    main_cpu_s: float
    other_cpu_s: float
    switches: int  # voluntary + involuntary, every thread

    def minus(self, before: ThreadTimes) -> ThreadTimes:
        return ThreadTimes(
            self.main_cpu_s - before.main_cpu_s,
            self.other_cpu_s - before.other_cpu_s,
            self.switches - before.switches,
        )


def thread_times(pid: int) -> ThreadTimes | None:
    """From /proc/<pid>/task/*; None where /proc is not there. Threads that ended in between drop out."""
    main = other = 0.0
    switches = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            cpu, status = _stat_cpu(task / "stat"), (task / "status").read_text()
        except OSError:
            continue
        main, other = (main + cpu, other) if task.name == str(pid) else (main, other + cpu)
        switches += sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line)
    return ThreadTimes(main, other, switches)


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict | None = None,
    timeout: float = 30.0,
) -> tuple[int, bytes, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read(), response
    finally:
        conn.close()


class ServerProcess:
    """One server subprocess: ``with ServerProcess(...) as server:`` starts it and always stops it.

    ``port_file``: the server takes ``--port 0 --port-file FILE`` and reports its port there; else it is
    given ``--port N`` for a free N (retried on another port if N was taken meanwhile)."""

    def __init__(
        self,
        label: str,
        argv: list[str],
        log_path: Path,
        pinning: Pinning,
        *,
        ready_path: str = "/readyz",
        port_file: bool = True,
        env: dict | None = None,
    ) -> None:
        self.label, self.argv, self.log_path, self.pinning = label, argv, log_path, pinning
        self.ready_path, self.port_file, self.env = ready_path, port_file, env or {}
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError(f"{self.label}: not running")
        return self.proc.pid

    def command(self) -> list[str]:
        return [*self.argv, "--port", "0" if self.port_file else str(self.port)]

    def start(self) -> ServerProcess:
        for attempt in range(3):
            port_file = self.log_path.with_suffix(".port")
            port_file.unlink(missing_ok=True)
            self.port = 0 if self.port_file else free_port()
            argv = self.command() + (["--port-file", str(port_file)] if self.port_file else [])
            env = dict(os.environ, **self.env)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    argv,
                    cwd=REPO_ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=self.pinning.server_setup(),
                    start_new_session=True,  # its own process group: stop() ends the workers it spawns too
                )
            try:
                self._wait_ready(port_file)
                return self
            except BenchError:
                self.stop()
                if attempt == 2 or "address already in use" not in self.log_tail().lower():
                    raise
        raise AssertionError("unreachable")

    def _wait_ready(self, port_file: Path) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.label} exited with status {self.proc.returncode} before it was ready; "
                    f"its log ({self.log_path}) ends:\n{self.log_tail()}"
                )
            if not self.port and port_file.is_file() and port_file.read_text().strip():
                self.port = int(port_file.read_text().strip())
            try:
                if self.port and request(self.port, "GET", self.ready_path, timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise BenchError(
            f"{self.label} not ready after {READY_TIMEOUT_S:.0f} s; log ends:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def thread_times(self) -> ThreadTimes | None:
        return thread_times(self.pid)

    def stop(self) -> None:
        """SIGTERM to the server's process group (LitServe's workers, uvicorn's), SIGKILL after a while."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_TIMEOUT_S)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is left
        proc.wait(STOP_TIMEOUT_S)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PsnServer(ServerProcess):
    """``psn serve`` started by the one launcher (server/launcher.py): it binds its port itself."""

    def __init__(self, label: str, args: list[str], log_path: Path, pinning: Pinning) -> None:
        super().__init__(label, ["psn", "serve", *args], log_path, pinning)
        self.args, self.server = args, None
        self.gc_file = log_path.with_suffix(".gc.json")  # bench.serving.gctrace keeps its GC pauses here

    def gc_totals(self) -> dict | None:
        from bench.serving.gctrace import read

        try:
            return read(self.gc_file)
        except (OSError, ValueError):
            return None

    def command(self) -> list[str]:
        return [*self.argv, "--port", str(self.port)]

    def start(self) -> PsnServer:
        from server.launcher import LaunchError, start

        try:
            trace = [sys.executable, "-m", "bench.serving.gctrace", str(self.gc_file), "--"]
            setup = self.pinning.server_setup()
            self.server = start(*self.args, host=HOST, log=self.log_path, preexec_fn=setup, prefix=trace)
        except LaunchError as exc:
            raise BenchError(f"{self.label}: {exc}") from exc
        self.proc, self.port = self.server.process, self.server.port
        return self

    def stop(self) -> None:
        server, self.server, self.proc = self.server, None, None
        if server is not None:
            server.close()


def psn_server(
    models_dir: Path,
    *,
    batching: bool,
    log_dir: Path,
    pinning: Pinning,
    providers: list[str] | None = None,
    workers: int = 1,
) -> PsnServer:
    """``psn serve`` with the service's defaults, except limits that a load test would hit on purpose."""
    limits = "--max-streams 4096 --max-stream-steps 100000000 --idle-timeout-s 120"
    args = ["--models-dir", str(models_dir), "--batching" if batching else "--no-batching"]
    args += ["--log-level", "warning", *limits.split()]
    args += ["--providers", ",".join(providers)] if providers else []
    name = "batching-on" if batching else "batching-off"
    if workers > 1:
        args += ["--workers", str(workers)]
        name += f"-{workers}-workers"
    return PsnServer(f"psn serve ({name})", args, log_dir / f"psn-serve-{name}.log", pinning)


def echo_server(log_dir: Path, pinning: Pinning, kind: str = "raw") -> ServerProcess:
    """The stack's floor (``raw``: a raw ASGI app that parses the body with orjson) or the FastAPI echo."""
    argv = [sys.executable, "-m", "bench.serving.echo_app", "--kind", kind, "--host", HOST]
    return ServerProcess(f"echo app ({kind})", argv, log_dir / f"echo-{kind}.log", pinning)
