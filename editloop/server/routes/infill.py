"""llama.cpp server's ``POST /infill`` subset, so llama.vim and llama.vscode work unmodified.

llama.vim sends the lines above the cursor as ``input_prefix``, the current line up to the
cursor as ``prompt`` and the rest as ``input_suffix``; the full prefix is their concatenation.
"""

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from editloop.completion.types import MAX_EXTRA, CompletionRequest, CompletionResult, Snippet
from editloop.server.auth import require_user, services_of

router = APIRouter()
MAX_BUDGET_MS = 60_000


class InfillExtra(BaseModel):
    filename: str = Field(default="", max_length=1024)
    text: str = ""


class InfillRequest(BaseModel):
    # llama.cpp accepts many sampler knobs editloop does not use; they are accepted and ignored.
    model_config = ConfigDict(extra="allow")

    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: list[InfillExtra] = Field(default=[], max_length=64)
    prompt: str = ""
    n_predict: int | None = Field(default=None, ge=-1, le=1024)
    n_indent: int = Field(default=0, ge=0)
    t_max_predict_ms: int | None = Field(default=None, ge=0)
    temperature: float = Field(default=0.0, ge=0, le=2)
    seed: int | None = None
    response_fields: list[str] | None = None
    project_root: str | None = Field(
        default=None,
        max_length=4096,
        description="editloop: gather context from this project (see /complete).",
    )


def _to_request(body: InfillRequest) -> CompletionRequest:
    return CompletionRequest(
        prefix=body.input_prefix + body.prompt,
        suffix=body.input_suffix,
        mode="auto",
        # llama.vim's ring buffer lists the newest chunks last: beyond what a request may carry,
        # the oldest give way.
        extra=[Snippet(filepath=e.filename, text=e.text) for e in body.input_extra if e.text][-MAX_EXTRA:],
        max_tokens=body.n_predict if body.n_predict and body.n_predict > 0 else None,
        # llama.vim may ask for more time than the engine allows a request: the engine's cap applies.
        time_budget_ms=min(body.t_max_predict_ms, MAX_BUDGET_MS) if body.t_max_predict_ms else None,
        temperature=body.temperature,
        seed=body.seed or 0,
        project_root=body.project_root,
    )


def _cut_at_indent(text: str, n_indent: int) -> str:
    """llama.cpp's n_indent: a later line indented less than the cursor line ends the completion."""
    if n_indent <= 0:
        return text
    lines = text.split("\n")
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() and len(line) - len(line.lstrip()) < n_indent:
            return "\n".join(lines[:i])
    return text


def _reply(result: CompletionResult, body: InfillRequest) -> dict:
    content = _cut_at_indent(result.choices[0].text, body.n_indent) if result.choices else ""
    prompt_ms, decode_ms = result.timings.get("prompt_ms", 0.0), result.timings.get("decode_ms", 0.0)
    evaluated = max(result.prompt_tokens - result.cached_tokens, 0)
    predicted = max(1, len(content) // 4) if content else 0  # llama.vim only displays these
    timings = {
        "prompt_n": evaluated,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / evaluated if evaluated else 0.0,
        "prompt_per_second": evaluated / prompt_ms * 1000 if prompt_ms else 0.0,
        "predicted_n": predicted,
        "predicted_ms": decode_ms,
        "predicted_per_token_ms": decode_ms / predicted if predicted else 0.0,
        "predicted_per_second": predicted / decode_ms * 1000 if decode_ms else 0.0,
    }
    reply = {
        "content": content,
        "stop": True,
        "model": result.model_version,
        "id_slot": 0,
        "tokens_predicted": predicted,
        "tokens_evaluated": result.prompt_tokens,
        "tokens_cached": result.cached_tokens,
        "truncated": result.truncated,
        "timings": timings,
        "editloop": {"id": result.id, "abstained": result.abstained, "cached": result.cached},
    }
    if body.response_fields:
        # llama.cpp flattens requested nested fields to "a/b" keys.
        flat = {f"timings/{k}": v for k, v in timings.items()} | reply
        return {f: flat[f] for f in body.response_fields if f in flat}
    return reply


@router.post("/infill", dependencies=[Depends(require_user)], summary="llama.cpp-compatible infill")
async def infill(body: InfillRequest, request: Request) -> dict:
    result = await services_of(request).complete(request, _to_request(body), "infill")
    return _reply(result, body)
