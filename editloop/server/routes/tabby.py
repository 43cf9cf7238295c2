"""Tabby's server API under ``/tabby``, so tabby-agent (and Tabby's editor extensions) work as is."""

import os
import platform
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from editloop import __version__
from editloop.completion.types import MAX_EXTRA, CompletionRequest, Language, Snippet
from editloop.server.auth import require_user, services_of
from editloop.server.feedback import TabbyEvent, project_of, tabby_feedback
from editloop.server.routes.feedback import feedback_of

router = APIRouter(prefix="/tabby/v1", dependencies=[Depends(require_user)])


class TabbySnippet(BaseModel):
    model_config = ConfigDict(extra="allow")
    filepath: str = Field(default="", max_length=1024)
    body: str = ""


class Segments(BaseModel):
    model_config = ConfigDict(extra="allow")  # git_url, clipboard, ...
    prefix: str = ""
    suffix: str | None = None
    filepath: str | None = Field(default=None, max_length=1024)
    git_url: str | None = Field(default=None, max_length=2048)
    declarations: list[TabbySnippet] | None = None
    relevant_snippets_from_changed_files: list[TabbySnippet] | None = None
    relevant_snippets_from_recently_opened_files: list[TabbySnippet] | None = None
    project_root: str | None = Field(
        default=None,
        max_length=4096,
        description="editloop: gather context from this project (see /complete).",
    )


class TabbyCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    language: Language | None = None
    segments: Segments
    user: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    seed: int | None = None


def _snippets(segments: Segments) -> list[Snippet]:
    groups = (
        segments.declarations,
        segments.relevant_snippets_from_changed_files,
        segments.relevant_snippets_from_recently_opened_files,
    )
    return [Snippet(filepath=s.filepath, text=s.body) for group in groups for s in group or [] if s.body][
        :MAX_EXTRA
    ]


@router.post("/completions", summary="Tabby-compatible completion")
async def completions(body: TabbyCompletionRequest, request: Request) -> dict:
    language = body.language if body.language and body.language != "unknown" else None
    engine_request = CompletionRequest(
        prefix=body.segments.prefix,
        suffix=body.segments.suffix or "",
        language=language,
        filepath=body.segments.filepath,
        extra=_snippets(body.segments),
        project_root=body.segments.project_root,
        mode="auto",
        temperature=body.temperature if body.temperature is not None else 0.7,
        seed=body.seed or 0,
        document_id=f"tabby:{body.user or ''}:{body.segments.filepath}" if body.segments.filepath else None,
        project=project_of(body.segments.git_url),
        user=body.user[:128] if body.user else None,
    )
    result = await services_of(request).complete(request, engine_request, "tabby")
    return {"id": result.id, "choices": [{"index": c.index, "text": c.text} for c in result.choices]}


@router.post("/events", status_code=202, summary="Tabby-compatible completion events (view, select, dismiss)")
async def events(
    body: TabbyEvent,
    request: Request,
    select_kind: Annotated[Literal["line"] | None, Query()] = None,
) -> Response:
    service = feedback_of(request)
    await service.submit([tabby_feedback(body, select_kind, service.origin_of(body.completion_id))])
    return Response(status_code=202)


@router.get("/health", summary="Tabby-compatible health")
async def health(request: Request) -> dict:
    version = services_of(request).models.version
    return {
        "model": version or "none",
        "chat_model": None,
        "device": "cpu",
        "arch": platform.machine(),
        "cpu_info": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count() or 1,
        "cuda_devices": [],
        "version": {
            "build_date": "",
            "build_timestamp": "",
            "git_sha": "",
            "git_describe": f"editloop-{__version__}",
        },
    }
