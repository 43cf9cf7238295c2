"""Everything a running server holds, built once in the app's lifespan and passed to routes."""

import asyncio
import threading
import time
from dataclasses import dataclass

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from editloop.completion.builder import build_engine, build_models
from editloop.completion.engine import CompletionEngine
from editloop.completion.served import ServedModel
from editloop.completion.types import CompletionRequest, CompletionResult
from editloop.errors import OverloadedError
from editloop.models.manager import ModelManager
from editloop.models.registry import Registry
from editloop.server.feedback import FeedbackService
from editloop.server.metrics import Metrics
from editloop.settings import Settings

DISCONNECT_POLL_S = 0.05


class Limiter:
    """At most ``limit`` completions queued or running; the next one is refused at once (503)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending = 0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            if self.pending >= self.limit:
                raise OverloadedError(
                    f"{self.pending} completions pending (limit {self.limit}); retry shortly"
                )
            self.pending += 1

    @property
    def full(self) -> bool:
        return self.pending >= self.limit

    def release(self) -> None:
        with self._lock:
            self.pending -= 1


def caller_of(http: Request) -> str:
    """The caller ``require_user`` identified (a token digest), or "local" on a tokenless server."""
    return getattr(http.state, "caller", "local")


@dataclass
class Services:
    settings: Settings
    registry: Registry
    models: ModelManager[ServedModel]
    engine: CompletionEngine
    metrics: Metrics
    limiter: Limiter
    feedback: FeedbackService | None = None  # set in the lifespan once its Redis is up

    async def complete(self, http: Request, request: CompletionRequest, endpoint: str) -> CompletionResult:
        """Run the engine off the event loop (a cache hit on it); a client that hangs up stops the decode."""
        self.limiter.acquire()
        started = time.perf_counter()
        cancel = threading.Event()
        budget_ms = int(self.settings.request_timeout_s * 1000)
        update: dict = {"time_budget_ms": min(request.time_budget_ms or budget_ms, budget_ms)}
        if request.document_id is not None:
            # Latest-wins cancels by document_id: only the same caller's newer request may.
            update["document_id"] = f"{caller_of(http)}:{request.document_id}"
        request = request.model_copy(update=update)
        try:
            result = self.engine.complete_cached(request)
            if result is None:
                task = asyncio.ensure_future(run_in_threadpool(self.engine.complete, request, cancel))
                while not task.done():
                    await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
                    if not task.done() and await http.is_disconnected():
                        cancel.set()
                result = task.result()
        finally:
            self.limiter.release()
        elapsed = time.perf_counter() - started
        # Counted and recorded once the reply is written (the handler's task runs to its end
        # first): building the event (privacy checks, redaction) is not the editor's wait.
        asyncio.get_running_loop().call_soon(self._account, request, result, endpoint, elapsed)
        return result

    def _account(
        self, request: CompletionRequest, result: CompletionResult, endpoint: str, elapsed: float
    ) -> None:
        self.metrics.observe(endpoint, result, elapsed)
        if self.feedback is not None:
            self.feedback.record_completion(request, result, endpoint, elapsed)


def build_services(settings: Settings, models: ModelManager[ServedModel] | None = None) -> Services:
    models = models or build_models(settings)
    return Services(
        settings,
        Registry(settings.models_dir),
        models,
        build_engine(settings, models),
        Metrics(),
        Limiter(settings.max_pending),
    )
