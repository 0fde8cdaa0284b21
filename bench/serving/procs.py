"""The servers of the benchmark suites on 127.0.0.1, each started by the one launcher (server/launcher.py,
``--port 0 --port-file F``), pinned to cores and always stopped; CPU time of any process."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.common import BenchError
from server.launcher import LaunchError, Server, server_env, start

HOST = "127.0.0.1"
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
        return _child_setup(self.server, session=True)

    def load_setup(self):
        return _child_setup(() if self.load is None else (self.load,))


def choose_pinning(enabled: bool = True, server_cores: int = 1) -> Pinning:
    """The first ``server_cores`` cores for the server, the next one (if any) for the load."""
    cores = sorted(os.sched_getaffinity(0))
    if not enabled or len(cores) < server_cores + (1 if server_cores == 1 else 0):
        return Pinning()
    return Pinning(tuple(cores[:server_cores]), cores[server_cores] if server_cores < len(cores) else None)


def _child_setup(cores: tuple[int, ...], session: bool = False):
    """In the child before exec: die with the suite, pin to ``cores``; a server gets its own process group
    (``Proc.close`` ends the workers it spawns too)."""

    def setup() -> None:
        if session:
            os.setsid()
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if cores:
            os.sched_setaffinity(0, set(cores))

    return setup


def _stat_cpu(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15 of stat)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live children (workers), all threads, from /proc."""
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
            main_cpu_s=self.main_cpu_s - before.main_cpu_s,
            other_cpu_s=self.other_cpu_s - before.other_cpu_s,
            switches=self.switches - before.switches,
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
    return ThreadTimes(main_cpu_s=main, other_cpu_s=other, switches=switches)


class Proc:
    """A started server: the launcher's ``Server``, a label, and for psn serve its GC trace file."""

    def __init__(self, label: str, server: Server, gc_file: Path | None = None) -> None:
        self.label, self.server, self.gc_file = label, server, gc_file
        self.port, self.pid = server.port, server.pid

    def command(self) -> str:
        return " ".join(map(str, self.server.process.args))

    def gc_totals(self) -> dict | None:
        from bench.serving.gctrace import read

        try:
            return None if self.gc_file is None else read(self.gc_file)
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        """The launcher's stop (SIGTERM, then SIGKILL), then SIGKILL to whatever is left of its group."""
        try:
            self.server.close()
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def launch(label: str, argv: list[str], log: Path, pinning: Pinning, ready_path: str = "/readyz") -> Proc:
    """A server that takes ``--port 0 --port-file F`` (the launcher's report format), ready at ready_path."""

    def command(ports: dict[str, int], port_file: Path) -> list[str]:
        return [*argv, "--host", HOST, "--port", str(ports["http"]), "--port-file", str(port_file)]

    try:
        server = Server(
            command,
            host=HOST,
            port=0,
            env=server_env(),
            log=log,
            preexec_fn=pinning.server_setup(),
            name=label,
        )
    except LaunchError as exc:
        raise BenchError(f"{label}: {exc}") from exc
    proc = Proc(label, server)
    try:
        server.wait_ready(path=ready_path)
    except BaseException as exc:
        proc.close()
        raise BenchError(f"{label}: {exc}") from exc
    return proc


def psn_server(
    models_dir: Path,
    *,
    batching: bool,
    log_dir: Path,
    pinning: Pinning,
    providers: list[str] | None = None,
    workers: int = 1,
) -> Proc:
    """``psn serve`` with the service's defaults, except limits that a load test would hit on purpose; its
    garbage collections traced (bench.serving.gctrace)."""
    args = ["--batching" if batching else "--no-batching", "--log-level", "warning"]
    args += ["--max-streams", "4096", "--max-stream-steps", "100000000", "--idle-timeout-s", "120"]
    args += ["--providers", ",".join(providers)] if providers else []
    name = "batching-on" if batching else "batching-off"
    if workers > 1:
        args += ["--workers", str(workers)]
        name += f"-{workers}-workers"
    log, label = log_dir / f"psn-serve-{name}.log", f"psn serve ({name})"
    gc_file = log.with_suffix(".gc.json")
    trace = [sys.executable, "-m", "bench.serving.gctrace", str(gc_file), "--"]
    try:
        server = start(
            *args,
            models_dir=models_dir,
            host=HOST,
            log=log,
            preexec_fn=pinning.server_setup(),
            prefix=trace,
        )
    except LaunchError as exc:
        raise BenchError(f"{label}: {exc}") from exc
    return Proc(label, server, gc_file)


def echo_server(log_dir: Path, pinning: Pinning, kind: str = "raw") -> Proc:
    """The stack's floor (``raw``: a raw ASGI app that parses the body with orjson) or the FastAPI echo."""
    argv = [sys.executable, "-m", "bench.serving.echo_app", "--kind", kind]
    return launch(f"echo app ({kind})", argv, log_dir / f"echo-{kind}.log", pinning)
