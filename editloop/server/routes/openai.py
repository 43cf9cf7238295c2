"""OpenAI-compatible ``POST /v1/completions`` (prompt = prefix, ``suffix``), for Continue and SDKs."""

import json
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from editloop.completion.types import CompletionRequest, CompletionResult
from editloop.errors import BadRequestError
from editloop.server.auth import require_user, services_of

router = APIRouter(prefix="/v1")


class OpenAICompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # presence_penalty, user, best_of, ...: accepted, unused

    model: str | None = None
    prompt: str | list[str] = ""
    suffix: str | None = None
    max_tokens: int | None = Field(default=16, ge=1, le=1024)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=16)
    stop: str | list[str] | None = None
    logprobs: int | None = Field(default=None, ge=0, le=5)
    stream: bool = False
    seed: int | None = None
    project_root: str | None = Field(
        default=None,
        max_length=4096,
        description="editloop: gather context from this project (see /complete).",
    )


def _prompt(body: OpenAICompletionRequest) -> str:
    if isinstance(body.prompt, str):
        return body.prompt
    if len(body.prompt) != 1:
        raise BadRequestError(f"prompt: one prompt per request, got {len(body.prompt)}")
    return body.prompt[0]


def _cut(text: str, stop: str | list[str] | None) -> tuple[str, str]:
    stops = [stop] if isinstance(stop, str) else (stop or [])
    cuts = [text.index(s) for s in stops if s and s in text]
    return (text[: min(cuts)], "stop") if cuts else (text, "stop")


def _reply(result: CompletionResult, body: OpenAICompletionRequest) -> dict:
    reports = {r.text: r for r in result.candidates}
    choices: list[dict] = []
    for choice in result.choices or []:
        text, finish = _cut(choice.text, body.stop)
        report = reports.get(choice.text)
        finish = "length" if report and report.finish_reason == "length" else finish
        logprobs = (
            {
                "token_logprobs": report.logprobs if report else [],
                "tokens": None,
                "text_offset": None,
                "top_logprobs": None,
            }
            if body.logprobs is not None
            else None
        )
        choices.append({"index": len(choices), "text": text, "logprobs": logprobs, "finish_reason": finish})
    if not choices:  # abstained: OpenAI clients expect a choice, so an empty one
        choices = [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}]
    completion_tokens = sum(len(r.logprobs) for r in result.candidates)
    return {
        "id": result.id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": result.model_version,
        "choices": choices,
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": result.prompt_tokens + completion_tokens,
        },
    }


def _stream(reply: dict) -> StreamingResponse:
    """Clients that ask for a stream get the finished completion as one event, then [DONE]."""

    def events():
        yield f"data: {json.dumps(reply)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@router.post("/completions", dependencies=[Depends(require_user)], summary="OpenAI-compatible completions")
async def completions(body: OpenAICompletionRequest, request: Request):
    engine_request = CompletionRequest(
        prefix=_prompt(body),
        suffix=body.suffix or "",
        mode="auto",
        project_root=body.project_root,
        n=body.n,
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        seed=body.seed or 0,
    )
    result = await services_of(request).complete(request, engine_request, "openai")
    reply = _reply(result, body)
    return _stream(reply) if body.stream else reply
