"""Settings (PSN_* environment) and the ``psn serve`` flags: defaults, precedence, and nonsense refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from server import cli
from server.settings import BUNDLED_MODELS_DIR, Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("PSN_"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = Settings()
    assert s.models_dir == BUNDLED_MODELS_DIR == Path(cli.__file__).resolve().parents[1] / "models"
    assert (s.host, s.port, s.workers) == ("127.0.0.1", 8000, 1)
    assert s.providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert s.api_key is None and s.cors_origins == [] and s.batching is True


def test_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PSN_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("PSN_PORT", "9100")
    monkeypatch.setenv("PSN_PROVIDERS", "CPUExecutionProvider")
    monkeypatch.setenv("PSN_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("PSN_API_KEY", "0123456789")
    monkeypatch.setenv("PSN_BATCHING", "false")
    monkeypatch.setenv("PSN_MAX_WAIT_MS", "0.5")
    s = Settings()
    assert (s.models_dir, s.port, s.providers) == (tmp_path.resolve(), 9100, ["CPUExecutionProvider"])
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.api_key is not None and s.api_key.get_secret_value() == "0123456789"
    assert "0123456789" not in repr(s)
    assert s.batching is False and s.max_wait_ms == 0.5
    monkeypatch.setenv("PSN_PROVIDERS", '["CPUExecutionProvider"]')  # JSON lists work too
    assert Settings().providers == ["CPUExecutionProvider"]


def test_env_round_trip(tmp_path: Path) -> None:
    s = Settings(models_dir=tmp_path, port=0, api_key="abcdefgh", cors_origins=["*"], batching=False)
    env = s.env()
    assert env["PSN_API_KEY"] == "abcdefgh" and env["PSN_BATCHING"] == "false"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        assert Settings() == s


@pytest.mark.parametrize(
    ("field", "value", "text"),
    [
        ("port", 70000, "less than or equal to 65535"),
        ("port", -1, "greater than or equal to 0"),
        ("max_batch", 0, "greater than or equal to 1"),
        ("max_streams", 0, "greater than or equal to 1"),
        ("idle_timeout_s", 0, "greater than 0"),
        ("max_wait_ms", -1, "greater than or equal to 0"),
        ("max_body_bytes", 10, "greater than or equal to 1024"),
        ("workers", 0, "greater than or equal to 1"),
        ("providers", "TurboProvider", "not an ONNX Runtime execution provider"),
        ("providers", "", "at least 1"),
        ("models_dir", "/no/such/dir", "is not a directory"),
        ("api_key", "short", "at least 8 characters"),
        ("cors_origins", "ftp://x", "must be '*' or start with http"),
        ("log_level", "loud", "Input should be"),
        ("batching", "perhaps", "valid boolean"),
        ("unknown_setting", 1, "Extra inputs are not permitted"),
    ],
)
def test_nonsense_is_refused(field: str, value: object, text: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(**{field: value})
    assert text in str(info.value)


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PSN_PORT", "9000")
    monkeypatch.setenv("PSN_MAX_STREAMS", "7")
    s = cli.parse_settings(["--port", "9001", "--no-batching", "--providers", "CPUExecutionProvider"])
    assert (s.port, s.max_streams, s.batching, s.providers) == (9001, 7, False, ["CPUExecutionProvider"])
    s = cli.parse_settings([f"--models-dir={tmp_path}", "--cors-origins", "*", "--api-key", "k" * 10])
    assert s.models_dir == tmp_path.resolve() and s.cors_origins == ["*"]


def test_every_setting_has_a_flag() -> None:
    text = cli._parser().format_help()
    for name in Settings.model_fields:
        assert "--" + name.replace("_", "-") in text, name


def test_bad_values_exit_2_naming_the_flag_or_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--port", "70000"]) == 2
    err = capsys.readouterr().err
    assert "psn serve: --port: Input should be less than or equal to 65535 (got '70000')" in err
    assert cli.main(["--max-batch=zero"]) == 2
    assert "--max-batch" in capsys.readouterr().err
    monkeypatch.setenv("PSN_MAX_QUEUE", "0")
    assert cli.main([]) == 2
    assert "PSN_MAX_QUEUE" in capsys.readouterr().err
    monkeypatch.delenv("PSN_MAX_QUEUE")
    assert cli.main(["--api-key", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "--api-key" in err and "tiny" not in err  # a secret is never echoed
    assert cli.main(["--providers", "MadeUpExecutionProvider"]) == 2  # refused by the runtime's config
    assert (
        "psn serve: --providers: unknown execution providers ['MadeUpExecutionProvider']"
        in capsys.readouterr().err
    )
    assert cli.main(["--no-such-flag"]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0
    assert "PSN_MAX_STREAMS" in capsys.readouterr().out


def test_serve_runs_uvicorn_with_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import uvicorn

    seen: dict = {}

    class FakeServer:
        def __init__(self, config: uvicorn.Config) -> None:
            seen["config"] = config
            self.started = True

        def run(self, sockets: list | None = None) -> None:
            seen["port"] = sockets[0].getsockname()[1] if sockets else None

    monkeypatch.setattr(uvicorn, "Server", FakeServer)
    free_ports = ["--port", "0", "--grpc-port", "0"]  # the defaults (8000, 8001) may be taken on this host
    assert cli.main(["--models-dir", str(tmp_path), *free_ports, "--max-ws-message-bytes", "4096"]) == 0
    config = seen["config"]
    assert config.factory and config.host == "127.0.0.1" and config.port == seen["port"] != 0  # bound first
    assert config.ws_max_size == 4096 and config.lifespan == "on"
    app = config.app()  # the factory builds a fresh app with these settings
    assert app.state.psn.settings.models_dir == tmp_path.resolve()

    calls: dict = {}
    monkeypatch.setattr("server.workers.serve_workers", lambda s, options: calls.update(s=s, **options) or 0)
    assert cli.main(["--models-dir", str(tmp_path), "--workers", "2", *free_ports]) == 0
    assert calls["s"].workers == 2 and calls["port"] != 0 and calls["lifespan"] == "on"
    env = calls["s"].env()  # what each worker process rebuilds its settings from
    assert env["PSN_WORKERS"] == "2" and env["PSN_MODELS_DIR"] == str(tmp_path.resolve())


def test_every_runtime_config_field_is_a_setting_and_passes_through() -> None:
    from psn_runtime import RuntimeConfig
    from server.app import runtime_config
    from server.settings import Settings

    assert set(RuntimeConfig.model_fields) <= set(Settings.model_fields)
    cfg = runtime_config(Settings(max_batch=7, inline_max_rows=0, providers=["CPUExecutionProvider"]))
    assert (cfg.max_batch, cfg.inline_max_rows, cfg.providers) == (7, 0, ["CPUExecutionProvider"])
