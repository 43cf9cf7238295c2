"""Operators: versions, activate, roll back; ask for a retrain cycle and watch it."""

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from editloop.errors import FeedbackError
from editloop.feedback import canary, control
from editloop.server.auth import require_admin, services_of

router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])


def _summary(version, current: str | None) -> dict:
    m = version.manifest
    return {
        "version": version.name,
        "current": version.name == current,
        "kind": m.kind,
        "parent": m.parent,
        "created_at": m.created_at,
        "gguf": sorted(m.gguf),
        "metrics": m.metrics,
    }


@router.get("/models", summary="Every published version")
async def models(request: Request) -> dict:
    services = services_of(request)
    current = services.registry.current_name()
    return {
        "current": current,
        "serving": services.models.version,
        "versions": [_summary(v, current) for v in services.registry.versions()],
    }


@router.post("/models/{version}/activate", summary="Make a version current and serve it")
async def activate(version: str, request: Request) -> dict:
    services = services_of(request)
    activated = await run_in_threadpool(services.registry.activate, version)
    await run_in_threadpool(services.models.reload)
    return {"current": activated.name, "serving": services.models.version, "model": services.models.status()}


@router.post("/rollback", summary="Go back to the previously active version")
async def rollback(request: Request) -> dict:
    services = services_of(request)
    activated = await run_in_threadpool(services.registry.rollback)
    await run_in_threadpool(services.models.reload)
    return {"current": activated.name, "serving": services.models.version, "model": services.models.status()}


def _control_client(request: Request):
    services = services_of(request)
    if services.feedback is None:
        raise FeedbackError("feedback is off (feedback_enabled=false): retrain cycles need its Redis")
    return services.feedback.log.store.client


class RetrainBody(BaseModel):
    force: bool = Field(default=False, description="Publish even if the gate fails.")


@router.post("/retrain", status_code=202, summary="Ask the trainer for a retrain cycle now")
async def retrain(request: Request, body: RetrainBody | None = None) -> dict:
    client = _control_client(request)
    force = bool(body and body.force)
    request_id = await run_in_threadpool(control.request_retrain, client, force)
    alive = await run_in_threadpool(control.trainer_alive, client)
    return {"request_id": request_id, "queued": True, "trainer_alive": alive}


@router.get("/status", summary="The serving model, the running cycle and the last cycles")
async def status(request: Request, limit: int = 10) -> dict:
    services = services_of(request)
    cycles = await run_in_threadpool(control.cycle_status, _control_client(request), max(1, min(limit, 50)))
    return {**cycles, "model": services.models.status(), "current": services.registry.current_name()}


@router.get("/canary", summary="The canary: arm map, both arms' live figures, the rule's verdict now")
async def canary_status(request: Request) -> dict:
    services = services_of(request)
    store = services.feedback.log.store if services.feedback else None
    rule = canary.rule_from(services.settings)
    return await run_in_threadpool(canary.status, services.registry, store, rule)


@router.post("/canary/promote", summary="Make the canary current now")
async def canary_promote(request: Request) -> dict:
    return await _canary_decision(request, "promote")


@router.post("/canary/abort", summary="Stop the canary; the current version serves everything")
async def canary_abort(request: Request) -> dict:
    return await _canary_decision(request, "abort")


async def _canary_decision(request: Request, action) -> dict:
    services = services_of(request)
    _control_client(request)  # needs the feedback log: refuses clearly when it is off
    assert services.feedback is not None
    decided = await run_in_threadpool(
        canary.decide_now, services.registry, services.feedback.log.store, action
    )
    await run_in_threadpool(services.models.reload)
    return decided.model_dump()
