"""Everything a running server holds, built once in the app's lifespan and passed to routes."""

import asyncio
import threading
import time
from dataclasses import dataclass

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from editloop.completion.cache import CompletionCache
from editloop.completion.engine import CompletionEngine, EngineConfig
from editloop.completion.types import CompletionRequest, CompletionResult
from editloop.errors import OverloadedError
from editloop.models.backend import Backend
from editloop.models.manager import ModelManager
from editloop.models.registry import ModelVersion, Registry
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

    def release(self) -> None:
        with self._lock:
            self.pending -= 1


@dataclass
class Services:
    settings: Settings
    registry: Registry
    models: ModelManager
    engine: CompletionEngine
    metrics: Metrics
    limiter: Limiter

    async def complete(self, http: Request, request: CompletionRequest, endpoint: str) -> CompletionResult:
        """Run the engine off the event loop; a client that hangs up stops the decode."""
        self.limiter.acquire()
        started = time.perf_counter()
        cancel = threading.Event()
        budget_ms = int(self.settings.request_timeout_s * 1000)
        request = request.model_copy(
            update={"time_budget_ms": min(request.time_budget_ms or budget_ms, budget_ms)}
        )
        try:
            task = asyncio.ensure_future(run_in_threadpool(self.engine.complete, request, cancel))
            while not task.done():
                await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
                if not task.done() and await http.is_disconnected():
                    cancel.set()
            result = task.result()
        finally:
            self.limiter.release()
        self.metrics.observe(endpoint, result, time.perf_counter() - started)
        return result


def backend_factory(settings: Settings):
    """How a registry version becomes a running backend, per the settings."""

    def load(version: ModelVersion) -> Backend:
        if settings.backend == "remote":
            from editloop.models.remote import RemoteBackend

            return RemoteBackend(
                settings.remote_url or "",
                settings.remote_model,
                version.tokenizer_path(),
                version.manifest.fim,
                version.name,
                n_ctx=_context_length(version),
                api_key=settings.remote_api_key,
            )
        from editloop.models.llama import LlamaBackend

        return LlamaBackend.from_version(
            version,
            quant=settings.model_quant,
            n_threads=settings.model_threads or None,
            max_candidates=settings.max_candidates,
        )

    return load


def _context_length(version: ModelVersion) -> int:
    import gguf

    reader = gguf.GGUFReader(version.gguf_path())
    arch = version.manifest.arch or "llama"
    field = reader.fields[f"{arch}.context_length"]
    return int(field.parts[field.data[0]][0])


def build_services(settings: Settings, models: ModelManager | None = None) -> Services:
    registry = Registry(settings.models_dir)
    models = models or ModelManager(registry, backend_factory(settings))
    cache = CompletionCache(settings.cache_entries, settings.cache_ttl_s) if settings.cache_entries else None
    config = EngineConfig(
        abstain_threshold=settings.abstain_threshold,
        default_max_tokens=settings.default_max_tokens,
        max_candidates=settings.max_candidates,
    )
    return Services(
        settings,
        registry,
        models,
        CompletionEngine(models, config, cache),
        Metrics(),
        Limiter(settings.max_pending),
    )
