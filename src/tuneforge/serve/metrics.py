"""Prometheus metrics of one server (its own registry, so several apps in one process do not collide)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from tuneforge.serve.store import RequestLog

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServerMetrics:
    def __init__(self, queue_depth: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tuneforge_requests", "Requests answered", ["endpoint", "model", "status"], registry=r
        )
        self.errors = Counter("tuneforge_errors", "Error responses by status code", ["code"], registry=r)
        self.latency = Histogram(
            "tuneforge_request_latency_seconds",
            "Time from request to last byte",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "tuneforge_time_to_first_token_seconds",
            "Time from request to the first generated token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("tuneforge_tokens", "Tokens processed", ["model", "kind"], registry=r)
        self.queue = Gauge("tuneforge_queue_depth", "Requests waiting or generating", registry=r)
        self.shadow = Counter(
            "tuneforge_shadow_requests",
            "serve.shadow: the challenger's answers by status (skipped: it was busy)",
            ["status"],
            registry=r,
        )
        self.queue.set_function(queue_depth)

    def watch_log(self, log: RequestLog) -> None:
        """The request log's health, read at each scrape: rows lost or a file replaced are never silent."""
        r = self.registry
        up = Gauge(
            "tuneforge_request_log_up", "1 while request log rows are being written, else 0", registry=r
        )
        up.set_function(lambda: float(log.problem is None))
        dropped = Gauge("tuneforge_request_log_dropped_rows", "Request log rows lost since start", registry=r)
        dropped.set_function(lambda: float(log.dropped))
        reopened = Gauge(
            "tuneforge_request_log_reopened", "Times the log file was reopened after it vanished", registry=r
        )
        reopened.set_function(lambda: float(log.reopened))

    def watch_registry(
        self, name: str, version: Callable[[], float], pointer_ok: Callable[[], float]
    ) -> None:
        """The registry version new requests get, and whether its champion pointer can be followed."""
        r = self.registry
        served = Gauge(
            "tuneforge_model_version",
            "Registry version of the served model new requests get",
            ["model"],
            registry=r,
        )
        served.labels(name).set_function(version)
        ok = Gauge(
            "tuneforge_registry_pointer_ok",
            "1 while the registry's champion pointer can be followed, 0 while the server keeps its version",
            ["model"],
            registry=r,
        )
        ok.labels(name).set_function(pointer_ok)
