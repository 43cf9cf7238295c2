"""Every error leaves the server as JSON ``{"error": {"code", "message"}}`` with a fitting status."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from editloop import errors

log = logging.getLogger(__name__)

STATUS: dict[type, int] = {
    errors.BadRequestError: 400,
    errors.AuthError: 401,
    errors.ForbiddenError: 403,
    errors.UnknownVersionError: 404,
    errors.CorruptVersionError: 409,
    errors.RegistryError: 409,
    errors.OverloadedError: 503,
    errors.ModelError: 503,
    errors.BackendError: 502,
    errors.FeedbackError: 503,
}


def error_response(status: int, code: str, message: str, **extra: object) -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse(
        {"error": {"code": code, "message": message, **extra}}, status_code=status, headers=headers
    )


def _status(exc: errors.EditloopError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


async def _editloop_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.EditloopError)
    status = _status(exc)
    if status >= 500:
        log.warning("%s: %s", exc.code, exc.message)
    return error_response(status, exc.code, exc.message)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = [
        {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]}
        for e in exc.errors()
    ]
    first = fields[0] if fields else {"field": "", "message": "invalid request"}
    return error_response(
        400, "invalid_request", f"{first['field'] or 'body'}: {first['message']}", fields=fields
    )


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    # 400 here is FastAPI's "error parsing the body" (e.g. JSON nested past the parser's depth).
    codes = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
    return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


def openapi_with_error_bodies(app: FastAPI) -> dict:
    """The schema as the server really answers: 400 with ``{error}`` where FastAPI documents 422."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorBody"] = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    components["ErrorDetail"] = components["ErrorBody"].pop("$defs")["ErrorDetail"]
    error = {
        "description": "Invalid request",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None:
                responses["400"] = error
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    app.openapi_schema = schema
    return schema


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.EditloopError, _editloop_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
