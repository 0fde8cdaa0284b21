"""Server settings: environment variables ``PSN_*`` (and the flags of ``psn serve``, which override them).

Every limit is validated when the settings are built, so a nonsense value fails at startup with a message
that names it, not later under load.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

BUNDLED_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
DEFAULT_PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]


class LogLevel(StrEnum):
    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"
    DEBUG = "debug"


def _split_list(value: Any) -> Any:
    """``a,b`` or a JSON list ``["a", "b"]`` (from the environment or a flag) -> ``["a", "b"]``."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PSN_", extra="forbid", frozen=True)

    models_dir: Path = Field(BUNDLED_MODELS_DIR, description="folder of model directories to serve")
    host: str = Field("127.0.0.1", min_length=1, description="address to bind")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 = any free port)")
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_PROVIDERS),
        min_length=1,
        description="ONNX Runtime execution providers wanted, in order (comma-separated)",
    )
    intra_op_threads: int = Field(
        1, ge=0, le=1024, description="ONNX Runtime intra-op threads (0 = ORT default)"
    )
    batching: bool = Field(True, description="batch the steps of concurrent streams into one ORT call")
    max_batch: int = Field(64, ge=1, le=65536, description="most steps in one ORT call")
    max_wait_ms: float = Field(0.0, ge=0.0, le=1000.0, description="extra wait for more steps to batch (ms)")
    inline_max_rows: int = Field(
        8,
        ge=0,
        le=65536,
        description="run ORT on the event loop for step batches of at most this many steps and classify "
        "requests of at most half as many sequences (no thread hop); 0 = always a worker thread",
    )
    max_queue: int = Field(4096, ge=1, description="pending steps per model before shedding load (429)")
    max_streams: int = Field(1024, ge=1, description="open streams over all models")
    idle_timeout_s: float = Field(300.0, gt=0.0, description="close a stream idle this long (s)")
    max_stream_steps: int = Field(100_000, ge=1, description="most steps per stream of an unbounded model")
    max_classify_batch: int = Field(256, ge=1, description="most sequences in one classify request")
    max_classify_pending: int = Field(
        64, ge=1, description="classify requests computing or waiting at once before shedding load (429)"
    )
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="largest request body (413 beyond)")
    max_ws_message_bytes: int = Field(256 * 1024, ge=64, description="largest WebSocket message (close 1009)")
    warmup: bool = Field(True, description="run every graph once at load")
    api_key: SecretStr | None = Field(None, description="require this key (Bearer or X-API-Key) when set")
    stream_secret: SecretStr | None = Field(
        None,
        description="secret shared by the replicas that signs stream snapshots (>= 16 bytes); "
        "unset = resumable streams off",
    )
    max_snapshot_bytes: int = Field(
        1024 * 1024, ge=1024, description="largest stream snapshot made or accepted (bytes)"
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="allowed CORS origins (comma-separated); empty = CORS off"
    )
    log_level: LogLevel = Field(LogLevel.INFO, description="log level")
    access_log: bool = Field(False, description="log every request (costs throughput)")
    workers: int = Field(1, ge=1, le=64, description="serving processes (each loads every model)")

    @field_validator("providers", "cors_origins", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("providers")
    @classmethod
    def _providers(cls, value: list[str]) -> list[str]:
        for name in value:
            if not name.endswith("ExecutionProvider"):
                raise ValueError(
                    f"{name!r} is not an ONNX Runtime execution provider name (…ExecutionProvider)"
                )
        if len(set(value)) != len(value):
            raise ValueError("providers are listed twice")
        return value

    @field_validator("models_dir")
    @classmethod
    def _models_dir(cls, value: Path) -> Path:
        value = value.expanduser().resolve()
        if not value.is_dir():
            raise ValueError(f"{value} is not a directory")
        return value

    @field_validator("api_key")
    @classmethod
    def _api_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 8:
            raise ValueError("an API key must be at least 8 characters")
        return value

    @field_validator("stream_secret")
    @classmethod
    def _stream_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 16:
            raise ValueError("a stream secret must be at least 16 bytes")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(f"CORS origin {origin!r} must be '*' or start with http:// or https://")
        return value

    def env(self) -> dict[str, str]:
        """These settings as ``PSN_*`` environment variables (for worker processes)."""
        out: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None:
                continue
            if isinstance(getattr(self, name), SecretStr):
                value = getattr(self, name).get_secret_value()
            elif isinstance(value, list):
                value = json.dumps(value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            out[f"PSN_{name.upper()}"] = str(value)
        return out
