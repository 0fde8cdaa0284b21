"""gRPC through deploy/nginx (grpc_pass over cleartext HTTP/2): tritonclient.grpc's ModelInfer and a
ModelStreamInfer with several sequences reach a psn-serve replica through nginx and get its answers.
nginx listens on unix sockets in a temporary folder (no port is chosen before it is bound)."""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from test_grpc_support import Live, infer_input, live, streaming
from test_server_support import sequence, served, settings

from psn_runtime.manifest import NeuronKind

pytestmark = pytest.mark.skipif(
    shutil.which("nginx") is None, reason="nginx not installed (make cluster-test installs it)"
)
RENDER = Path(__file__).resolve().parents[1] / "deploy" / "nginx" / "render.py"


def _render():
    spec = importlib.util.spec_from_file_location("psn_nginx_render", RENDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def nginx(tmp: Path, replica: Live) -> Iterator[str]:
    """nginx in front of one replica; yields its gRPC address (``unix:PATH``)."""
    tmp.chmod(0o755)  # nginx's workers (user nobody) write their temp files here
    http, grpc = tmp / "http.sock", tmp / "grpc.sock"
    conf = tmp / "nginx.conf"
    text = _render().standalone(
        [replica.http.removeprefix("http://")], tmp, f"unix:{http}", "", [replica.grpc], f"unix:{grpc}"
    )
    conf.write_text(text)
    test = subprocess.run(["nginx", "-t", "-p", str(tmp), "-c", str(conf)], capture_output=True, text=True)
    assert test.returncode == 0, test.stderr
    with open(tmp / "nginx.out", "w") as out:
        proc = subprocess.Popen(
            ["nginx", "-p", str(tmp), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 10
        while not grpc.exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp / "error.log").read_text()
            time.sleep(0.05)
        yield f"unix:{grpc}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_grpc_through_nginx(tmp_path: Path) -> None:
    m = served().manifest(NeuronKind.SLIDING_PSN)
    x = sequence(m, batch=2, seed=3)  # [B, T, F]
    with (
        live(settings(grpc_port=0)) as replica,
        nginx(tmp_path, replica) as address,
        replica.client() as direct,
        grpcclient.InferenceServerClient(address) as proxied,
    ):
        assert proxied.is_server_ready()
        want = direct.infer(m.name, [infer_input(x)]).as_numpy("logits")
        np.testing.assert_array_equal(proxied.infer(m.name, [infer_input(x)]).as_numpy("logits"), want)
        with streaming(proxied) as stream:
            for t in range(m.T):
                for sid in (1, 2):
                    step = x[sid - 1, t][None, None]  # [1, 1, F]
                    ids = {"request_id": f"{sid}/{t}", "sequence_id": sid}
                    stream.send(m.name, step, **ids, sequence_start=t == 0, sequence_end=t == m.T - 1)
            answers = {}
            for _ in range(2 * m.T):
                result, error = stream.get()
                assert error is None, error
                answers[result.get_response().id] = result.as_numpy("logits")
    for sid in (1, 2):  # after T steps a sliding PSN's running mean logits are the whole sequence's
        np.testing.assert_allclose(answers[f"{sid}/{m.T - 1}"][0], want[sid - 1], rtol=1e-5, atol=1e-6)
