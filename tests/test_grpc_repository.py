"""The repository extension over gRPC (tritonclient.grpc's get_model_repository_index, load_model,
unload_model) on the runtime's model control: the index, an unload that takes the model out of service, a
load that brings it back; without ``--model-control explicit`` a load is FAILED_PRECONDITION."""

from __future__ import annotations

import pytest
from test_grpc_support import infer_input, live
from test_server_support import sequence, served, settings
from tritonclient.utils import InferenceServerException

from psn_runtime.manifest import NeuronKind


def _states(client) -> dict[str, str]:
    return {
        entry["name"]: entry["state"] for entry in client.get_model_repository_index(as_json=True)["models"]
    }


def test_index_unload_and_load() -> None:
    m = served().manifest(NeuronKind.SLIDING_PSN)
    x = sequence(m, batch=1, seed=11)
    with live(settings(grpc_port=0, model_control="explicit")) as running, running.client() as client:
        assert _states(client)[m.name] == "READY"
        client.unload_model(m.name)  # no new work from now on (it unloads when its streams have ended)
        assert not client.is_model_ready(m.name) and _states(client)[m.name] != "READY"
        with pytest.raises(InferenceServerException):
            client.infer(m.name, [infer_input(x)])
        client.load_model(m.name)
        assert client.is_model_ready(m.name) and _states(client)[m.name] == "READY"
        assert client.infer(m.name, [infer_input(x)]).as_numpy("logits").shape == (1, len(m.labels))
        with pytest.raises(InferenceServerException) as info:
            client.load_model("no-such-model")
        assert info.value.status() == "StatusCode.NOT_FOUND"


def test_load_needs_explicit_model_control() -> None:
    m = served().manifest(NeuronKind.SLIDING_PSN)
    with live(settings(grpc_port=0)) as running, running.client() as client:
        assert _states(client)[m.name] == "READY"  # the index answers in every mode
        with pytest.raises(InferenceServerException) as info:
            client.load_model(m.name)
        assert info.value.status() == "StatusCode.FAILED_PRECONDITION"
