"""Operators: list versions, activate one, roll back. The model manager picks the change up."""

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

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
