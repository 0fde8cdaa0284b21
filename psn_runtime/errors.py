"""The runtime's own exceptions. ``server`` maps each to an HTTP status and a WebSocket close code in
one table; the runtime knows nothing about HTTP."""

from __future__ import annotations


class RuntimeErrorBase(Exception):
    """Base of every error the runtime raises on purpose."""

    code: str = "runtime_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnknownModel(RuntimeErrorBase):
    code = "unknown_model"

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown model {name!r}")
        self.name = name


class ModelNotReady(RuntimeErrorBase):
    """The model exists but failed to load (or is still loading)."""

    code = "model_not_ready"


class BadInput(RuntimeErrorBase):
    """Input of the wrong shape, type or value. Names the parameter and the offending value."""

    code = "bad_input"

    def __init__(self, param: str, message: str, value: object = None) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.value = value


class UnknownStream(RuntimeErrorBase):
    code = "unknown_stream"


class StreamLimit(RuntimeErrorBase):
    """Too many open streams."""

    code = "stream_limit"


class StreamOver(RuntimeErrorBase):
    """The stream has taken all the steps its model allows (masked PSN: T)."""

    code = "stream_over"


class Overloaded(RuntimeErrorBase):
    """The step or request queue is full: shed load, the client may retry later."""

    code = "overloaded"


class BadSnapshot(RuntimeErrorBase):
    """A stream snapshot that may not be resumed: tampered with, of another model or model version,
    malformed, too large, or holding NaN/Inf."""

    code = "bad_snapshot"


class RuntimeClosed(RuntimeErrorBase):
    code = "runtime_closed"


class ModelLoadError(RuntimeErrorBase):
    """A model directory could not be loaded (bad manifest, missing file, sha256 mismatch, bad ONNX)."""

    code = "model_load_error"


class InferenceError(RuntimeErrorBase):
    """onnxruntime failed while running a loaded model (not the client's fault: a server-side error)."""

    code = "inference_error"


class VersionUnavailable(RuntimeErrorBase):
    """A version of a known model that this runtime cannot give new work to: not on its models dir, still
    loading, failed, or being unloaded. Another replica may have it."""

    code = "version_unavailable"


class ModelControlDisabled(RuntimeErrorBase):
    """A load or unload request to a runtime whose model control is not explicit."""

    code = "model_control_disabled"
