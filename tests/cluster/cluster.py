"""The machinery of the cluster scenarios (make cluster-test): replicas of ``psn serve`` in network
namespaces behind nginx, and everything to remove them again.

Replica i runs in namespace ``{net.ns}{i}`` at 10.{net.subnet}.i.2, reached over its own veth pair from the
root namespace (10.{net.subnet}.i.1), as separate hosts would be; nginx listens on loopback in front of
them (deploy/nginx/psn-serve.conf rendered for these replicas, with a header naming the replica that
answered). ``cleanup`` (idempotent) kills every process by its process group, deletes the namespaces
and the temporary directory. Each scenario uses its own namespaces and subnet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
PORT = 8000
UPSTREAM_HEADER = "X-PSN-Upstream"


@dataclass(frozen=True)
class Net:
    ns: str  # namespace name prefix (replica i: ns + str(i))
    veth: str  # root-side veth name prefix (the namespace side adds "n")
    subnet: int  # 10.SUBNET.i.0/30 for replica i

    def addr(self, i: int) -> str:
        return f"10.{self.subnet}.{i}.2"

    def replica_of(self, address: str) -> int:
        """The replica at ``address`` (``10.S.i.2[:port]``), -1 for anything else."""
        host = address.strip().split(":")[0]
        parts = host.split(".")
        if len(parts) == 4 and parts[:2] == ["10", str(self.subnet)]:
            return int(parts[2])
        return -1


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upstream_replica(net: Net, headers: httpx.Headers | dict) -> int:
    """Which replica nginx sent a request to (the last address of its upstream header)."""
    value = headers.get(UPSTREAM_HEADER, "") or ""
    return net.replica_of(value.split(",")[-1])


def replica_at(connections: list[tuple[float, int]], at: float) -> int:
    """The replica a stream was connected to at time ``at``, from its ``(seconds since start, replica)``
    connections in order (-1 before it opened)."""
    replica = -1
    for t, r in connections:
        if t <= at:
            replica = r
    return replica


class Cluster:
    """The namespaces, replicas and nginx of one scenario."""

    def __init__(self, tmp: Path, net: Net, replicas: int, secret: str) -> None:
        self.tmp, self.net, self.replicas, self.secret = tmp, net, replicas, secret
        self.procs: dict[int, subprocess.Popen] = {}
        self.old: list[subprocess.Popen] = []
        self.nginx: subprocess.Popen | None = None
        self.nginx_port = 0
        self.starts = [0] * replicas
        self.cleaned = False

    # -- network -----------------------------------------------------------------------------------------
    def remove_network(self) -> None:
        for i in range(self.replicas):
            run(
                "ip", "netns", "del", f"{self.net.ns}{i}", check=False
            )  # takes its end of the veth pair along
            run("ip", "link", "del", f"{self.net.veth}{i}", check=False)

    def setup_network(self) -> None:
        self.remove_network()  # leftovers of a run that could not clean up
        routes = run("ip", "route").stdout
        if any(f"10.{self.net.subnet}.{i}." in routes for i in range(self.replicas)):
            raise RuntimeError(
                f"10.{self.net.subnet}.0-{self.replicas - 1}.0/30 are in use on this host:\n{routes}"
            )
        for i in range(self.replicas):
            ns, host, peer = f"{self.net.ns}{i}", f"{self.net.veth}{i}", f"{self.net.veth}{i}n"
            run("ip", "netns", "add", ns)
            run("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
            run("ip", "link", "set", peer, "netns", ns)
            run("ip", "addr", "add", f"10.{self.net.subnet}.{i}.1/30", "dev", host)
            run("ip", "link", "set", host, "up")
            run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.net.addr(i)}/30", "dev", peer)
            run("ip", "netns", "exec", ns, "ip", "link", "set", peer, "up")
            run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")

    # -- replicas ----------------------------------------------------------------------------------------
    def start(self, i: int, models_dir: Path, args: Sequence[str] = ()) -> None:
        """Start replica i (again): ``psn serve`` in its namespace, the shared stream secret, CPU."""
        if i in self.procs:
            self.old.append(self.procs.pop(i))
        self.starts[i] += 1
        env = {**os.environ, "PYTHONPATH": str(REPO), "PSN_STREAM_SECRET": self.secret}
        cmd = ["ip", "netns", "exec", f"{self.net.ns}{i}", sys.executable, "-m", "server.cli"]
        cmd += ["--host", self.net.addr(i), "--port", str(PORT), "--models-dir", str(models_dir)]
        cmd += ["--providers", "CPUExecutionProvider", "--log-level", "warning", *args]
        with open(self.tmp / f"replica-{i}-{self.starts[i]}.log", "w") as log:
            self.procs[i] = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
            )

    def signal(self, i: int, sig: int) -> None:
        self.procs[i].send_signal(sig)  # ip netns exec execs the server: this pid is the server's

    def url(self, i: int) -> str:
        return f"http://{self.net.addr(i)}:{PORT}"

    async def wait_ready(self, i: int, timeout: float = 60.0) -> float:
        """Wait until replica i answers /readyz 200; returns when (time.monotonic())."""
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as http:
            while time.monotonic() < deadline:
                if self.procs[i].poll() is not None:
                    raise RuntimeError(f"replica {i} exited with {self.procs[i].returncode}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"{self.url(i)}/readyz")).status_code == 200:
                        return time.monotonic()
                await asyncio.sleep(0.1)
        raise TimeoutError(f"replica {i} was not ready in {timeout} s")

    # -- nginx -------------------------------------------------------------------------------------------
    def start_nginx(self) -> str:
        sys.path.insert(0, str(REPO / "deploy" / "nginx"))
        import render  # deploy/nginx/render.py

        prefix = self.tmp / "nginx"
        prefix.mkdir()
        prefix.chmod(0o755)  # nginx's workers (user nobody) write their temp files here
        self.tmp.chmod(0o755)
        self.nginx_port = free_port()
        replicas = [f"{self.net.addr(i)}:{PORT}" for i in range(self.replicas)]
        extra = f"    add_header {UPSTREAM_HEADER} $upstream_addr always;  # which replica answered"
        conf = prefix / "nginx.conf"
        conf.write_text(render.standalone(replicas, prefix, f"127.0.0.1:{self.nginx_port}", extra))
        test = run("nginx", "-t", "-p", str(prefix), "-c", str(conf), check=False)
        if test.returncode != 0:
            raise RuntimeError(f"nginx -t refused the config:\n{test.stderr}")
        with open(self.tmp / "nginx.out", "w") as out:
            self.nginx = subprocess.Popen(
                ["nginx", "-p", str(prefix), "-c", str(conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.nginx_port), 1):
                return f"http://127.0.0.1:{self.nginx_port}"
            time.sleep(0.05)
        raise RuntimeError("nginx did not listen")

    # -- logs and cleanup --------------------------------------------------------------------------------
    def logs(self) -> dict[str, str]:
        """The tails of the replicas' logs and what nginx saw go wrong (retries, refused, reset)."""
        logs = {p.name: p.read_text()[-3000:] for p in sorted(self.tmp.glob("replica-*.log"))}
        errors = self.tmp / "nginx" / "error.log"
        if errors.exists():
            lines = [line for line in errors.read_text().splitlines() if "[warn]" not in line]
            logs["nginx error.log"] = "\n".join(lines)[-6000:]
        return logs

    def cleanup(self) -> None:
        if self.cleaned:
            return
        self.cleaned = True
        for proc in [*self.procs.values(), *self.old, *([self.nginx] if self.nginx else [])]:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # its own session: the process and its children
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        self.remove_network()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def leftovers(self) -> list[str]:
        names = run("ip", "netns", "list").stdout
        left = [f"{self.net.ns}{i}" for i in range(self.replicas) if f"{self.net.ns}{i}" in names]
        left += [f"pid {p.pid}" for p in [*self.procs.values(), *self.old] if p.poll() is None]
        return left + ([str(self.tmp)] if self.tmp.exists() else [])


async def uninterrupted(
    runtime: Any, model: str, inputs: Any, reset_every: int | None, version: str | None = None
) -> list[tuple]:
    """(t, label, probabilities) after each step of one stream run without interruption on ``runtime`` (a
    psn_runtime.Runtime in this process), reset every ``reset_every`` steps: what a replica must answer."""
    sid = await runtime.open_stream(model, version)
    answers = []
    for j, x in enumerate(inputs):
        if reset_every and j and j % reset_every == 0:
            runtime.reset_stream(sid)
        r = await runtime.step(sid, x)
        answers.append((r.t, r.label, r.probabilities))
    runtime.close_stream(sid)
    return answers


@dataclass
class Ran:
    """What a scenario returned, the replicas' and nginx's logs, and what its cleanup checked."""

    value: Any
    logs: dict[str, str]
    checks: dict[str, dict]  # cleaned_up and bounded_in_time


def execute(
    name: str,
    net: Net,
    replicas: int,
    deadline_s: int,
    scenario: Callable[[Cluster], Coroutine[Any, Any, Any]],
) -> Ran | None:
    """Run ``scenario(cluster)`` on a fresh cluster (namespaces set up, a temporary directory, a shared stream
    secret), then remove everything; None (and why, on stderr) when this machine cannot run it. The
    scenario's own exception propagates after the logs are printed."""
    problem = preflight(name)
    if problem is not None:
        print(problem, file=sys.stderr)
        return None
    started = time.monotonic()
    cluster = Cluster(Path(tempfile.mkdtemp(prefix=f"psn-{net.ns}-")), net, replicas, secrets.token_hex(32))
    guard(cluster, deadline_s)  # a hung run is ended, and cleaned up, by the alarm
    try:
        cluster.setup_network()
        value = asyncio.run(scenario(cluster))
    except BaseException:
        print_logs(cluster.logs())
        raise
    finally:
        logs = cluster.logs()
        cluster.cleanup()
        signal.alarm(0)
    left = cluster.leftovers()
    total = time.monotonic() - started
    checks = {
        "cleaned_up": {"ok": not left, "left": left},
        "bounded_in_time": {"ok": total < deadline_s - 20, "seconds": round(total, 1)},
    }
    return Ran(value, logs, checks)


def report(title: str, checks: dict[str, dict], logs: dict[str, str]) -> int:
    """Print one PASS/FAIL line per check and the tally (the replicas' and nginx's logs when one failed);
    the exit status."""
    for name, c in checks.items():
        details = json.dumps({k: v for k, v in c.items() if k != "ok"}, default=str)[:400]
        print(f"{'PASS' if c['ok'] else 'FAIL'} {name}: {details}")
    passed = sum(c["ok"] for c in checks.values())
    print(f"{title}: {passed} passed, {len(checks) - passed} failed")
    if passed == len(checks):
        return 0
    print_logs(logs)
    return 1


def print_logs(logs: dict[str, str]) -> None:
    for name, text in logs.items():
        print(f"--- {name} (tail)\n{text}", file=sys.stderr)


def preflight(name: str) -> str | None:
    """Why this scenario cannot run here (not root, a tool missing), or None."""
    if os.geteuid() != 0:
        return f"{name}: needs root (network namespaces)"
    for tool in ("ip", "nginx"):
        if shutil.which(tool) is None:
            return f"{name}: {tool} is not installed (make cluster-test installs nginx)"
    return None


def guard(cluster: Cluster, deadline_s: int) -> None:
    """Clean up on Ctrl-C, SIGTERM, SIGHUP, exit, and after ``deadline_s`` (a hung run ends, cleaned up)."""
    import atexit

    atexit.register(cluster.cleanup)

    def on_signal(signum: int, _frame) -> None:
        cluster.cleanup()
        os._exit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
        signal.signal(sig, on_signal)
    signal.alarm(deadline_s)
