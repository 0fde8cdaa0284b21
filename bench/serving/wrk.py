"""HTTP load with wrk: POST a body (JSON, or a V2 binary tensor request) over N keep-alive connections
for a fixed time (closed loop), read back the request rate and latency percentiles that
bench/serving/post_json.lua prints as JSON; and the request bodies every HTTP load sends."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from bench.common import BenchError
from bench.serving.procs import HOST, Pinning, Proc, ThreadTimes, cpu_seconds, thread_times

LUA_SCRIPT = Path(__file__).resolve().parent / "post_json.lua"
MARKER = "PSN_WRK_JSON "
WRK_MISSING = (
    "wrk is not installed: the classify part of `psn bench serving` needs it "
    "(Debian/Ubuntu: apt-get install -y wrk)"
)


def wrk_version() -> str | None:
    if shutil.which("wrk") is None:
        return None
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10)
    first = (out.stdout or out.stderr).strip().splitlines()
    return first[0] if first else "wrk (unknown version)"


@dataclass(frozen=True)
class Body:
    """A pre-built request: the bytes, their Content-Type and any extra headers."""

    data: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    def all_headers(self) -> dict[str, str]:
        return {"Content-Type": self.content_type, **dict(self.headers)}


def classify_body(T: int, F: int, batch: int) -> Body:
    """A v1 classify request: one sequence [T, F] (batch 1) or a batch [B, T, F], numbers in [0, 1) with four
    decimals, as a client would send pixels."""
    x = np.random.default_rng(0).random((batch, T, F))  # [B, T, F]
    rows = [",".join(f"{v:.4f}" for v in row) for row in x.reshape(-1, F)]  # [B*T] rows of F numbers
    seqs = ["[" + "],[".join(rows[b * T : (b + 1) * T]) + "]" for b in range(batch)]
    inputs = "[" + seqs[0] + "]" if batch == 1 else "[" + ",".join("[" + s + "]" for s in seqs) + "]"
    return Body(('{"inputs":' + inputs + "}").encode())


def v2_json_body(T: int, F: int, batch: int) -> Body:
    """An Open Inference Protocol (KServe V2) JSON infer request: one FP32 input [B, T, F], its data flat,
    numbers with four decimals (the same values as ``classify_body``)."""
    x = np.random.default_rng(0).random((batch, T, F))  # [B, T, F]
    data = ",".join(f"{v:.4f}" for v in x.reshape(-1))
    return Body(
        f'{{"inputs":[{{"name":"x","shape":[{batch},{T},{F}],"datatype":"FP32","data":[{data}]}}]}}'.encode()
    )


def v2_binary_body(T: int, F: int, batch: int) -> Body:
    """A KServe V2 infer request with the binary tensor extension: a JSON header naming the input
    [B, T, F] FP32 and asking for label_index as binary, then the little-endian float32 values."""
    data = np.random.default_rng(0).random((batch, T, F)).astype("<f4").tobytes()  # [B, T, F]
    tensor = {
        "name": "x",
        "shape": [batch, T, F],
        "datatype": "FP32",
        "parameters": {"binary_data_size": len(data)},
    }
    header = json.dumps(
        {"inputs": [tensor], "outputs": [{"name": "label_index", "parameters": {"binary_data": True}}]},
        separators=(",", ":"),
    ).encode()
    return Body(
        header + data, "application/octet-stream", (("Inference-Header-Content-Length", str(len(header))),)
    )


def check_answer(server: Proc, path: str, body: Body, expect_key: str) -> dict:
    """One request before the load: 200 with ``expect_key`` in its JSON (a binary answer's JSON header)."""
    r = httpx.post(f"http://{HOST}:{server.port}{path}", content=body.data, headers=body.all_headers())
    length = r.headers.get("Inference-Header-Content-Length")
    answer = r.content if length is None else r.content[: int(length)]
    doc = json.loads(answer) if r.status_code == 200 else {}
    if expect_key not in doc:
        raise BenchError(f"{server.label}: POST {path} answered {r.status_code}: {answer[:300]!r}")
    return doc


@dataclass(frozen=True)
class WrkResult:
    connections: int
    duration_s: float
    requests: int
    rps: float
    errors: dict[str, int]
    latency_ms: dict[str, float]  # min, mean, stdev, max, p50, p90, p99, p999
    server_cpu_s: float  # CPU seconds the server used during the run
    threads: ThreadTimes | None = None  # the server's main thread vs the others, context switches


def run_wrk(
    server: Proc, path: str, body: Body, connections: int, duration_s: float, pinning: Pinning
) -> WrkResult:
    """wrk -t1 -cN -dDs against server, pinned to the load core; the server's CPU time is read around it."""
    if shutil.which("wrk") is None:
        raise BenchError(WRK_MISSING)
    seconds = max(1, round(duration_s))
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA_SCRIPT)]
    with tempfile.NamedTemporaryFile(suffix=".body") as file:
        file.write(body.data)
        file.flush()
        extra = "".join(f"{k}: {v}" for k, v in body.headers)
        env = dict(os.environ, PSN_WRK_BODY=file.name, PSN_WRK_TYPE=body.content_type, PSN_WRK_HEADER=extra)
        cpu0, threads0 = cpu_seconds(server.pid), thread_times(server.pid)
        out = subprocess.run(
            [*cmd, f"http://{HOST}:{server.port}{path}"],
            capture_output=True,
            text=True,
            env=env,
            timeout=seconds + 60,
            preexec_fn=pinning.load_setup(),
        )
        cpu1, threads1 = cpu_seconds(server.pid), thread_times(server.pid)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith(MARKER)), None)
    if out.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({out.returncode}): {out.stderr.strip()[-500:] or out.stdout[-500:]}")
    doc = json.loads(line[len(MARKER) :])
    duration = doc["duration_us"] / 1e6
    return WrkResult(
        connections=connections,
        duration_s=duration,
        requests=doc["requests"],
        rps=doc["requests"] / duration,
        errors=doc["errors"],
        latency_ms={k: v / 1000.0 for k, v in doc["latency_us"].items()},
        server_cpu_s=cpu1 - cpu0,
        threads=None if threads0 is None or threads1 is None else threads1.minus(threads0),
    )
