"""The one launcher (server/launcher.py) and the port-first start-up of ``psn serve`` (server/listen.py):
``--port 0`` binds a port the kernel picks and reports it (a stdout line, a JSON port file); the launcher
reads the report, waits until ready, restarts on the same port and stops by PID; a taken port or an address
this host does not have ends ``psn serve`` with one line and exit status 1 before any model loads."""

from __future__ import annotations

import io
import json
import signal
import socket
from pathlib import Path

import httpx
import pytest
from test_server_support import served

from server import cli, launcher
from server.listen import REPORT_PREFIX, Listeners, bind_http, bind_socket

pytestmark = pytest.mark.e2e
CPU = ("--providers", "CPUExecutionProvider")


def _grpc_live(port: int) -> bool:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
        return client.is_server_live()


@pytest.mark.slow
def test_port_0_is_bound_reported_served_restarted_and_stopped(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with launcher.serve(*CPU, models_dir=served().models_dir, log=log, grpc=True) as server:
        port, grpc_port = server.port, server.ports["grpc"]
        assert port > 0 and grpc_port > 0 and server.base_url == f"http://127.0.0.1:{port}"
        assert server.report == {
            "pid": server.pid,
            "host": "127.0.0.1",
            "ports": {"http": port, "grpc": grpc_port},
            "urls": {"http": server.base_url, "grpc": f"grpc://127.0.0.1:{grpc_port}"},
        }
        assert log.read_text().splitlines()[:2] == [  # before anything loads
            f"{REPORT_PREFIX}http://127.0.0.1:{port}",
            f"{REPORT_PREFIX}grpc://127.0.0.1:{grpc_port}",
        ]
        assert httpx.get(f"{server.base_url}/readyz").json()["status"] == "ready"
        assert _grpc_live(grpc_port)

        first = server.pid
        server.restart()  # SIGTERM, then the same arguments on the same ports, ready again
        assert server.pid != first and server.ports == {"http": port, "grpc": grpc_port}
        assert httpx.get(f"{server.base_url}/readyz").status_code == 200
        assert _grpc_live(grpc_port)
        assert log.read_text().count(REPORT_PREFIX) == 4  # both runs append to the one log

        assert server.stop() in (0, -signal.SIGTERM)  # uvicorn may re-raise SIGTERM after a clean exit
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.base_url}/healthz")


def test_a_taken_port_ends_psn_serve_with_one_line_before_any_model_loads(tmp_path: Path) -> None:
    held = bind_http("127.0.0.1", 0, workers=1)  # a port this test holds, listening
    port = held.getsockname()[1]
    log = tmp_path / "server.log"
    try:
        with pytest.raises(launcher.LaunchError, match="exited with status 1 before it reported its port"):
            launcher.start(
                *CPU, models_dir=served().models_dir, port=port, log=log, env={"PSN_LOG_LEVEL": "debug"}
            )
    finally:
        held.close()
    # the whole output, at log level debug: nothing was imported, loaded or served before the check
    assert log.read_text().splitlines() == [
        f"psn serve: cannot listen on http://127.0.0.1:{port}: address already in use (--host, --port)"
    ]


def _no_app(*args: object, **kwargs: object) -> None:
    raise AssertionError("build_app was called: models would load before the port check")


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("203.0.113.1", "cannot assign requested address"),  # TEST-NET-3: not this host's
        ("256.0.0.1", None),  # not an address: the resolver's words
    ],
)
def test_a_bad_address_is_one_line_and_status_1(
    host: str, reason: str | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("server.app.build_app", _no_app)
    assert cli.main(["--host", host, "--port", "0", "--models-dir", str(served().models_dir)]) == 1
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"psn serve: cannot listen on http://{host}:0: "), lines
    assert reason is None or lines[0].endswith(f": {reason} (--host, --port)"), lines
    assert captured.out == ""  # nothing reported as listening


def test_a_taken_grpc_port_is_one_line_and_status_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("server.app.build_app", _no_app)
    held = bind_http("127.0.0.1", 0, workers=1)
    port = held.getsockname()[1]
    try:
        argv = ["--port", "0", "--grpc-port", str(port), "--models-dir", str(served().models_dir)]
        assert cli.main(argv) == 1
    finally:
        held.close()
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"psn serve: cannot listen on grpc://127.0.0.1:{port}: address already in use (--host, --grpc-port)"
    ]
    assert captured.out == ""


def test_a_port_file_in_a_missing_folder_is_refused_up_front(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope" / "ports.json"
    assert cli.main(["--port", "0", "--port-file", str(missing)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"psn serve: --port-file: {missing.parent} is not a directory (got '{missing}')"
    ]


def test_the_report_names_every_listener_and_is_written_whole(tmp_path: Path) -> None:
    http = bind_http("127.0.0.1", 0, workers=1)
    other = bind_socket("127.0.0.1", 0, reuse_port=False)  # as another protocol's port would be
    listeners = Listeners("127.0.0.1", {"http": http, "grpc": other})
    port_file = tmp_path / "ports.json"
    out = io.StringIO()
    try:
        listeners.report(port_file, out)
        ports = listeners.ports()
    finally:
        listeners.close()
    assert out.getvalue().splitlines() == [
        f"{REPORT_PREFIX}http://127.0.0.1:{ports['http']}",
        f"{REPORT_PREFIX}grpc://127.0.0.1:{ports['grpc']}",
    ]
    doc = json.loads(port_file.read_text())
    assert doc["ports"] == ports and doc["urls"]["grpc"] == f"grpc://127.0.0.1:{ports['grpc']}"
    assert [p.name for p in tmp_path.iterdir()] == ["ports.json"]  # no temporary file left beside it
    assert http.fileno() == -1 and other.fileno() == -1  # closed


def test_workers_hold_the_port_without_listening_on_it() -> None:
    """With --workers N the parent holds the port (bound, SO_REUSEPORT, not listening): a connection to it
    is refused until a worker listens, and a plain bind (another server) is refused meanwhile."""
    holder = bind_http("127.0.0.1", 0, workers=2)
    port = holder.getsockname()[1]
    try:
        with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        with pytest.raises(OSError, match="in use"):
            bind_socket("127.0.0.1", port, reuse_port=False)
        with pytest.raises(OSError, match="in use"):
            bind_http("127.0.0.1", port, workers=2)
    finally:
        holder.close()


def test_the_server_gets_none_of_the_callers_psn_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PSN_API_KEY", "a-developers-key")
    monkeypatch.setenv("PSN_MAX_STREAMS", "3")
    env = launcher.server_env({"PSN_LOG_LEVEL": "info"})
    assert "PSN_API_KEY" not in env and "PSN_MAX_STREAMS" not in env and env["PSN_LOG_LEVEL"] == "info"
    assert str(launcher.REPO) in env["PYTHONPATH"].split(":")
