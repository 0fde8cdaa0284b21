"""server.client (PSNClient, AsyncPSNClient) against a live server on loopback, real runtime and models."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
from test_server_support import live_server, sequence, served, settings

from psn_runtime import Runtime, RuntimeConfig
from psn_runtime.manifest import NeuronKind
from server.client import AsyncPSNClient, PSNClient, PSNError

PSN, MASKED, SLIDING = NeuronKind.PSN, NeuronKind.MASKED_PSN, NeuronKind.SLIDING_PSN
KEY = "client-test-key"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with live_server(settings(api_key=KEY)) as base:
        yield base


@pytest.fixture(scope="module")
def reference() -> Runtime:
    runtime = Runtime(RuntimeConfig(models_dir=served().models_dir, providers=["CPUExecutionProvider"]))
    runtime.load()
    return runtime


@pytest.fixture
def client(url: str) -> Iterator[PSNClient]:
    with PSNClient(url, api_key=KEY) as c:
        yield c


def test_models_and_health(client: PSNClient) -> None:
    assert client.health()
    assert client.ready()["status"] == "ready"
    names = {m["name"] for m in client.models()}
    assert {m.name for m in served().by_kind.values()} <= names
    assert client.model(served().name(SLIDING))["manifest"]["kind"] == "sliding_psn"
    with pytest.raises(PSNError) as info:
        client.model("no-such-model")
    assert (info.value.status, info.value.code) == (404, "unknown_model")


def test_classify(client: PSNClient, reference: Runtime) -> None:
    m = served().manifest(MASKED)
    x = sequence(m, batch=2, seed=20)
    result = client.classify(m.name, x)
    want = reference.classify(m.name, x)
    assert result.model == m.name and result.provider == "CPUExecutionProvider"
    assert [p.label for p in result.predictions] == want.labels
    np.testing.assert_allclose([p.logits for p in result.predictions], want.logits, rtol=1e-6)
    one = client.classify(m.name, x[0].tolist(), return_logits=False)
    assert one.predictions[0].logits is None and one.predictions[0].label == want.labels[0]
    with pytest.raises(PSNError) as info:
        client.classify(m.name, [[1.0, 2.0], [3.0]])
    assert (info.value.status, info.value.code, info.value.param) == (422, "bad_input", "inputs[1]")


def test_wrong_key(url: str) -> None:
    with PSNClient(url, api_key="wrong-key-000") as c, pytest.raises(PSNError) as info:
        c.models()
    assert info.value.status == 401
    with PSNClient(url) as c, pytest.raises(PSNError) as info, c.stream(served().name(SLIDING)):
        pass
    assert info.value.close_code == 1008


@pytest.mark.parametrize("binary", [True, False])
def test_stream_psn_and_masked(client: PSNClient, reference: Runtime, binary: bool) -> None:
    psn = served().manifest(PSN)
    x = sequence(psn, seed=21)
    with client.stream(psn.name, binary=binary) as stream:
        assert stream.hello["T"] == psn.T and stream.hello["kind"] == "psn"
        steps = [stream.step(row) for row in x]
    assert [s.ready for s in steps] == [False] * (psn.T - 1) + [True]
    assert steps[-1].done and steps[-1].label == reference.classify(psn.name, x).labels[0]

    masked = served().manifest(MASKED)
    x = sequence(masked, seed=22)
    want = reference.classify(masked.name, x)
    with client.stream(masked.name, binary=binary, logits=True) as stream:
        steps = [stream.step(row) for row in x]
        assert all(s.ready for s in steps) and [s.t for s in steps] == list(range(masked.T))
        np.testing.assert_allclose(steps[-1].logits, want.logits[0], rtol=1e-4, atol=1e-5)
        with pytest.raises(PSNError) as info:
            stream.step(x[0])
        assert info.value.code == "stream_over"
        stream.reset()
        assert stream.step(x[0]).t == 0
        with pytest.raises(PSNError) as info:
            stream.step(x[0][:-1])  # wrong F: an error event, the stream goes on
        assert info.value.code == "bad_input"
        assert stream.step(x[1]).t == 1


def test_stream_unknown_model(client: PSNClient) -> None:
    with pytest.raises(PSNError) as info, client.stream("no-such-model"):
        pass
    assert info.value.close_code == 4404 and "no-such-model" in info.value.message


def test_async_client(url: str, reference: Runtime) -> None:
    m = served().manifest(SLIDING)
    x = sequence(m, seed=23)

    async def run() -> tuple:
        async with AsyncPSNClient(url, api_key=KEY) as c:
            models = await c.models()
            result = await c.classify(m.name, x)

            async def one_stream(seq: np.ndarray) -> list:
                async with c.stream(m.name, logits=True) as s:
                    return [await s.step(row) for row in seq]

            streams = await asyncio.gather(*(one_stream(x * scale) for scale in (1.0, -1.0, 0.5)))
            return models, result, streams

    models, result, streams = asyncio.run(run())
    assert m.name in {model["name"] for model in models}
    assert result.predictions[0].label == reference.classify(m.name, x).labels[0]
    for scale, steps in zip((1.0, -1.0, 0.5), streams, strict=True):
        want = reference.classify(m.name, (x * scale).astype(np.float32))
        np.testing.assert_allclose(steps[-1].logits, want.logits[0], rtol=1e-4, atol=1e-5)
