"""``POST /feedback``: one event, a list, or ``{"events": [...]}``; 202 once they are durable.

A batch with bad events stores the good ones and answers 400 naming each bad field
(``events[2].completion_id``), with what was stored, so the client resends only what it fixes.
"""

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from editloop.errors import FeedbackError
from editloop.server.auth import require_user, services_of
from editloop.server.errors import error_response
from editloop.server.feedback import FeedbackService, parse_body, summary

router = APIRouter()


def feedback_of(request: Request) -> FeedbackService:
    service = services_of(request).feedback
    if service is None:
        raise FeedbackError("feedback is disabled on this server (EDITLOOP_FEEDBACK_ENABLED=false)")
    return service


@router.post(
    "/feedback",
    dependencies=[Depends(require_user)],
    status_code=202,
    summary="Record feedback events (shown, accepted, rejected, retained, edited, completion)",
)
async def feedback(request: Request) -> JSONResponse:
    service = feedback_of(request)
    parsed = parse_body(await request.body(), service.settings.feedback_default_project)
    outcomes = await service.submit(parsed.events)
    stored = summary(outcomes)
    if parsed.errors:
        first = parsed.errors[0]
        return error_response(
            400, "invalid_request", f"{first['field']}: {first['message']}", fields=parsed.errors, **stored
        )
    return JSONResponse(stored, status_code=202)
