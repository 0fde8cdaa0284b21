"""``psn bench runtime``: psn_runtime latency and throughput on ONNX Runtime sessions."""
