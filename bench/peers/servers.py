"""The peers of ``psn bench peers``, each the way its docs show it (one process, one worker, ONNX Runtime
with one intra-op thread as psn-serve's default), serving the same full.onnx or, for streaming, the same
network in SpikingJelly. Run by the peers' own Python (``.venv-peers``; the SpikingJelly one by the main
venv, beside its CPU torch), so this module imports nothing of psn-serve.

    python -m bench.peers.servers --kind kserve|litserve|fastapi|sj-stream --model DIR --port-file F

Classify answers: the label index and the class probabilities of the mean logits over time (as psn-serve's).
No ``from __future__ import annotations`` here: FastAPI reads the annotations of the apps' local classes.
"""

import argparse
import json
import socket
import sys
import uuid
from pathlib import Path

import numpy as np

THREADS = 1  # ORT intra-op threads (psn-serve's default) and torch threads


def session(model_dir: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_dir / "full.onnx"), options, providers=["CPUExecutionProvider"])


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def classify(sess, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [B, T, F] float32 -> (label index [B], probabilities [B, C])."""
    logits = sess.run(["logits"], {"x": x})[0]  # [B, C]: the mean over time
    return logits.argmax(-1), softmax(logits)


def server_args(prog: str, argv: list[str] | None, kinds: list[str], model: bool = False):
    """``--kind K [--model DIR --name N] --host H --port P --port-file F`` (here and the echo app)."""
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--kind", choices=kinds, default=kinds[0])
    if model:
        p.add_argument("--model", type=Path, required=True, help="a psn-serve model directory (full.onnx)")
        p.add_argument("--name", default="model", help="the model's name (KServe's URL)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: any free port, reported in --port-file")
    p.add_argument("--port-file", type=Path, default=None)
    return p.parse_args(argv)


def bound_socket(host: str, port: int, port_file: Path | None) -> socket.socket:
    """A socket bound to (host, port), its port reported in port_file as psn serve reports its own (the
    launcher reads it there): bound before it is reported, so no race for the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    if port_file is not None:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"ports": {"http": sock.getsockname()[1]}}))
        tmp.replace(port_file)
    return sock


# ------------------------------------------------------------------------------------------------ KServe


def run_kserve(args: argparse.Namespace) -> None:
    import kserve
    from kserve import InferOutput, InferRequest, InferResponse

    class OnnxModel(kserve.Model):
        def __init__(self, name: str) -> None:
            super().__init__(name)
            self.sess = None
            self.load()

        def load(self) -> bool:
            self.sess = session(args.model)
            self.ready = True
            return self.ready

        def predict(self, payload: InferRequest, headers: dict | None = None) -> InferResponse:
            x = payload.inputs[0].as_numpy().astype(np.float32, copy=False)  # [B, T, F]
            labels, probs = classify(self.sess, x)
            out_label = InferOutput("label_index", list(labels.shape), "INT64")
            out_label.set_data_from_numpy(labels.astype(np.int64))
            out_probs = InferOutput("probabilities", list(probs.shape), "FP32")
            out_probs.set_data_from_numpy(probs.astype(np.float32))
            response_id = payload.id or uuid.uuid4().hex  # as KServe's own model servers do
            return InferResponse(response_id, self.name, [out_label, out_probs])

    sys.argv = sys.argv[:1]  # ModelServer reads its own flags from sys.argv: give it none of ours
    kserve.ModelServer(http_port=args.port, workers=1, enable_grpc=False).start([OnnxModel(args.name)])


# ----------------------------------------------------------------------------------------------- LitServe


try:  # only in the peers' venv; the class must sit at module level: LitServe pickles it into its workers
    import litserve as ls
except ImportError:
    ls = None
else:

    class OnnxAPI(ls.LitAPI):
        def __init__(self, model_dir: Path) -> None:
            super().__init__()
            self.model_dir = model_dir

        def setup(self, device: str) -> None:
            self.sess = session(self.model_dir)

        def decode_request(self, request: dict) -> np.ndarray:
            return np.asarray(request["inputs"], dtype=np.float32)[None]  # [1, T, F]

        def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return classify(self.sess, x)

        def encode_response(self, output: tuple[np.ndarray, np.ndarray]) -> dict:
            labels, probs = output
            return {"label_index": int(labels[0]), "probabilities": probs[0].tolist()}


def run_litserve(args: argparse.Namespace) -> None:
    server = ls.LitServer(OnnxAPI(args.model), accelerator="cpu", devices=1, workers_per_device=1)
    server.run(host=args.host, port=args.port, generate_client_file=False)


# ------------------------------------------------------------------------------------ FastAPI + ONNX Runtime


def fastapi_app(model_dir: Path):
    from fastapi import FastAPI
    from pydantic import BaseModel

    class ClassifyRequest(BaseModel):
        inputs: list[list[float]]  # one sequence [T, F]

    class ClassifyResponse(BaseModel):
        label_index: int
        probabilities: list[float]

    app = FastAPI()
    sess = session(model_dir)

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/classify")
    def predict(request: ClassifyRequest) -> ClassifyResponse:  # a plain def: FastAPI runs it in its threads
        labels, probs = classify(sess, np.asarray(request.inputs, dtype=np.float32)[None])  # [1, T, F]
        return ClassifyResponse(label_index=int(labels[0]), probabilities=probs[0].tolist())

    return app


# ------------------------------------------------------------------------ FastAPI WebSocket + SpikingJelly


def sj_network(config: dict):
    """The network of a psn-serve model's checkpoint config (psn.network.SeqClassifier's layers, conv or mlp
    arch) in SpikingJelly, single-step mode: one nn.Sequential over [N, F] per step, the neurons keeping
    their own state between calls."""
    import torch
    from spikingjelly.activation_based import neuron
    from torch import nn

    F, C, H, k, depth = config["features"], config["channels"], config["hidden"], config["k"], config["depth"]
    layers: list = []
    if config["arch"] == "conv":
        layers.append(nn.Unflatten(1, (1, F)))  # [N, F] -> [N, 1, F]
        c_in, length = 1, F
        for i in range(depth):
            layers += [nn.Conv1d(c_in, C, 3, padding=1, bias=False), nn.BatchNorm1d(C), neuron.SlidingPSN(k)]
            c_in = C
            if i >= depth - 2 and length >= 4:  # pool after the last two blocks
                layers.append(nn.AvgPool1d(2))
                length //= 2
        layers.append(nn.Flatten())  # [N, C*L]
        width = C * length
    else:
        width = F
        for _ in range(depth - 1):
            layers += [nn.Linear(width, H, bias=False), nn.BatchNorm1d(H), neuron.SlidingPSN(k)]
            width = H
    layers += [nn.Linear(width, H, bias=False), nn.BatchNorm1d(H), neuron.SlidingPSN(k)]
    torch.manual_seed(0)
    return nn.Sequential(*layers, nn.Linear(H, config["classes"])).eval()


def sj_app(model_dir: Path):
    import copy

    import torch
    from fastapi import FastAPI, WebSocket, WebSocketDisconnect
    from spikingjelly.activation_based import functional

    torch.set_num_threads(THREADS)
    config = json.loads((model_dir / "checkpoint" / "config.json").read_text())
    template = sj_network(config)
    app = FastAPI()

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.websocket("/stream")
    async def stream(websocket: WebSocket) -> None:
        await websocket.accept()
        net = copy.deepcopy(template)  # this connection's neurons and their state
        await websocket.send_json({"model": "sj", "features": config["features"]})
        t, total = 0, torch.zeros(config["classes"])
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("bytes") is not None:
                    x = torch.frombuffer(bytearray(message["bytes"]), dtype=torch.float32)
                else:
                    doc = json.loads(message["text"])
                    if doc.get("reset"):
                        functional.reset_net(net)
                        t, total = 0, torch.zeros(config["classes"])
                        await websocket.send_json({"reset": True})
                        continue
                    x = torch.tensor(doc["x"], dtype=torch.float32)
                with torch.no_grad():
                    total += net(x[None])[0]  # [1, F] -> logits [1, C]
                probs = torch.softmax(total / (t + 1), -1)
                await websocket.send_json(
                    {
                        "t": t,
                        "ready": True,
                        "label": str(int(probs.argmax())),
                        "probabilities": probs.tolist(),
                    }
                )
                t += 1
        except WebSocketDisconnect:
            return

    return app


def main(argv: list[str] | None = None) -> int:
    args = server_args(
        "python -m bench.peers.servers", argv, ["kserve", "litserve", "fastapi", "sj-stream"], True
    )
    sock = bound_socket(args.host, args.port, args.port_file)
    if args.kind in ("kserve", "litserve"):  # they bind their port themselves: free it just before
        args.port = sock.getsockname()[1]
        sock.close()
        (run_kserve if args.kind == "kserve" else run_litserve)(args)
    else:
        import uvicorn

        app = fastapi_app(args.model) if args.kind == "fastapi" else sj_app(args.model)
        uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
