"""Prometheus metrics of one server (own registry, so several apps in one process do not collide)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                    0.2, 0.5, 1.0, 2.0, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("edgecv_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        # by status too: under overload the fast 503s would otherwise hide the latency of the answered requests
        self.latency = Histogram("edgecv_request_latency_seconds", "Server-side request latency",
                                 ["endpoint", "status"], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("edgecv_batch_size", "Rows per runner call", buckets=_BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("edgecv_queue_depth", "Rows queued or running", registry=r)
        self.model_load = Gauge("edgecv_model_load_seconds", "Time to verify and load the artifact", registry=r)

    def record(self, endpoint: str, status: int, seconds: float) -> None:
        code = str(status)
        self.requests.labels(endpoint, code).inc()
        self.latency.labels(endpoint, code).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def endpoint_label(scope: dict, route_paths: dict) -> str:
    """The ``endpoint`` label of a request: its route's template (``/v2/models/{name}/infer``), the path of a route
    without one (``/openapi.json``: by its endpoint in ``route_paths``), the prefix of a mount (the docs assets),
    else ``unmatched``; a bounded set of labels, whatever paths clients send."""
    route = scope.get("route")
    if route is not None:
        return route.path
    endpoint = scope.get("endpoint")
    if endpoint is not None and endpoint in route_paths:
        return route_paths[endpoint]
    app_root = scope.get("app_root_path")
    if app_root is not None and scope.get("root_path", "") != app_root:
        return scope["root_path"][len(app_root):]
    return "unmatched"
