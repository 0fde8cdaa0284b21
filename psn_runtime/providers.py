"""Execution providers and ORT sessions: which providers are asked for, which ones a session really got."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import logging
import threading

import onnxruntime as ort

from psn_runtime.config import CPU, CUDA, RuntimeConfig

log = logging.getLogger(__name__)

# TF32 matmuls (ORT's CUDA default) round the membrane potential enough to flip spikes that sit near the
# threshold; spiking nets are discontinuous there, so keep full fp32 to match the CPU and PyTorch answers.
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0"}

_preload_lock = threading.Lock()
_preloaded = False


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build offers (not a promise that a GPU is present)."""
    return list(ort.get_available_providers())


@functools.cache
def nvidia_driver_present() -> bool:
    """Whether the NVIDIA driver library loads. onnxruntime-gpu lists CUDA as available on any machine and
    then fails (with a page of errors per session) where there is no driver; we check once instead."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:  # reported once by the server, with the models it concerns (ModelInfo.warnings)
        return False
    return True


def resolve_providers(wanted: list[str]) -> tuple[list[str], list[str]]:
    """(providers to ask ORT for, warnings): the wanted ones this build has, in the wanted order."""
    available = set(ort.get_available_providers())
    use = [p for p in wanted if p in available]
    warnings = [f"{p} asked for but this onnxruntime build lacks it" for p in wanted if p not in available]
    if CUDA in use and not nvidia_driver_present():
        use.remove(CUDA)
        warnings.append(f"{CUDA} asked for but no NVIDIA driver is present (libcuda.so.1): using the CPU")
    if not use:
        use = [CPU]
        warnings.append(f"none of {wanted} is available; using {CPU}")
    return use, warnings


def preload_cuda_once(providers: list[str]) -> None:
    """Load the CUDA and cuDNN libraries that pip installed (onnxruntime-gpu[cuda,cudnn]) before the first
    CUDA session is made. Harmless where they are missing: ORT then falls back to CPU, and we report it."""
    global _preloaded
    if CUDA not in providers or not hasattr(ort, "preload_dlls"):
        return
    with _preload_lock:
        if _preloaded:
            return
        _preloaded = True
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out):  # it prints each library it cannot find
                ort.preload_dlls()
        except Exception as e:  # any failure only means CUDA will not be used
            log.warning("onnxruntime.preload_dlls() failed: %s", e)
        if out.getvalue().strip():
            log.info("onnxruntime.preload_dlls(): %s", " | ".join(out.getvalue().split("\n")).strip(" |"))


def session_options(config: RuntimeConfig) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = config.intra_op_threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only; provider fallbacks are reported by us
    return so


def make_session(
    model_bytes: bytes, config: RuntimeConfig, providers: list[str]
) -> tuple[ort.InferenceSession, list[str]]:
    """A session for the given serialized model; returns it with warnings about providers it did not get."""
    # cuDNN's default EXHAUSTIVE search re-benchmarks convolutions for every new batch size; step batches
    # take every size from 1 to max_batch, so a heuristic choice avoids a slow first call at each size
    asked = [(p, CUDA_OPTIONS) if p == CUDA else p for p in providers]
    session = ort.InferenceSession(model_bytes, sess_options=session_options(config), providers=asked)
    got = session.get_providers()
    warnings = [
        f"asked for {p} but the session runs on {got} (no GPU, or its CUDA/cuDNN libraries are missing)"
        for p in providers
        if p != CPU and p not in got
    ]
    return session, warnings
