"""The FastAPI app: services built in the lifespan, thin routers per dialect, JSON errors."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from editloop import __version__
from editloop.models.manager import ModelManager
from editloop.server import errors
from editloop.server.limits import BodyLimit
from editloop.server.routes import admin, infill, native, openai, tabby
from editloop.server.services import build_services
from editloop.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings, models: ModelManager | None = None) -> FastAPI:
    """The server; ``models`` lets a caller (tests, the LSP in-process mode) bring its own manager."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = build_services(settings, models)
        await run_in_threadpool(services.models.start, settings.registry_poll_s)
        if services.models.version is None:
            log.error("no model serving: %s", services.models.last_error)
        app.state.services = services
        try:
            yield
        finally:
            await run_in_threadpool(services.models.close)

    app = FastAPI(
        title="editloop",
        version=__version__,
        lifespan=lifespan,
        description="Code completions that get better from your team's edits.",
    )
    errors.install(app)
    for module in (native, infill, openai, tabby, admin):
        app.include_router(module.router)

    @app.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        route = request.scope.get("route")
        services = getattr(request.app.state, "services", None)
        if services is not None:
            services.metrics.requests.labels(
                getattr(route, "path", "unmatched"), str(response.status_code)
            ).inc()
        return response

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.openapi = lambda: errors.openapi_with_error_bodies(app)
    return app
