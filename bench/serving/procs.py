"""Server processes of the serving suite: a ``psn serve`` or the echo app on 127.0.0.1, pinned to one core,
started on a free port, waited for until ready, and always terminated; CPU time of any process.

The server runs on one core (``taskset -c 0``) and the load (wrk, WebSocket clients) on another, so that
the two do not compete for a core.
"""

from __future__ import annotations

import ctypes
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import BenchError

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Pinning:
    """The core the server runs on and the core the load runs on (None: not pinned)."""

    server: int | None
    load: int | None

    @property
    def note(self) -> str:
        if self.server is None:
            return "not pinned (fewer than 2 cores available): server and load share the cores"
        how = "taskset -c" if shutil.which("taskset") else "sched_setaffinity"
        return (
            f"server pinned to core {self.server} ({how} {self.server}), load (clients) on core {self.load}"
        )

    def prefix(self) -> list[str]:
        """The command prefix that pins a child process to the server's core."""
        if self.server is None or not shutil.which("taskset"):
            return []
        return ["taskset", "-c", str(self.server)]

    def load_prefix(self) -> list[str]:
        if self.load is None or not shutil.which("taskset"):
            return []
        return ["taskset", "-c", str(self.load)]

    def pin_load(self) -> None:
        """Pin the calling process (a load generator) to the load core."""
        if self.load is not None:
            os.sched_setaffinity(0, {self.load})


def choose_pinning(enabled: bool = True) -> Pinning:
    cores = sorted(os.sched_getaffinity(0))
    if not enabled or len(cores) < 2:
        return Pinning(None, None)
    return Pinning(cores[0], cores[1])


def _child_setup(core: int | None):
    """In the child before exec: die with the suite (SIGTERM when its parent goes), optionally pin."""

    def setup() -> None:
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass
        if core is not None:
            os.sched_setaffinity(0, {core})

    return setup


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (psutil when installed, else /proc)."""
    try:
        import psutil
    except ModuleNotFoundError:
        psutil = None
    if psutil is not None:
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15 of stat)


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
    """From /proc/<pid>/task/*/{stat,status}; None where /proc is not there. Threads that ended in between
    drop out of the sum (the server's threads live as long as it does)."""
    main = other = 0.0
    switches = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            status = (task / "status").read_text()
        except OSError:
            continue
        cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
        if task.name == str(pid):
            main += cpu
        else:
            other += cpu
        switches += sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches" in line)
    return ThreadTimes(main, other, switches)


def get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def post(
    port: int,
    path: str,
    body: bytes,
    content_type: str = "application/json",
    header: str = "",
    timeout: float = 30.0,
) -> tuple[int, bytes, int | None]:
    """(status, body, Inference-Header-Content-Length of the answer or None)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    headers = {"Content-Type": content_type}
    if header:
        name, value = header.split(":", 1)
        headers[name.strip()] = value.strip()
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        length = response.getheader("Inference-Header-Content-Length")
        return response.status, response.read(), None if length is None else int(length)
    finally:
        conn.close()


class ServerProcess:
    """One server subprocess: ``with ServerProcess(...) as server:`` starts it and always stops it."""

    def __init__(self, label: str, argv: list[str], log_path: Path, pinning: Pinning) -> None:
        self.label = label
        self.argv = argv  # without --port: added at start
        self.log_path = log_path
        self.pinning = pinning
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError(f"{self.label}: not running")
        return self.proc.pid

    def command(self) -> list[str]:
        return [*self.pinning.prefix(), *self.argv, "--port", str(self.port)]

    def start(self) -> ServerProcess:
        for attempt in range(3):  # a free port can be taken between free_port() and bind: try another
            self.port = free_port()
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
            with self.log_path.open("ab") as log:
                core = self.pinning.server if not self.pinning.prefix() else None  # else taskset pins
                pre = _child_setup(core)
                self.proc = subprocess.Popen(
                    self.command(), cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, preexec_fn=pre,
                )  # fmt: skip
            try:
                self._wait_ready()
                return self
            except BenchError:
                self.stop()
                if attempt == 2 or "address already in use" not in self.log_tail().lower():
                    raise
        raise AssertionError("unreachable")

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"{self.label} exited with status {self.proc.returncode} before it was ready; "
                    f"its log ({self.log_path}) ends:\n{self.log_tail()}"
                )
            try:
                status, _ = get(self.port, "/readyz")
                if status == 200:
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
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def psn_server(
    models_dir: Path,
    *,
    batching: bool,
    log_dir: Path,
    pinning: Pinning,
    providers: list[str] | None = None,
    workers: int = 1,
) -> ServerProcess:
    """``psn serve`` with the service's defaults, except limits that a load test would hit on purpose."""
    argv = [
        sys.executable, "-m", "psn.cli", "serve", "--host", HOST, "--models-dir", str(models_dir),
        "--batching" if batching else "--no-batching", "--log-level", "warning",
        "--max-streams", "4096", "--max-stream-steps", "100000000", "--idle-timeout-s", "120",
    ]  # fmt: skip
    if providers:
        argv += ["--providers", ",".join(providers)]
    name = "batching-on" if batching else "batching-off"
    if workers > 1:
        argv += ["--workers", str(workers)]
        name += f"-{workers}-workers"
    return ServerProcess(f"psn serve ({name})", argv, log_dir / f"psn-serve-{name}.log", pinning)


def echo_server(log_dir: Path, pinning: Pinning) -> ServerProcess:
    argv = [sys.executable, "-m", "bench.serving.echo_app", "--host", HOST]
    return ServerProcess("echo app", argv, log_dir / "echo-app.log", pinning)
