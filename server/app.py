"""The FastAPI application. Nothing is created at import: ``build_app(settings)`` makes an app whose lifespan
builds the runtime, loads every model directory, and closes it all on shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from psn_runtime import ModelStatus, Runtime, RuntimeConfig, available_providers
from server import (
    apidoc,
    errors,
    fastpath,
    routes_demo,
    routes_health,
    routes_repository,
    routes_stream,
    routes_v1,
    routes_v2,
    v2codec,
)
from server.dataplane import DataPlane
from server.jsonio import JSONBytesResponse
from server.metrics import Metrics, MetricsMiddleware
from server.settings import Settings
from server.state import AppState, app_state
from server.views import primary_provider

log = logging.getLogger("psn.server")

RuntimeFactory = Callable[[RuntimeConfig, Metrics], Runtime]
_APPS: weakref.WeakSet[FastAPI] = weakref.WeakSet()  # every app built in this process (for drain_all)


def runtime_config(settings: Settings) -> RuntimeConfig:
    """The runtime's share of the settings: every RuntimeConfig field has a setting of the same name.
    Providers left at their default are narrowed to those this onnxruntime build has (the CPU build on a
    host without a GPU is no cause for a warning); providers asked for by name are kept, and reported."""
    fields = settings.model_dump(include=set(RuntimeConfig.model_fields))
    if "providers" not in settings.model_fields_set:
        available = set(available_providers())
        fields["providers"] = [p for p in settings.providers if p in available] or settings.providers
    return RuntimeConfig(**fields)


def _default_runtime(config: RuntimeConfig, metrics: Metrics) -> Runtime:
    return Runtime(config, observer=metrics)


def _log_models(state: AppState) -> None:
    assert state.runtime is not None
    infos = state.runtime.models()
    if not infos:
        log.warning("no model directories in %s", state.settings.models_dir)
    causes: dict[str, list[str]] = {}  # one warning per cause, naming the models it concerns
    for info in infos:
        provider = primary_provider(info)
        if info.status is ModelStatus.READY:
            log.info("model %s: ready on %s (sessions: %s)", info.name, provider, info.providers)
        else:
            log.error("model %s: %s: %s", info.name, info.status, info.error)
        for warning in info.warnings:
            causes.setdefault(warning, []).append(info.name)
    for warning, names in causes.items():
        which = f"model {names[0]}" if len(names) == 1 else f"{len(names)} models ({', '.join(names)})"
        log.warning("%s: %s", which, warning)


def build_app(settings: Settings, *, runtime_factory: RuntimeFactory | None = None) -> FastAPI:
    """A new app serving ``settings.models_dir``; the runtime starts with the app's lifespan."""
    metrics = Metrics()
    api_key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    plane = DataPlane(settings, metrics)
    state = AppState(settings=settings, metrics=metrics, api_key=api_key, plane=plane)
    make_runtime = runtime_factory or _default_runtime

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = make_runtime(runtime_config(settings), metrics)
        sampler = None  # with several workers: this one's pools, sampled for the others' scrapes
        try:
            await runtime.start()
            freeze_startup_objects()
            plane.attach(runtime)
            state.loop = asyncio.get_running_loop()
            _log_models(state)
            if metrics.multiprocess:
                sampler = asyncio.create_task(metrics.sample_forever(runtime.stats))
            if settings.grpc_port is not None:  # the Open Inference Protocol over gRPC, on this loop
                from server import grpc_server

                state.grpc = await grpc_server.start(state)
            yield
        finally:
            if sampler is not None:
                sampler.cancel()
            if state.grpc is not None:
                await state.grpc.stop()  # no-op when the server already drained
            await routes_stream.close_all(state)  # no-op when the server already drained
            plane.attach(None)
            await runtime.close()
            gc.unfreeze()  # what start-up froze may be collected again (tests build many apps in one process)

    docs = api_key is None  # with a key, no route but the probes answers without it (docs included)
    app = FastAPI(
        title="psn-serve",
        summary="Parallel Spiking Neuron networks on ONNX Runtime: classify sequences, stream timesteps",
        lifespan=lifespan,
        default_response_class=JSONBytesResponse,
        docs_url=None,  # /docs and /redoc come from routes_demo, with their assets served offline
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )
    app.state.psn = state
    app.include_router(routes_v1.router)  # the hot routes first: routes are matched in order
    app.include_router(routes_v2.router)
    app.include_router(routes_stream.router)
    app.include_router(routes_health.router)
    app.include_router(routes_v2.health)
    app.include_router(routes_repository.router)
    routes_demo.install(app, docs=docs)
    apidoc.document(app)  # tags, summaries and the WebSocket protocol for /docs
    errors.install(
        app, protocols=[(routes_v2.health, routes_v2.router, routes_repository.router)]
    )  # after every route
    app.add_middleware(fastpath.FastPath, state=state, routes=fastpath.hot_routes())  # hot POSTs
    app.add_middleware(MetricsMiddleware, metrics=metrics, served=lambda: state.model_names)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", v2codec.HEADER_LENGTH],
            expose_headers=[v2codec.HEADER_LENGTH],
        )
    _APPS.add(app)
    return app


def freeze_startup_objects() -> None:
    """Collect, then move every object start-up made (modules, the app, the loaded models' Python objects)
    into CPython's permanent generation (``gc.freeze``): a full collection then walks only what requests made
    since. Without it every full collection walks all of start-up's objects while the event loop waits: a
    pause that lands at the tail of the latency distribution under load (``psn bench serving`` reports the
    collections per load point)."""
    gc.collect()
    gc.freeze()


async def drain_all() -> int:
    """Close (1001, going away) every stream WebSocket of the apps whose lifespan runs on this event loop,
    end their gRPC stream calls (UNAVAILABLE) and refuse new ones; HTTP requests and unary gRPC calls in
    flight are untouched. The server calls it when it starts to shut down, before uvicorn would close the
    sockets itself (1012). Returns how many streams were closed."""
    loop = asyncio.get_running_loop()
    closed = 0
    for app in list(_APPS):
        state = app_state(app)
        if state.loop is loop:
            if state.grpc is not None:
                closed += await state.grpc.drain()
            closed += await routes_stream.close_all(state)
    return closed


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` and worker processes: settings from ``PSN_*`` variables."""
    return build_app(Settings())


__all__ = ["app_state", "build_app", "create_app_from_env", "drain_all", "runtime_config"]
