"""Prometheus metrics at GET /metrics, from a registry per Runtime (never the process-wide
default, so several runtimes in one process, as in tests, never collide).

Counted as things happen: turns by channel and outcome with their duration, the
responder's duration and errors, identity cache hits and misses, requests answered 503
while a dependency was down, connections refused or closed by the HTTP guards. Read when
scraped: each channel's state, the scheduler's lag, the inbox's depth and age, open HTTP
connections."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from gateway.runtime.wiring import Runtime

# No `_created` series beside every counter and histogram: a second series per label set
# that no dashboard reads.
disable_created_metrics()

# Seconds, from a cached resolve to a slow model.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CHANNEL_STATES = ("starting", "up", "retrying", "stopped")
# The classic text format, which every Prometheus version reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SCRAPE_TIMEOUT = 2.0  # seconds a scrape-time query may take before its value is left out


@dataclass
class _Live:
    """What is read at scrape time, set just before the registry renders."""

    channels: Mapping[str, Any] = field(default_factory=dict)
    scheduler_lag: float | None = None
    inbox: tuple[int, float] | None = None  # (depth, age of the oldest)
    open_connections: int | None = None


class _LiveCollector(Collector):
    def __init__(self, live: _Live) -> None:
        self.live = live

    def describe(self) -> Iterable[Metric]:
        return []  # nothing to check at registration: the values exist only when scraped

    def collect(self) -> Iterable[Metric]:
        states = GaugeMetricFamily(
            "threadline_channel_state", "1 for the state each channel is in now "
            "(starting, up, retrying, stopped), 0 for the others", labels=["channel", "state"])
        for name, state in sorted(self.live.channels.items()):
            for candidate in CHANNEL_STATES:
                states.add_metric([name, candidate], 1.0 if state.status == candidate else 0.0)
        yield states
        if self.live.scheduler_lag is not None:
            yield GaugeMetricFamily(
                "threadline_scheduler_lag_seconds", "How long the most overdue scheduled task "
                "has been due (0: nothing is waiting)", value=self.live.scheduler_lag)
        if self.live.inbox is not None:
            depth, age = self.live.inbox
            yield GaugeMetricFamily(
                "threadline_inbox_depth", "Kept platform messages not said yet: queued, being "
                "answered, or answered but not said (every replica's)", value=depth)
            yield GaugeMetricFamily(
                "threadline_inbox_age_seconds", "How long the oldest of them has waited since "
                "it was kept or last worked on (0: none waits)", value=age)
        if self.live.open_connections is not None:
            yield GaugeMetricFamily("threadline_http_connections", "Open HTTP connections",
                                    value=self.live.open_connections)


class Metrics:
    """The runtime's instruments; the engine and the identity service report to it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.turns = Histogram(
            "threadline_turn_duration_seconds", "Turns by channel and outcome (answered, "
            "apology, command, replayed, duplicate, error, cancelled) and how long each took",
            ["channel", "outcome"], buckets=LATENCY_BUCKETS, registry=registry)
        self.responder_latency = Histogram(
            "threadline_responder_duration_seconds", "How long the responder took, failures "
            "included", ["responder"], buckets=LATENCY_BUCKETS, registry=registry)
        self.responder_errors = Counter(
            "threadline_responder_errors", "Responder calls that failed, by exception type",
            ["responder", "error"], registry=registry)
        self.identity_cache = Counter(
            "threadline_identity_cache_lookups", "Identifier resolutions answered by the "
            "cache (hit) or by the database (miss)", ["result"], registry=registry)
        self.unavailable = Counter(
            "threadline_dependency_unavailable", "Requests answered 503 because a "
            "dependency was down", ["dependency"], registry=registry)
        self.connections_refused = Counter(
            "threadline_http_connections_refused", "Connections closed at once because "
            "THREADLINE_MAX_CONNECTIONS were open", registry=registry)
        self.header_timeouts = Counter(
            "threadline_http_header_timeouts", "Connections closed because the request's "
            "headers did not arrive within THREADLINE_HEADER_TIMEOUT", registry=registry)
        self.open_connections: Callable[[], int] | None = None  # set by `serve`
        self._live = _Live()
        registry.register(_LiveCollector(self._live))

    # -- reported as things happen --

    def turn(self, channel: str, outcome: str, seconds: float) -> None:
        self.turns.labels(channel, outcome).observe(seconds)

    def responder(self, name: str, seconds: float, error: BaseException | None) -> None:
        self.responder_latency.labels(name).observe(seconds)
        if error is not None:
            self.responder_errors.labels(name, type(error).__name__).inc()

    def identity_lookup(self, hit: bool) -> None:
        self.identity_cache.labels("hit" if hit else "miss").inc()

    # -- read when scraped --

    async def render(self, runtime: Runtime) -> bytes:
        self._live.channels = dict(runtime.channel_states)
        try:
            self._live.scheduler_lag = await asyncio.wait_for(runtime.scheduler.lag(),
                                                              SCRAPE_TIMEOUT)
        except Exception:  # noqa: BLE001 - the database is down: the other values still count
            self._live.scheduler_lag = None
        try:
            self._live.inbox = await asyncio.wait_for(runtime.memory.claims.waiting(),
                                                      SCRAPE_TIMEOUT)
        except Exception:  # noqa: BLE001 - as above
            self._live.inbox = None
        self._live.open_connections = (self.open_connections()
                                       if self.open_connections is not None else None)
        return self.render_now()

    def render_now(self) -> bytes:
        return generate_latest(self.registry)


async def _metrics(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    key = runtime.settings.metrics_key
    if key is not None:
        given = request.headers.get("authorization", "")
        expected = f"Bearer {key.get_secret_value()}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return JSONResponse({"error": "send Authorization: Bearer THREADLINE_METRICS_KEY"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
    return Response(await runtime.metrics.render(runtime), media_type=CONTENT_TYPE)


def route() -> Route:
    return Route("/metrics", _metrics, methods=["GET"])
