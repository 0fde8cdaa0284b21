"""``psn serve``: serve model directories over HTTP and WebSocket with uvicorn.

Every setting has a flag (``--max-streams``) and an environment variable (``PSN_MAX_STREAMS``); a flag
overrides the variable. A bad value ends the command with a message naming it and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from server.listen import ListenError, Listeners, bind_http, describe, hold_port
from server.settings import BUNDLED_MODELS_DIR, Settings

log = logging.getLogger("psn.server")


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def flag_text(name: str, field: FieldInfo) -> str:
    """The setting's flag as ``--help`` and the docs show it (``--batching/--no-batching`` for a switch)."""
    flag = _flag(name)
    return f"{flag}/--no-{flag[2:]}" if field.annotation is bool else flag


def _size(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n} ({n // scale} {unit})"
    return str(n)


def default_text(name: str, field: FieldInfo) -> str:
    """A setting's default in words, for ``psn serve --help`` and the settings table in docs/deploy.md."""
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, Path):
        return "the bundled models/" if value == BUNDLED_MODELS_DIR else str(value)
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, list):
        return ",".join(str(v) for v in value) if value else "empty"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int) and name.endswith("_bytes"):
        return _size(value)
    return str(value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="psn serve",
        description="Serve PSN model directories (HTTP, WebSocket, KServe V2, Prometheus metrics). "
        "Each flag also reads from the environment variable PSN_<NAME>; the flag wins.",
    )
    for name, field in Settings.model_fields.items():
        env = f"PSN_{name.upper()}"
        help_ = f"{field.description} (default: {default_text(name, field)}) [env {env}]".replace("%", "%%")
        if field.annotation is bool:
            parser.add_argument(
                _flag(name), dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_
            )
        else:
            parser.add_argument(_flag(name), dest=name, default=None, metavar=name.upper(), help=help_)
    return parser


def parse_settings(argv: list[str]) -> Settings:
    """Flags (strings, validated by Settings) over ``PSN_*`` variables over defaults.

    SystemExit(2) from argparse on an unknown flag; ValidationError on a bad value."""
    args = vars(_parser().parse_args(argv))
    overrides: dict[str, Any] = {name: value for name, value in args.items() if value is not None}
    return Settings(**overrides)


def _explain(exc: ValidationError, argv: list[str]) -> str:
    lines = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "?"
        flag = _flag(name)
        source = flag if any(a == flag or a.startswith(flag + "=") for a in argv) else f"PSN_{name.upper()}"
        given = error.get("input")
        shown = "" if name in ("api_key", "stream_secret") or isinstance(given, dict) else f" (got {given!r})"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"psn serve: {source}: {message}{shown}")
    return "\n".join(lines)


GRACE_S = 5  # uvicorn's timeout_graceful_shutdown: in-flight requests get this long to finish


def server_class() -> type:
    """uvicorn.Server that, on shutdown (SIGTERM, SIGINT), first stops accepting, then closes every stream
    WebSocket with 1001 (going away) and a reason, then lets uvicorn finish the HTTP requests in flight
    (up to GRACE_S) and run the app's shutdown."""
    import uvicorn

    from server.app import drain_all

    class PSNServer(uvicorn.Server):
        app: Any = None  # the FastAPI app, once the factory made it (for the ready line)

        async def startup(self, sockets: list | None = None) -> None:
            await super().startup(sockets)
            if self.started and self.app is not None and self.servers and self.servers[0].sockets:
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                log.info("%s", ready_line(self.app, host, port))

        async def shutdown(self, sockets: list | None = None) -> None:
            for server in self.servers:
                server.close()
            try:
                closed = await drain_all()
            except Exception:  # never let draining stop the shutdown itself
                log.exception("closing the stream sockets failed")
            else:
                if closed:
                    log.info("closed %d stream socket(s) with 1001 (going away)", closed)
            await super().shutdown(sockets)

    return PSNServer


def ready_line(app: Any, host: str, port: int) -> str:
    """The last start-up line: where the page and the API docs are, and which models are ready."""
    from psn_runtime import ModelStatus
    from server.state import app_state

    state = app_state(app)
    infos = state.runtime.models() if state.runtime is not None else []
    ready = [info.name for info in infos if info.status is ModelStatus.READY]
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    base = f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"
    docs = f", API docs {base}/docs" if state.api_key is None else ""
    line = f"ready: the page {base}/{docs}; {len(ready)} of {len(infos)} models ready"
    line += f": {', '.join(ready)}" if ready else ""
    failed = [info.name for info in infos if info.status is not ModelStatus.READY]
    return line + (f" (not ready: {', '.join(failed)}; see GET /readyz)" if failed else "")


def _level(name: str) -> int:
    return logging.getLevelNamesMapping()[name.upper()]


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # psn_runtime's own INFO lines repeat what the server reports about each model: shown only at debug
    runtime_floor = _level(level) if _level(level) <= logging.DEBUG else max(logging.WARNING, _level(level))
    for name, floor in (("psn", _level(level)), ("psn_runtime", runtime_floor)):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(floor)
        logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        settings = parse_settings(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), message already printed
        return int(exc.code or 0)
    except ValidationError as exc:
        print(_explain(exc, argv), file=sys.stderr)
        return 2
    if importlib.util.find_spec("uvicorn") is None:
        print("psn serve: needs uvicorn (pip install -e .)", file=sys.stderr)
        return 2
    listeners = Listeners(settings.host)
    try:  # the ports first: a taken port or a bad address ends here, before any model loads
        listeners.add("http", settings.port, partial(bind_http, workers=settings.workers))
        if settings.grpc_port is not None:  # held here, served by each process's gRPC server (SO_REUSEPORT)
            listeners.add("grpc", settings.grpc_port, hold_port)
    except ListenError as exc:
        print(f"psn serve: {exc}", file=sys.stderr)
        return 1
    try:
        try:
            listeners.report(settings.port_file)
        except OSError as exc:
            print(f"psn serve: --port-file {settings.port_file}: {describe(exc)}", file=sys.stderr)
            return 1
        return _serve(settings.model_copy(update=listeners.bound_settings()), listeners)
    finally:
        listeners.close()


def _serve(settings: Settings, listeners: Listeners) -> int:
    import uvicorn

    from server.app import build_app

    _configure_logging(settings.log_level)
    port = listeners.ports()["http"]
    fast_loop = importlib.util.find_spec("uvloop") is not None
    fast_http = importlib.util.find_spec("httptools") is not None
    log.info(
        "serving %s on http://%s:%d (event loop %s, HTTP parser %s, %d worker(s))",
        settings.models_dir,
        settings.host,
        port,
        "uvloop" if fast_loop else "asyncio",
        "httptools" if fast_http else "h11",
        settings.workers,
    )
    options: dict[str, Any] = {
        "host": settings.host,
        "port": port,
        "log_level": settings.log_level.value,
        "access_log": settings.access_log,
        "ws_max_size": settings.max_ws_message_bytes,
        "server_header": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": GRACE_S,
    }
    if settings.workers > 1:  # one process per worker, each on its own SO_REUSEPORT socket: server.workers
        from server.workers import serve_workers

        return serve_workers(settings, options)

    def make_app() -> Any:
        server.app = build_app(settings)
        return server.app

    server = server_class()(uvicorn.Config(make_app, factory=True, **options))
    server.run(sockets=[listeners.sockets["http"]])
    return 0 if server.started else 1


if __name__ == "__main__":
    raise SystemExit(main())
