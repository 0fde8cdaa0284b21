"""Prometheus metrics, in a registry of each app's own (several apps in one process do not clash).

With several worker processes (``psn serve --workers N``) the supervisor sets ``PROMETHEUS_MULTIPROC_DIR``:
every process writes its values there and a scrape of any worker sums them (counters and histograms add up;
gauges say how in ``multiprocess_mode``: open streams and pools are summed over the live workers,
``psn_worker_streams_open`` keeps one series per worker pid, ``psn_model_ready`` is the lowest of them).

``Metrics`` is also the runtime's observer: the runtime calls ``on_step_batch``, ``on_stream_open`` and
``on_stream_close`` and never imports prometheus itself.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from psn_runtime import ModelInfo, ModelStatus
from server.views import primary_provider

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SAMPLE_EVERY_S = 1.0  # with several workers, each samples its pools this often (a scrape sees only its own)
UNKNOWN_MODEL = "<unknown>"  # keeps label cardinality bounded: names that are not served share one label


class Metrics:
    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        self.registry = CollectorRegistry(auto_describe=True)
        count, gauge, histogram = self._counter, self._gauge, self._histogram
        http, grpc, version = ("method", "route", "model"), ("method", "model"), ("model", "version")
        self.requests = count(
            "psn_http_requests", "HTTP requests by route template, model and status", *http, "status"
        )
        self.latency = histogram(
            "psn_http_request_duration_seconds", "server-side HTTP request latency", LATENCY_BUCKETS, *http
        )
        self.grpc_requests = count(
            "psn_grpc_requests",
            "gRPC calls (a ModelStreamInfer message counts as one) by method, model and status code",
            *grpc,
            "code",
        )
        self.grpc_latency = histogram(
            "psn_grpc_request_duration_seconds",
            "server-side gRPC latency (of a ModelStreamInfer message: until its answer is queued)",
            LATENCY_BUCKETS,
            *grpc,
        )
        self.streams_open = gauge(
            "psn_streams_open", "open streams, by model and the version they are on", "livesum", *version
        )
        self.worker_streams = gauge(
            "psn_worker_streams_open",
            "open streams of this worker process (a pid label with --workers N)",
            "liveall",
        )
        self.streams_closed = count(
            "psn_streams_closed",
            "closed streams by version and reason (moved: resumed on another version)",
            *version,
            "reason",
        )
        self.steps = count("psn_stream_steps", "stream steps answered", *version)
        self.step_batch = histogram(
            "psn_step_batch_size", "steps run in one ONNX Runtime call", BATCH_BUCKETS, *version
        )
        self.step_batch_seconds = histogram(
            "psn_step_batch_duration_seconds", "time of one batched step call", LATENCY_BUCKETS, *version
        )
        self.sequences = count(
            "psn_classified_sequences",
            "sequences classified (v1 classify and v2 infer), by the model version that answered",
            *version,
        )
        self.errors = count("psn_errors", "errors answered, by kind and transport", "kind", "transport")
        self.pool_in_use = gauge(
            "psn_stream_pool_in_use",
            "stream state slots held (open streams + steps in flight)",
            "livesum",
            "model",
        )
        self.pool_capacity = gauge(
            "psn_stream_pool_capacity", "stream state slots allocated", "livesum", "model"
        )
        self.step_queue = gauge("psn_step_queue", "steps queued for the batcher", "livesum", "model")
        self.model_ready = gauge(
            "psn_model_ready",
            "1 if the model version is READY, by execution provider",
            "livemin",
            *version,
            "provider",
        )
        self._ready_provider: dict[tuple[str, str], str] = {}  # the provider label a version was READY on
        self.polls = count("psn_model_polls", "scans of the models dir done (model control poll)")

        self._children: dict[tuple, Any] = {}  # labelled children, resolved once (labels() costs us per call)

    def _counter(self, name: str, documentation: str, *labels: str) -> Counter:
        return Counter(name, documentation, labels, registry=self.registry)

    def _histogram(
        self, name: str, documentation: str, buckets: tuple[float, ...], *labels: str
    ) -> Histogram:
        return Histogram(name, documentation, labels, buckets=buckets, registry=self.registry)

    def _gauge(self, name: str, documentation: str, mode: str, *labels: str) -> Gauge:
        """``mode``: how the workers' values combine (``multiprocess_mode``: livesum, liveall, livemin)."""
        return Gauge(name, documentation, labels, registry=self.registry, multiprocess_mode=mode)

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached (the label values are bounded: served names, routes)."""
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    # RuntimeObserver ---------------------------------------------------------------------------------
    def on_step_batch(self, model: str, version: str, size: int, seconds: float) -> None:
        self.child(self.step_batch, model, version).observe(size)
        self.child(self.step_batch_seconds, model, version).observe(seconds)

    def on_stream_open(self, model: str, version: str) -> None:
        self.streams_open.labels(model, version).inc()
        self.worker_streams.inc()

    def on_stream_close(self, model: str, version: str, reason: str) -> None:
        self.streams_open.labels(model, version).dec()
        self.worker_streams.dec()
        self.streams_closed.labels(model, version, reason).inc()

    def on_poll(self, loaded: list[ModelInfo]) -> None:
        self.polls.inc()

    def on_model_status(self, info: ModelInfo) -> None:
        """psn_model_ready{model, version, provider}: 1 while the version is READY, else 0."""
        key = (info.name, info.version)
        if info.status is ModelStatus.READY:
            provider = self._ready_provider[key] = primary_provider(info) or ""
            self.model_ready.labels(info.name, info.version, provider).set(1)
        else:
            provider = self._ready_provider.get(key, primary_provider(info) or "")
            self.model_ready.labels(info.name, info.version, provider).set(0)

    # server side -------------------------------------------------------------------------------------
    def count_error(self, kind: str, transport: str) -> None:
        self.errors.labels(kind, transport).inc()

    def observe_runtime(self, stats: dict) -> None:
        """Sample the runtime's pools and queues (``Runtime.stats()``) just before a scrape."""
        for name, entry in stats.get("models", {}).items():
            if "pool_in_use" in entry:
                self.pool_in_use.labels(name).set(entry["pool_in_use"])
                self.pool_capacity.labels(name).set(entry["pool_capacity"])
                self.step_queue.labels(name).set(entry["queued"])

    async def sample_forever(self, stats: Callable[[], dict]) -> None:
        """With several workers: sample this worker's pools every SAMPLE_EVERY_S (a scrape reaches one)."""
        while True:
            self.observe_runtime(stats())
            await asyncio.sleep(SAMPLE_EVERY_S)

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged)  # every worker's values, from PROMETHEUS_MULTIPROC_DIR
        return generate_latest(merged)


class MetricsMiddleware:
    """Counts and times every HTTP request by route template (``/v1/models/{name}/classify``) and model."""

    def __init__(self, app: ASGIApp, metrics: Metrics, served: Callable[[], set[str]]) -> None:
        self.app = app
        self.metrics = metrics
        self.served = served

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            name = scope.get("path_params", {}).get("name")
            model = "" if name is None else (name if name in self.served() else UNKNOWN_MODEL)
            method = scope["method"]
            metrics = self.metrics
            metrics.child(metrics.requests, method, template, model, str(status)).inc()
            metrics.child(metrics.latency, method, template, model).observe(time.perf_counter() - start)
