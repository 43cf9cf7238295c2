"""The FastAPI app: services built in the lifespan, thin routers per dialect, JSON errors."""

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from editloop import __version__
from editloop.completion.served import ServedModel
from editloop.feedback import control
from editloop.models.manager import ModelManager
from editloop.server import errors
from editloop.server.feedback import FeedbackService
from editloop.server.limits import Admission, BodyLimit
from editloop.server.metrics import RequestCounter
from editloop.server.routes import admin, dashboard, feedback, infill, native, openai, tabby
from editloop.server.services import Services, build_services
from editloop.settings import Settings

log = logging.getLogger(__name__)


async def _start_feedback(settings: Settings) -> FeedbackService | None:
    """Open the feedback log (starting the embedded Redis unless EDITLOOP_REDIS_URL is set)."""
    if not settings.feedback_enabled:
        return None
    from editloop.feedback.log import open_feedback

    service = FeedbackService(await run_in_threadpool(open_feedback, settings), settings)
    await service.start()
    return service


async def _stop_feedback(service: FeedbackService | None) -> None:
    """Write the queued events, replay the spool if Redis answers, stop the embedded Redis."""
    if service is not None:
        await service.stop()
        await run_in_threadpool(service.log.close)


def _hear_new_models(services: Services) -> threading.Event:
    """Swap as soon as a trainer announces a version (the registry poll stays as the fallback)."""
    stop = threading.Event()
    if services.feedback is not None:
        control.listen_for_models(
            services.feedback.log.store.client, lambda _version: _reload(services), stop
        )
    return stop


def _reload(services: Services) -> None:
    services.models.reload()


def _queue_full(scope) -> bool:
    services: Services | None = getattr(scope["app"].state, "services", None)
    return services is not None and services.limiter.full


def create_app(settings: Settings, models: ModelManager[ServedModel] | None = None) -> FastAPI:
    """The server; ``models`` lets a caller (tests, the LSP in-process mode) bring its own manager."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = build_services(settings, models)
        await run_in_threadpool(services.models.start, settings.registry_poll_s)
        if services.models.version is None:
            log.error("no model serving: %s", services.models.last_error)
        services.feedback = await _start_feedback(settings)
        announcements = _hear_new_models(services)
        app.state.services = services
        try:
            yield
        finally:
            announcements.set()
            await _stop_feedback(services.feedback)
            await run_in_threadpool(services.models.close)

    app = FastAPI(
        title="editloop",
        version=__version__,
        lifespan=lifespan,
        description="Code completions that get better from your team's edits.",
    )
    errors.install(app)
    for module in (native, infill, openai, tabby, feedback, admin, dashboard):
        app.include_router(module.router)

    app.add_middleware(RequestCounter)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(Admission, is_full=_queue_full)
    # The schema as the server answers, set now that every route is in: FastAPI's openapi() serves
    # a schema already set.
    errors.openapi_with_error_bodies(app)
    return app
