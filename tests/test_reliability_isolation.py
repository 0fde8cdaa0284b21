"""Stream isolation down to the last bit: a stream's answers do not depend on which other streams' steps
ran in the same ONNX Runtime call (one stream alone, or finishing together with others)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from test_server_support import served

from psn_runtime import Runtime, RuntimeConfig


def _answers(results) -> list[bytes]:
    return [
        b"" if r.probabilities is None else r.probabilities.tobytes() + r.logits.tobytes() for r in results
    ]


async def _run(runtime: Runtime, name: str, xs: np.ndarray, lockstep: bool) -> list[list[bytes]]:
    """Each of len(xs) streams runs its sequence; lockstep: all step t together (one batch), else one
    stream after the other (batches of one)."""
    ids = [await runtime.open_stream(name) for _ in xs]
    out: list[list] = [[] for _ in xs]
    if lockstep:
        for t in range(xs.shape[1]):
            results = await asyncio.gather(*(runtime.step(sid, x[t]) for sid, x in zip(ids, xs, strict=True)))
            for i, r in enumerate(results):
                out[i].append(r)
    else:
        for i, (sid, x) in enumerate(zip(ids, xs, strict=True)):
            for t in range(xs.shape[1]):
                out[i].append(await runtime.step(sid, x[t]))
    for sid in ids:
        runtime.close_stream(sid)
    return [_answers(r) for r in out]


@pytest.mark.parametrize("kind", sorted(served().by_kind, key=str))
def test_stream_answers_do_not_depend_on_the_batch(kind) -> None:
    m = served().manifest(kind)
    steps = m.T if m.max_steps is not None or not m.streams else 2 * m.T
    xs = np.random.default_rng(7).standard_normal((5, steps, m.features)).astype(np.float32)  # [S, T, F]

    async def main() -> tuple[list, list]:
        config = RuntimeConfig(models_dir=served().models_dir, providers=["CPUExecutionProvider"])
        runtime = Runtime(config)
        await runtime.start()
        try:
            return await _run(runtime, m.name, xs, lockstep=True), await _run(
                runtime, m.name, xs, lockstep=False
            )
        finally:
            await runtime.close()

    together, alone = asyncio.run(main())
    for i in range(len(xs)):
        assert together[i] == alone[i], f"{m.name}: stream {i} differs with others in its batch"
