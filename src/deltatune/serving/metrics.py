"""Prometheus metrics of one server (``GET /metrics``, text format 0.0.4), on its own registry."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

# seconds; from 1 ms to 60 s (generation can be slow on a CPU)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    """The counters and histograms the server updates.

    Attributes:
        requests: ``deltatune_requests_total{route,status}``: answered requests by route and HTTP status.
        errors: ``deltatune_errors_total{route,status}``: answers with status >= 400.
        latency: ``deltatune_request_latency_seconds{route}``: time from request to answer (seconds;
            to the last byte of a streamed answer).
        batch_size: ``deltatune_batch_size{model}``: inputs per forward pass (dynamic batching).
        inputs: ``deltatune_inputs_total{model}``: inputs predicted.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("deltatune_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.errors = Counter("deltatune_errors", "HTTP answers with status >= 400", ["route", "status"], registry=r)
        self.latency = Histogram(
            "deltatune_request_latency_seconds", "request latency (seconds)", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram("deltatune_batch_size", "inputs per forward pass", ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.inputs = Counter("deltatune_inputs", "inputs predicted", ["model"], registry=r)

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.requests.labels(route, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """(body, content type) of ``GET /metrics``."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
