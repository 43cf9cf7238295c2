"""Prometheus metrics, one registry per app (no process-global collectors)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from editloop.completion.types import CompletionResult

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "editloop_request_seconds",
            "Completion request latency by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.requests = Counter(
            "editloop_requests_total",
            "Requests by endpoint and status code",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.candidates = Counter(
            "editloop_candidates_total",
            "Raw candidates by outcome (kept or drop reason)",
            ["outcome"],
            registry=self.registry,
        )
        self.abstentions = Counter(
            "editloop_abstentions_total",
            "Requests answered with no suggestion",
            ["endpoint"],
            registry=self.registry,
        )
        self.completions = Counter(
            "editloop_completions_total",
            "Completions served, by the ranker that ordered them (value or logprob)",
            ["ranker"],
            registry=self.registry,
        )
        self.cache_hits = Counter(
            "editloop_cache_hits_total", "Completions served from the cache", registry=self.registry
        )
        self.model = Gauge(
            "editloop_model_active", "1 for the model version serving", ["version"], registry=self.registry
        )
        self.swaps = Gauge(
            "editloop_model_swaps", "Hot-swaps since start", ["result"], registry=self.registry
        )

    def observe(self, endpoint: str, result: CompletionResult, seconds: float) -> None:
        self.latency.labels(endpoint).observe(seconds)
        self.completions.labels(result.ranker).inc()
        if result.abstained:
            self.abstentions.labels(endpoint).inc()
        if result.cached:
            self.cache_hits.inc()
        for report in result.candidates:
            self.candidates.labels(report.dropped or "kept").inc()

    def render(self, model_status: dict) -> bytes:
        self.model.clear()
        if model_status.get("version"):
            self.model.labels(model_status["version"]).set(1)
        self.swaps.labels("ok").set(model_status.get("swaps", 0))
        self.swaps.labels("failed").set(model_status.get("failed_swaps", 0))
        return generate_latest(self.registry)


class RequestCounter:
    """ASGI middleware: count each answered request by route and status.

    A plain ASGI class rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware runs
    every request in an extra task with memory streams, a large share of a small route's cost.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, record)
        services = getattr(scope["app"].state, "services", None)
        if services is not None and status:
            route = getattr(scope.get("route"), "path", "unmatched")
            services.metrics.requests.labels(route, str(status)).inc()
