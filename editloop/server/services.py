"""Everything a running server holds, built once in the app's lifespan and passed to routes."""

import asyncio
import math
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


@dataclass
class Dispatch:
    """Where a completion runs: on the event loop, or handed to a worker thread.

    The hand-off to a worker and back costs about half a millisecond on 2 cores (measured on the
    typing trace), a tenth of a small model's whole request. What it buys is a free loop while the
    model works: a newer keystroke can arrive and supersede the completion, a hang-up can cancel it,
    other routes answer. None of that is worth anything for a completion that ends before the next
    keystroke could, so one runs on the loop when it is the only one pending, gathers no project
    context (a first scan of a project can take seconds), and is expected to take less than
    ``inline_ms``. The expectation is the recent cost per unit of decode budget (candidates x
    max tokens; a moving average, started on a worker and again after a model swap) times this
    request's budget, so a request asking for far more than the recent ones goes to a worker.
    """

    inline_ms: float
    max_candidates: int
    default_tokens: int  # a request that sets no max_tokens is budgeted as the largest default
    ms_per_unit: float = math.inf
    version: str | None = None

    def inline(self, request: CompletionRequest, pending: int) -> bool:
        if pending != 1 or request.project_root is not None:
            return False
        return self.ms_per_unit * self._budget(request) < self.inline_ms

    def observe(self, request: CompletionRequest, result: CompletionResult) -> None:
        elapsed = result.timings.get("total_ms")
        if elapsed is None:
            return
        if result.model_version != self.version:
            self.version, self.ms_per_unit = result.model_version, math.inf
        rate = elapsed / self._budget(request)
        self.ms_per_unit = rate if math.isinf(self.ms_per_unit) else 0.8 * self.ms_per_unit + 0.2 * rate

    def _budget(self, request: CompletionRequest) -> int:
        return min(request.n, self.max_candidates) * (request.max_tokens or self.default_tokens)


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
    dispatch: Dispatch
    feedback: FeedbackService | None = None  # set in the lifespan once its Redis is up

    async def complete(self, http: Request, request: CompletionRequest, endpoint: str) -> CompletionResult:
        """Run the engine on a worker thread, or on the loop when that is sooner (:class:`Dispatch`);
        a cache hit is answered on the loop. A client that hangs up stops a decode on a worker."""
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
                if self.dispatch.inline(request, self.limiter.pending):
                    result = self.engine.complete(request, cancel)
                else:
                    result = await self._on_worker(http, request, cancel)
                self.dispatch.observe(request, result)
        finally:
            self.limiter.release()
        elapsed = time.perf_counter() - started
        # Counted and recorded once the reply is written (the handler's task runs to its end
        # first): building the event (privacy checks, redaction) is not the editor's wait.
        asyncio.get_running_loop().call_soon(self._account, request, result, endpoint, elapsed)
        return result

    async def _on_worker(
        self, http: Request, request: CompletionRequest, cancel: threading.Event
    ) -> CompletionResult:
        task = asyncio.ensure_future(run_in_threadpool(self.engine.complete, request, cancel))
        while not task.done():
            await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if not task.done() and await http.is_disconnected():
                cancel.set()
        return task.result()

    def _account(
        self, request: CompletionRequest, result: CompletionResult, endpoint: str, elapsed: float
    ) -> None:
        self.metrics.observe(endpoint, result, elapsed)
        if self.feedback is not None:
            self.feedback.record_completion(request, result, endpoint, elapsed)


def build_services(settings: Settings, models: ModelManager[ServedModel] | None = None) -> Services:
    models = models or build_models(settings)
    engine = build_engine(settings, models)
    config = engine.config
    return Services(
        settings,
        Registry(settings.models_dir),
        models,
        engine,
        Metrics(),
        Limiter(settings.max_pending),
        Dispatch(settings.inline_completion_ms, config.max_candidates, config.block_max_tokens),
    )
