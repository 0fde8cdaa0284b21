"""server.client (PSNClient, AsyncPSNClient) against a live server on loopback, real runtime and models."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
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


@pytest.mark.parametrize("kind", [PSN, SLIDING])
def test_classify_as_v2_binary_tensors_gives_the_json_answer(url: str, kind: NeuronKind) -> None:
    m = served().manifest(kind)
    x = sequence(m, batch=3, seed=24)
    paths: list[str] = []
    http = httpx.Client(
        base_url=url, event_hooks={"request": [lambda request: paths.append(request.url.path)]}
    )
    with http, PSNClient(url, api_key=KEY, http=http, binary_threshold=x[0].nbytes) as client:
        as_json = client.classify(m.name, x, binary=False)
        assert paths == [f"/v1/models/{m.name}/classify"]
        as_binary = client.classify(m.name, x)  # 3 sequences: above the threshold of one
        assert paths[1:] == [f"/v2/models/{m.name}", f"/v2/models/{m.name}/infer"]
        one = client.classify(m.name, x[1], return_logits=False)  # one sequence: JSON again
        assert paths[3:] == [f"/v1/models/{m.name}/classify"]
        one_binary = client.classify(m.name, x[1], binary=True)  # [T, F] sent as [1, T, F]
        assert paths[4:] == [f"/v2/models/{m.name}/infer"]  # the metadata was kept
    assert (
        (as_binary.model, as_binary.provider)
        == (as_json.model, as_json.provider)
        == (m.name, "CPUExecutionProvider")
    )
    assert [p.label for p in as_binary.predictions] == [p.label for p in as_json.predictions]
    for got, want in zip(as_binary.predictions, as_json.predictions, strict=True):
        np.testing.assert_allclose(got.probabilities, want.probabilities, rtol=1e-6)
        np.testing.assert_allclose(got.logits, want.logits, rtol=1e-6)
    assert one_binary.predictions[0].label == one.predictions[0].label == as_json.predictions[1].label
    np.testing.assert_allclose(
        one_binary.predictions[0].probabilities, one.predictions[0].probabilities, rtol=1e-6
    )


def test_async_classify_as_v2_binary_tensors(url: str) -> None:
    m = served().manifest(MASKED)
    x = sequence(m, batch=2, seed=25)

    async def run() -> tuple:
        async with AsyncPSNClient(url, api_key=KEY, binary_threshold=0) as c:
            return await c.classify(m.name, x), await c.classify(m.name, x, binary=False)

    as_binary, as_json = asyncio.run(run())
    assert [p.label for p in as_binary.predictions] == [p.label for p in as_json.predictions]
    np.testing.assert_allclose(
        [p.probabilities for p in as_binary.predictions],
        [p.probabilities for p in as_json.predictions],
        rtol=1e-6,
    )
    with pytest.raises(PSNError) as info, PSNClient(url, api_key=KEY, binary_threshold=0) as c:
        c.classify("no-such-model", x)
    assert info.value.status == 404 and "no-such-model" in info.value.message


def test_a_closed_stream_fails_with_psn_errors(client: PSNClient) -> None:
    m = served().manifest(SLIDING)
    with client.stream(m.name) as stream:
        stream.step(sequence(m)[0])
        stream.connection.close()  # closed (1000) under the stream
        with pytest.raises(PSNError) as info:
            stream.reset()
        assert (info.value.code, info.value.close_code) == ("closed", 1000)
        with pytest.raises(PSNError):
            stream.step(sequence(m)[1])
