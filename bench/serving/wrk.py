"""HTTP load with wrk: POST a body (JSON, or a V2 binary tensor request) over N keep-alive connections
for a fixed time, read back the request rate and latency percentiles that bench/serving/post_json.lua
prints as JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.common import BenchError
from bench.serving.procs import HOST, Pinning, ServerProcess, ThreadTimes, post

LUA_SCRIPT = Path(__file__).resolve().parent / "post_json.lua"
MARKER = "PSN_WRK_JSON "
WRK_MISSING = (
    "wrk is not installed: the classify part of `psn bench serving` needs it "
    "(Debian/Ubuntu: apt-get install -y wrk)"
)


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def wrk_version() -> str | None:
    exe = wrk_binary()
    if exe is None:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10)
    first = (out.stdout or out.stderr).strip().splitlines()
    return first[0] if first else "wrk (unknown version)"


def classify_body(T: int, F: int, batch: int, seed: int = 0) -> bytes:
    """A classify request: one sequence [T, F] (batch 1) or a batch [B, T, F], numbers in [0, 1) with four
    decimals, as a client would send pixels."""
    x = np.random.default_rng(seed).random((batch, T, F))  # [B, T, F]
    rows = [",".join(f"{v:.4f}" for v in row) for row in x.reshape(-1, F)]  # [B*T] rows of F numbers
    seqs = ["[" + "],[".join(rows[b * T : (b + 1) * T]) + "]" for b in range(batch)]
    inputs = "[" + seqs[0] + "]" if batch == 1 else "[" + ",".join("[" + s + "]" for s in seqs) + "]"
    return ('{"inputs":' + inputs + "}").encode()


V2_INPUT = "x"


@dataclass(frozen=True)
class Body:
    """A pre-built request: the bytes, their Content-Type and any extra header ("Name: value")."""

    data: bytes
    content_type: str = "application/json"
    header: str = ""


def v2_binary_body(T: int, F: int, batch: int, seed: int = 0) -> Body:
    """A KServe V2 infer request with the binary tensor extension: a JSON header naming the input
    [B, T, F] FP32 and asking for label_index as binary, then the little-endian float32 values."""
    x = np.random.default_rng(seed).random((batch, T, F)).astype("<f4")  # [B, T, F]
    data = x.tobytes()
    header = json.dumps({
        "inputs": [{"name": V2_INPUT, "shape": [batch, T, F], "datatype": "FP32",
                    "parameters": {"binary_data_size": len(data)}}],
        "outputs": [{"name": "label_index", "parameters": {"binary_data": True}}],
    }, separators=(",", ":")).encode()  # fmt: skip
    return Body(header + data, "application/octet-stream", f"Inference-Header-Content-Length: {len(header)}")


@dataclass(frozen=True)
class WrkResult:
    connections: int
    duration_s: float
    requests: int
    rps: float
    errors: dict[str, int]
    latency_ms: dict[str, float]  # min, mean, stdev, max, p50, p90, p99, p999
    server_cpu_s: float  # CPU seconds the server used during the run
    server_cpu_util: float  # server CPU seconds per second of the run (1.0 = one core busy)
    threads: ThreadTimes | None = None  # the server's main thread vs the others, context switches

    def to_json(self) -> dict:
        return asdict(self)


def check_answer(server: ServerProcess, path: str, body: bytes | Body, expect_key: str) -> dict:
    """One request before the load: the server must answer 200 with ``expect_key`` in its JSON (the JSON
    header of a binary answer)."""
    body = body if isinstance(body, Body) else Body(body)
    status, answer, length = post(server.port, path, body.data, body.content_type, body.header)
    if length is not None:
        answer = answer[:length]
    if status != 200:
        raise BenchError(f"{server.label}: POST {path} answered {status}: {answer[:300]!r}")
    doc = json.loads(answer)
    if expect_key not in doc:
        raise BenchError(f"{server.label}: POST {path} answer has no {expect_key!r}: {answer[:300]!r}")
    return doc


def run_wrk(
    server: ServerProcess,
    path: str,
    body_file: Path,
    *,
    body: Body | None = None,
    connections: int,
    duration_s: float,
    pinning: Pinning,
) -> WrkResult:
    """wrk -t1 -cN -dDs against server, pinned to the load core; the server's CPU time is read around it."""
    exe = wrk_binary()
    if exe is None:
        raise BenchError(WRK_MISSING)
    url = f"http://{HOST}:{server.port}{path}"
    seconds = max(1, round(duration_s))
    cmd = [*pinning.load_prefix(), exe, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    cmd += ["-s", str(LUA_SCRIPT), url]
    env = dict(os.environ, PSN_WRK_BODY=str(body_file))
    if body is not None:
        env.update(PSN_WRK_TYPE=body.content_type, PSN_WRK_HEADER=body.header)
    cpu0, threads0 = server.cpu_seconds(), server.thread_times()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 60)
    cpu1, threads1 = server.cpu_seconds(), server.thread_times()
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith(MARKER)), None)
    if out.returncode != 0 or line is None:
        raise BenchError(
            f"wrk failed (status {out.returncode}): {out.stderr.strip()[-500:] or out.stdout[-500:]}"
        )
    doc = json.loads(line[len(MARKER) :])
    duration = doc["duration_us"] / 1e6
    lat = {k: v / 1000.0 for k, v in doc["latency_us"].items()}
    return WrkResult(
        connections=connections,
        duration_s=duration,
        requests=doc["requests"],
        rps=doc["requests"] / duration,
        errors=doc["errors"],
        latency_ms=lat,
        server_cpu_s=cpu1 - cpu0,
        server_cpu_util=(cpu1 - cpu0) / duration,
        threads=None if threads0 is None or threads1 is None else threads1.minus(threads0),
    )
