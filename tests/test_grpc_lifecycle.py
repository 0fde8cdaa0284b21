"""gRPC's share of the settings and of the server's life: ``--grpc-port`` (a port, 0 = any free one, off),
a port already taken, and the drain on shutdown (open streams end with UNAVAILABLE, new calls are
refused)."""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest
from pydantic import ValidationError
from test_grpc_support import live
from test_server_support import sequence, served, settings
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from psn_runtime.manifest import NeuronKind
from server import cli
from server.app import build_app
from server.grpc_server import GrpcServer
from server.settings import Settings
from server.state import app_state


def test_grpc_port_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PSN_GRPC_PORT", raising=False)
    assert Settings().grpc_port == 8001  # Triton's
    assert cli.parse_settings(["--grpc-port", "off"]).grpc_port is None
    assert cli.parse_settings(["--grpc-port", "0"]).grpc_port == 0
    monkeypatch.setenv("PSN_GRPC_PORT", "9101")
    assert Settings().grpc_port == 9101
    for nonsense in ("-1", "65536", "fast"):
        with pytest.raises(ValidationError, match="grpc_port"):
            Settings(grpc_port=nonsense)
    off = Settings(grpc_port="off")
    env = off.env()
    assert env["PSN_GRPC_PORT"] == "off"  # a worker process gets "off", not the default
    monkeypatch.setenv("PSN_GRPC_PORT", env["PSN_GRPC_PORT"])
    assert Settings().grpc_port is None


def test_off_serves_no_grpc() -> None:
    with live(settings(grpc_port="off")) as running:
        assert running.state.grpc is None


def test_a_taken_port_fails_with_a_message() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = GrpcServer(app_state(build_app(settings(grpc_port=port))))
        with pytest.raises(OSError, match=f"cannot listen for gRPC on 127.0.0.1:{port}"):
            asyncio.run(server.start())


def test_drain_ends_streams_with_unavailable_and_refuses_new_calls() -> None:
    m = served().manifest(NeuronKind.SLIDING_PSN)
    x = sequence(m, seed=5)[0][None, None]
    with live(settings(grpc_port=0)) as running, running.stream() as stream:
        stream.send(m.name, x, request_id="first", sequence_id=1, sequence_start=True)
        assert stream.get()[1] is None
        closed = asyncio.run_coroutine_threadsafe(running.state.grpc.drain(), running.state.loop).result(30)
        assert closed == 1
        result, error = stream.get()
        assert result is None and error.status() == "StatusCode.UNAVAILABLE"
        assert "shutting down" in error.message()
        with grpc.insecure_channel(running.grpc) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.ServerLive(pb.ServerLiveRequest(), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_every_error_has_a_grpc_status_code() -> None:
    from server.errors import ERROR_TABLE, INTERNAL

    codes = {cls.__name__: grpc.StatusCode[spec.grpc] for cls, spec in ERROR_TABLE.items()}
    assert codes["UnknownModel"] is grpc.StatusCode.NOT_FOUND
    assert codes["Unauthorized"] is grpc.StatusCode.UNAUTHENTICATED
    assert codes["StreamLimit"] is codes["Overloaded"] is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc.StatusCode[INTERNAL.grpc] is grpc.StatusCode.INTERNAL
