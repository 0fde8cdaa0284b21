"""Probe a running psn-serve container from the host: ready, list, classify, stream (docker/image-test.sh).

    .venv/bin/python docker/probe_image.py --url http://127.0.0.1:PORT [--expect-models a,b]

Checks, each bounded in time, and exits 1 with a message naming the first that fails:
  * GET /readyz answers 200 within --ready-timeout seconds; /healthz 200; /metrics is Prometheus text;
  * GET /v1/models lists READY models (exactly --expect-models when given), with T, F and labels;
  * POST /v1/models/{name}/classify on one T×F sequence: a known label, probabilities that sum to 1;
  * WS /v1/models/{name}/stream: a hello, then T steps (text and binary frames alternating), an answer per
    step with t = 0..T-1; after the last step the prediction equals classify's on the same sequence
    (running T steps of the step graph gives the full graph's logits: the service's invariant);
  * with --grpc HOST:PORT, the Open Inference Protocol over gRPC (tritonclient.grpc): ServerReady, and per
    model a ModelInfer and a T-step sequence on a ModelStreamInfer stream, each giving classify's label.
Needs httpx, websockets, numpy and tritonclient[grpc] (the project's .venv has them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import websockets

PROBABILITY_ATOL = 1e-3


class ProbeError(Exception):
    """A check failed; the message says which and why."""


@dataclass(frozen=True)
class Model:
    name: str
    kind: str
    T: int
    features: int
    input_shape: tuple[int, ...]  # per step; features = prod(input_shape)
    labels: list[str]
    streams: bool
    provider: str | None


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ProbeError(message)


def wait_ready(client: httpx.Client, timeout_s: float) -> float:
    """Poll /readyz until 200; returns the seconds waited."""
    start = time.monotonic()
    last = "no answer yet"
    while time.monotonic() - start < timeout_s:
        try:
            response = client.get("/readyz", timeout=2.0)
            if response.status_code == 200:
                return time.monotonic() - start
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    raise ProbeError(f"/readyz not 200 within {timeout_s:.0f} s (last: {last})")


def check_health(client: httpx.Client) -> None:
    response = client.get("/healthz")
    _check(response.status_code == 200, f"/healthz answered HTTP {response.status_code}")
    response = client.get("/metrics")
    _check(response.status_code == 200, f"/metrics answered HTTP {response.status_code}")
    _check("# TYPE" in response.text, "/metrics is not Prometheus text (no '# TYPE' line)")


def list_models(client: httpx.Client) -> list[Model]:
    response = client.get("/v1/models")
    _check(response.status_code == 200, f"GET /v1/models answered HTTP {response.status_code}")
    body = response.json()
    entries = body.get("models", []) if isinstance(body, dict) else body
    _check(isinstance(entries, list) and len(entries) > 0, f"GET /v1/models lists no model: {body!r:.300}")
    models = []
    for entry in entries:
        manifest = entry.get("manifest") or {}
        status = str(entry.get("status", "")).lower()
        _check(status == "ready", f"model {entry.get('name')!r} is {status!r}: {entry.get('error')}")
        models.append(
            Model(
                name=entry["name"],
                kind=manifest["kind"],
                T=int(manifest["T"]),
                features=int(manifest["features"]),
                input_shape=tuple(int(d) for d in manifest.get("input_shape", [manifest["features"]])),
                labels=list(manifest["labels"]),
                streams=bool(manifest["streams"]),
                provider=entry.get("provider"),
            )
        )
    return models


def classify(client: httpx.Client, model: Model, x: np.ndarray) -> tuple[str, np.ndarray]:
    response = client.post(f"/v1/models/{model.name}/classify", json={"inputs": x.tolist()})
    _check(
        response.status_code == 200,
        f"classify {model.name}: HTTP {response.status_code}: {response.text[:300]}",
    )
    predictions = response.json()["predictions"]
    _check(len(predictions) == 1, f"classify {model.name}: {len(predictions)} predictions for one sequence")
    label = predictions[0]["label"]
    probabilities = np.asarray(predictions[0]["probabilities"], dtype=np.float64)
    _check(label in model.labels, f"classify {model.name}: label {label!r} not in {model.labels}")
    _check(
        probabilities.shape == (len(model.labels),) and abs(probabilities.sum() - 1.0) < 1e-3,
        f"classify {model.name}: probabilities {probabilities.tolist()} (shape or sum wrong)",
    )
    _check(
        model.labels[int(np.argmax(probabilities))] == label,
        f"classify {model.name}: label {label!r} is not the most probable",
    )
    return label, probabilities


async def _receive(ws: Any, timeout_s: float, what: str) -> dict[str, Any]:
    try:
        raw = await asyncio.wait_for(ws.recv(), timeout_s)
    except TimeoutError as exc:
        raise ProbeError(f"no {what} within {timeout_s:.0f} s") from exc
    message = json.loads(raw)
    _check("error" not in message, f"{what}: server error {message.get('error')}")
    return message


async def stream(ws_url: str, model: Model, x: np.ndarray, timeout_s: float) -> tuple[str, np.ndarray]:
    """T steps over one socket, text and binary frames alternating; returns the last step's prediction."""
    url = f"{ws_url}/v1/models/{model.name}/stream"
    async with websockets.connect(url, open_timeout=timeout_s, close_timeout=2) as ws:
        hello = await _receive(ws, timeout_s, f"hello from {url}")
        _check(int(hello.get("features", -1)) == model.features, f"stream {model.name}: hello {hello}")
        answer: dict[str, Any] = {}
        for t in range(model.T):
            row = x[t].astype("<f4")
            await ws.send(row.tobytes() if t % 2 else json.dumps({"x": row.tolist()}))
            answer = await _receive(ws, timeout_s, f"stream {model.name} answer to step {t}")
            _check(answer.get("t") == t, f"stream {model.name}: answer to step {t} says t={answer.get('t')}")
            expect_ready = model.streams or t == model.T - 1
            _check(
                bool(answer.get("ready")) == expect_ready,
                f"stream {model.name} step {t}: ready={answer.get('ready')}, expected {expect_ready}",
            )
    label = answer.get("label")
    _check(label in model.labels, f"stream {model.name}: final label {label!r} not in {model.labels}")
    return label, np.asarray(answer["probabilities"], dtype=np.float64)


def grpc_probe(address: str, model: Model, x: np.ndarray, label: str, timeout_s: float) -> None:
    """ModelInfer on x [T, *shape] and a T-step sequence on one ModelStreamInfer stream: classify's label."""
    import queue

    import tritonclient.grpc as grpcclient

    def infer_input(array: np.ndarray) -> grpcclient.InferInput:
        tensor = grpcclient.InferInput("x", list(array.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(array, np.float32))
        return tensor

    client = grpcclient.InferenceServerClient(address)
    try:
        _check(client.is_server_ready(client_timeout=timeout_s), f"gRPC {address}: ServerReady is false")
        result = client.infer(model.name, [infer_input(x[None])], client_timeout=timeout_s)  # [1, T, *shape]
        got = model.labels[int(result.as_numpy("label_index")[0])]
        _check(got == label, f"gRPC ModelInfer {model.name}: label {got!r}, classify gave {label!r}")
        answers: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for t in range(model.T):
            flags = {"sequence_start": t == 0, "sequence_end": t == model.T - 1}
            client.async_stream_infer(model.name, [infer_input(x[t][None, None])], sequence_id=1, **flags)
        for t in range(model.T):
            try:
                result, error = answers.get(timeout=timeout_s)
            except queue.Empty as exc:
                raise ProbeError(
                    f"gRPC stream {model.name}: no answer to step {t} in {timeout_s:.0f} s"
                ) from exc
            _check(error is None, f"gRPC stream {model.name} step {t}: {error}")
        got = result.get_response().parameters["label"].string_param
        _check(
            got == label, f"gRPC stream {model.name}: label {got!r} after T steps, classify gave {label!r}"
        )
        client.stop_stream()
    except grpcclient.InferenceServerException as exc:
        raise ProbeError(f"gRPC {address} {model.name}: {exc}") from exc
    finally:
        client.close()


def probe(
    url: str, expect: list[str] | None, ready_timeout_s: float, timeout_s: float, grpc: str | None = None
) -> None:
    ws_url = "ws" + url[len("http") :]
    with httpx.Client(base_url=url, timeout=timeout_s) as client:
        waited = wait_ready(client, ready_timeout_s)
        print(f"probe: /readyz 200 after {waited:.1f} s")
        check_health(client)
        models = list_models(client)
        names = sorted(m.name for m in models)
        print(
            "probe: models "
            + ", ".join(
                f"{m.name} ({m.kind}, T={m.T}, shape={list(m.input_shape)}, {m.provider})" for m in models
            )
        )
        if expect is not None:
            _check(names == sorted(expect), f"/v1/models lists {names}, expected {sorted(expect)}")
        rng = np.random.default_rng(0)
        for model in models:
            x = rng.random((model.T, *model.input_shape), dtype=np.float32)  # [T, *shape]
            label, probabilities = classify(client, model, x)
            streamed, stream_probabilities = asyncio.run(stream(ws_url, model, x, timeout_s))
            got, want = stream_probabilities.round(4).tolist(), probabilities.round(4).tolist()
            _check(
                streamed == label and np.allclose(stream_probabilities, probabilities, atol=PROBABILITY_ATOL),
                f"{model.name}: stream after T steps gave {streamed!r} {got}, classify gave {label!r} {want}",
            )
            print(f"probe: {model.name}: classify and {model.T}-step stream agree on {label!r}")
            if grpc is not None:
                grpc_probe(grpc, model, x, label, timeout_s)
                print(f"probe: {model.name}: gRPC ModelInfer and a {model.T}-step gRPC sequence agree")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="probe a running psn-serve container")
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--expect-models", help="comma-separated model names that must be listed, exactly")
    parser.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for /readyz")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds for any one request or message")
    parser.add_argument("--grpc", help="HOST:PORT of the server's gRPC port: probe it too")
    args = parser.parse_args(argv)
    expect = [n for n in args.expect_models.split(",") if n] if args.expect_models is not None else None
    try:
        probe(args.url.rstrip("/"), expect, args.ready_timeout, args.timeout, args.grpc)
    except (ProbeError, httpx.HTTPError, websockets.WebSocketException, OSError, KeyError, ValueError) as exc:
        print(f"probe FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("probe: all checks passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
