"""editloop's own API: /complete, /health, /metrics."""

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from editloop.completion.types import CompletionRequest, CompletionResult
from editloop.server.auth import require_user, services_of

router = APIRouter()


@router.post(
    "/complete",
    response_model=CompletionResult,
    dependencies=[Depends(require_user)],
    summary="Ranked FIM completions for a cursor position",
)
async def complete(body: CompletionRequest, request: Request) -> CompletionResult:
    return await services_of(request).complete(request, body, "complete")


@router.get("/health", summary="Liveness and the model serving")
async def health(request: Request) -> dict:
    services = services_of(request)
    model = services.models.status()
    feedback = await run_in_threadpool(services.feedback.status) if services.feedback else {"status": "off"}
    return {
        "status": "ok" if model["version"] else "no_model",
        "model": model,
        "pending": services.limiter.pending,
        "feedback": feedback,
    }


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    services = services_of(request)
    return Response(services.metrics.render(services.models.status()), media_type="text/plain; version=0.0.4")
