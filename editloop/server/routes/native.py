"""editloop's own API: /complete, /health (liveness, readiness, detail), /metrics."""

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from editloop.completion.types import CompletionRequest, CompletionResult
from editloop.server.auth import require_user, services_of
from editloop.server.errors import error_response

router = APIRouter()


@router.post(
    "/complete",
    response_model=CompletionResult,
    dependencies=[Depends(require_user)],
    summary="Ranked FIM completions for a cursor position",
)
async def complete(body: CompletionRequest, request: Request) -> CompletionResult:
    return await services_of(request).complete(request, body, "complete")


@router.get("/health", summary="Liveness (public): the process answers, and which version serves")
async def health(request: Request) -> dict:
    # Public, so nothing here may come from a file or an error: the version name is a counter
    # every completion reply carries too, and tabby-agent, the replay and the demo read it.
    version = services_of(request).models.version
    return {
        "status": "ok" if version else "no_model",
        "ready": version is not None,
        "model": {"version": version},
    }


@router.get("/health/ready", summary="Readiness (public): 200 while a model serves, else 503")
async def ready(request: Request) -> Response:
    version = services_of(request).models.version
    if version is None:
        return error_response(503, "no_model", "no model is serving; see /health/detail")
    return JSONResponse({"status": "ready", "model": {"version": version}})


@router.get(
    "/health/detail",
    dependencies=[Depends(require_user)],
    summary="Health with reasons (a user or admin token): model errors, queue, feedback log",
)
async def health_detail(request: Request) -> dict:
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
