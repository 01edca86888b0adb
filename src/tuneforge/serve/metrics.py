"""Prometheus metrics of one server (its own registry, so several apps in one process do not collide)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from tuneforge.serve.engine import ServedModel
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

    def watch_drift(self, runs: Callable[[], dict[str, Path]]) -> None:
        """Drift scores of the latest `tuneforge monitor` report of each served run, read at each scrape."""
        self.registry.register(DriftReports(runs))


def served_runs(models: dict[str, ServedModel]) -> dict[str, Path]:
    """The run folder of each served model name that is a run (a bare Hub model has no monitor reports)."""
    return {name: m.run.path for name, m in models.items() if m.run is not None}


class DriftReports(Collector):
    """Gauges from RUN/monitor/<window>/report.json, the newest one written per served model.

    The serving stage reads the monitor's output file, never its code (the monitor comes after serving). A
    scrape costs a directory listing and a stat per window; a report is parsed again only when it changed.
    """

    def __init__(self, runs: Callable[[], dict[str, Path]]) -> None:
        self.runs = runs
        self._cache: dict[Path, tuple[float, dict[str, Any] | None]] = {}

    def latest(self, run: Path) -> dict[str, Any] | None:
        """The newest report.json under RUN/monitor (None when there is none or it cannot be read)."""
        found = []
        for path in (run / "monitor").glob("*/report.json"):
            try:
                found.append((path.stat().st_mtime, path))
            except OSError:  # a window being replaced right now
                continue
        if not found:
            return None
        mtime, path = max(found)
        cached = self._cache.get(path)
        if cached is None or cached[0] != mtime:
            try:
                report = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                report = None
            cached = (mtime, report if isinstance(report, dict) else None)
            self._cache[path] = cached
        return cached[1]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        score = GaugeMetricFamily(
            "tuneforge_drift_score",
            "Statistic of each drift test in the latest monitor report (AUC, distance, D, chi2 ...)",
            labels=["model", "test"],
        )
        p_value = GaugeMetricFamily(
            "tuneforge_drift_p_value", "p-value of each drift test that has one", labels=["model", "test"]
        )
        alert = GaugeMetricFamily(
            "tuneforge_drift_alert",
            "1 where a drift test of the latest monitor report found drift, 0 where it did not "
            "(absent: not enough data to judge)",
            labels=["model", "test"],
        )
        until = GaugeMetricFamily(
            "tuneforge_monitor_window_end_seconds",
            "End of the window the latest monitor report judged (Unix time): how fresh the scores are",
            labels=["model"],
        )
        alerts = GaugeMetricFamily(
            "tuneforge_monitor_alerts", "Alerts the latest monitor report fired", labels=["model"]
        )
        for model, run in sorted(self.runs().items()):
            report = self.latest(run)
            if report is None:
                continue
            for key, t in sorted((report.get("tests") or {}).items()):
                if t.get("statistic") is not None:
                    score.add_metric([model, key], float(t["statistic"]))
                if t.get("p_value") is not None:
                    p_value.add_metric([model, key], float(t["p_value"]))
                if t.get("drift") is not None:
                    alert.add_metric([model, key], float(bool(t["drift"])))
            with contextlib.suppress(KeyError, TypeError, ValueError):  # a report from an older tuneforge
                until.add_metric([model], datetime.fromisoformat(report["window"]["until"]).timestamp())
            alerts.add_metric([model], float(len(report.get("alerts") or [])))
        yield from (score, p_value, alert, until, alerts)
