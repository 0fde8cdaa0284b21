"""Server settings: environment variables ``PSN_*`` (and the flags of ``psn serve``, which override them).

Every limit is validated when the settings are built, so a nonsense value fails at startup with a message
that names it, not later under load.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from psn_runtime.config import ModelControl, RuntimeConfig, split_list

BUNDLED_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
OFF_WORDS = frozenset({"off", "none", "false", "no"})  # a port setting that is switched off


class LogLevel(StrEnum):
    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"
    DEBUG = "debug"


class Settings(BaseSettings, RuntimeConfig):
    """The server's settings: every RuntimeConfig field (inherited: one declaration, one set of bounds and
    help) plus the server's own. Values come from flags, then ``PSN_*`` variables, then defaults."""

    # lists are read as "a,b" or a JSON list by the fields' own validators
    model_config = SettingsConfigDict(env_prefix="PSN_", extra="forbid", frozen=True, enable_decoding=False)

    models_dir: Path = Field(BUNDLED_MODELS_DIR, description="folder of model directories to serve")
    host: str = Field("127.0.0.1", min_length=1, description="address to bind")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 = any free port)")
    grpc_port: int | None = Field(
        8001,
        ge=0,
        le=65535,
        description="gRPC port of the Open Inference Protocol (0 = any free port, 'off' = no gRPC)",
    )
    port_file: Path | None = Field(
        None,
        description="once the port is bound, write it here as JSON "
        '{"pid", "host", "ports": {"http": PORT, "grpc": PORT}, "urls"} (atomically; for --port 0)',
    )
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="largest request body (413 beyond)")
    max_ws_message_bytes: int = Field(256 * 1024, ge=64, description="largest WebSocket message (close 1009)")
    api_key: SecretStr | None = Field(None, description="require this key (Bearer or X-API-Key) when set")
    stream_secret: SecretStr | None = Field(
        None,
        description="secret shared by the replicas that signs stream snapshots (>= 16 bytes); "
        "unset = resumable streams off",
    )
    max_snapshot_bytes: int = Field(
        1024 * 1024, ge=1024, description="largest stream snapshot made or accepted (bytes)"
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="allowed CORS origins (comma-separated); empty = CORS off"
    )
    log_level: LogLevel = Field(LogLevel.INFO, description="log level")
    access_log: bool = Field(False, description="log every request (costs throughput)")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="serving processes, one per core, on one port (SO_REUSEPORT); each loads every model",
    )

    @field_validator("workers")
    @classmethod
    def _one_worker_for_explicit(cls, value: int, info: ValidationInfo) -> int:
        if value > 1 and info.data.get("model_control") is ModelControl.EXPLICIT:
            raise ValueError(
                "model_control explicit needs 1 worker: each worker process holds its own models, and a load "
                "or unload request reaches only one of them (with several workers, use model_control poll)"
            )
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("grpc_port", mode="before")
    @classmethod
    def _grpc_off(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() in OFF_WORDS else value

    @field_validator("models_dir")
    @classmethod
    def _models_dir(cls, value: Path) -> Path:
        value = value.expanduser().resolve()
        if not value.is_dir():
            raise ValueError(f"{value} is not a directory")
        if (value / "manifest.json").is_file():
            raise ValueError(
                f"{value} is one model directory (it holds manifest.json); give the folder that holds "
                f"model directories: --models-dir {value.parent} (every folder in it with a manifest.json "
                "is served)"
            )
        return value

    @field_validator("port_file")
    @classmethod
    def _port_file(cls, value: Path | None) -> Path | None:
        if value is None:
            return None
        value = value.expanduser().resolve()
        if not value.parent.is_dir():
            raise ValueError(f"{value.parent} is not a directory")
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
                if type(self).model_fields[name].default is not None:
                    out[f"PSN_{name.upper()}"] = "off"  # switched off (its default is on)
                continue
            if isinstance(getattr(self, name), SecretStr):
                value = getattr(self, name).get_secret_value()
            elif isinstance(value, list):
                value = json.dumps(value)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            out[f"PSN_{name.upper()}"] = str(value)
        return out
