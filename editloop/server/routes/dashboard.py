"""``GET /dashboard``: one self-contained page; ``GET /dashboard/data``: the figures it draws.

The page (package data, no external assets) asks for the user token to read the data and the
admin token to roll back; both stay in the browser tab's sessionStorage. The data is the feedback
log's figures (``feedback/stats.py``, read incrementally on each call), the retrain cycles and
the versions::

    curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8765/dashboard/data?hours=24
"""

import logging
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Annotated

import redis
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from editloop.errors import EditloopError
from editloop.feedback import canary, control
from editloop.feedback.stats import FeedbackStats
from editloop.server.auth import require_user, services_of
from editloop.server.services import Services

log = logging.getLogger(__name__)
router = APIRouter()
REDIS_DOWN = (redis.RedisError, OSError, EditloopError)


@router.get("/dashboard", response_class=HTMLResponse, summary="The dashboard page (HTML)")
async def page() -> HTMLResponse:
    html = resources.files("editloop.server").joinpath("static/dashboard.html").read_text("utf-8")
    return HTMLResponse(html, headers={"Cache-Control": "no-cache"})


@router.get("/dashboard/data", dependencies=[Depends(require_user)], summary="The dashboard's figures")
async def data(
    request: Request,
    project: Annotated[str | None, Query(max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")] = None,
    hours: Annotated[float | None, Query(gt=0, le=24 * 366)] = None,
) -> dict:
    services = services_of(request)
    since = datetime.now(UTC) - timedelta(hours=hours) if hours else None
    feedback, cycles = await run_in_threadpool(_from_redis, services, _stats_of(request), project, since)
    return {
        "generated_at": datetime.now(UTC).isoformat(),
        "models": _models(services),
        "feedback": feedback,
        "cycles": cycles,
        "canary": await run_in_threadpool(_canary, services),
        "admin_enabled": bool(services.settings.admin_token) or not services.settings.api_tokens,
    }


def _stats_of(request: Request) -> FeedbackStats:
    """The app's one aggregation, made on first use (the event loop runs this without a break)."""
    state = request.app.state
    stats = getattr(state, "dashboard_stats", None)
    if stats is None:
        stats = state.dashboard_stats = FeedbackStats(services_of(request).settings.dashboard_bucket_s)
    return stats


def _from_redis(
    services: Services, stats: FeedbackStats, project: str | None, since: datetime | None
) -> tuple[dict, dict]:
    """Feedback figures and cycles; with Redis down, the figures read so far and the reason."""
    if services.feedback is None:
        off = {"status": "off", "error": "feedback is disabled (EDITLOOP_FEEDBACK_ENABLED=false)"}
        return off, off
    client = services.feedback.log.store.client
    try:
        stats.refresh(services.feedback.log.store)
        feedback = {"status": "ok", **stats.report(project, since)}
        cycles = {"status": "ok", **control.cycle_status(client, limit=20)}
    except REDIS_DOWN as exc:
        log.warning("dashboard: feedback log unreadable: %r", exc)
        reason = f"Redis unreachable: {exc}"
        feedback = {"status": "unavailable", "error": reason, **stats.report(project, since)}
        cycles = {"status": "unavailable", "error": reason}
    return feedback, cycles


def _canary(services: Services) -> dict:
    """The canary's arms side by side (or the last decision); never takes the page down."""
    store = services.feedback.log.store if services.feedback else None
    try:
        return {
            "status": "ok",
            **canary.status(services.registry, store, canary.rule_from(services.settings)),
        }
    except REDIS_DOWN as exc:
        log.warning("dashboard: canary figures unreadable: %r", exc)
        return {"status": "unavailable", "error": str(exc)}


def _models(services: Services) -> dict:
    current = services.registry.current_name()
    status = services.models.status()
    try:
        versions = services.registry.versions()
    except EditloopError as exc:  # a half-written registry must not take the page down
        log.warning("dashboard: registry unreadable: %s", exc)
        versions = []
    return {
        "current": current,
        "serving": status["version"],
        "status": status,
        "versions": [
            {
                "version": v.name,
                "kind": v.manifest.kind,
                "parent": v.manifest.parent,
                "created_at": v.manifest.created_at,
                "current": v.name == current,
                "serving": v.name == status["version"],
            }
            for v in versions
        ],
    }
