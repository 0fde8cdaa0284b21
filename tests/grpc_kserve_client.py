"""KServe's gRPC client (``kserve.InferenceGRPCClient``, unmodified) against a psn-serve gRPC port; run as a
process of its own by tests/test_grpc_kserve.py: KServe's generated messages and tritonclient's (which the
tests' process imports) share message names, and protobuf's one descriptor pool takes only one of them.

    python tests/grpc_kserve_client.py HOST:PORT MODEL INPUT.npy [API_KEY]

Prints one JSON document: the probes, the answers to the input sent as raw bytes and as typed contents, and
the status code of a request for a model that does not exist.
"""

from __future__ import annotations

import asyncio
import json
import sys

import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest


def _outputs(response) -> dict[str, list]:
    return {out.name: out.as_numpy().tolist() for out in response.outputs}


async def main(url: str, model: str, path: str, key: str | None) -> dict:
    x = np.load(path)  # [B, T, F] float32
    headers = (("authorization", f"Bearer {key}"),) if key else None
    client = InferenceGRPCClient(url, timeout=30, channel_args=[("grpc.enable_retries", 0)])
    try:
        report: dict = {
            "live": await client.is_server_live(headers=headers),
            "ready": await client.is_server_ready(headers=headers),
            "model_ready": await client.is_model_ready(model, headers=headers),
        }
        raw = InferInput(name="x", shape=list(x.shape), datatype="FP32")
        raw.set_data_from_numpy(x, binary_data=True)
        answer = await client.infer(InferRequest(model, [raw], request_id="kserve-raw"), headers=headers)
        report["raw"] = {"id": answer.id, "outputs": _outputs(answer)}
        typed = InferInput(name="x", shape=list(x.shape), datatype="FP32", data=x.ravel().tolist())
        answer = await client.infer(InferRequest(model, [typed], request_id="kserve-typed"), headers=headers)
        report["typed"] = {"id": answer.id, "outputs": _outputs(answer)}
        try:
            await client.infer(InferRequest("no-such-model", [raw]), headers=headers)
            report["unknown_model"] = "OK"
        except grpc.RpcError as exc:
            report["unknown_model"] = exc.code().name
        return report
    finally:
        await client.close()


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(asyncio.run(main(args[0], args[1], args[2], args[3] if len(args) > 3 else None))))
