"""Bearer tokens: users may complete and send feedback; only the admin token runs /admin.

With no tokens configured the server binds loopback only (see ``editloop serve``), so the
open door is one the local user already has.
"""

import hashlib
import hmac

from fastapi import Request

from editloop.errors import AuthError, ForbiddenError
from editloop.server.services import Services


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    return request.headers.get("x-api-key")


def _matches(token: str | None, allowed: list[str]) -> bool:
    return token is not None and any(hmac.compare_digest(token, a) for a in allowed)


async def require_user(request: Request) -> None:
    # async on purpose: FastAPI runs a sync dependency in its threadpool, a thread handoff per
    # request that cost more than the whole /feedback route (profiled: ~0.3 ms of 0.75 ms).
    settings = services_of(request).settings
    allowed = [*settings.api_tokens, *([settings.admin_token] if settings.admin_token else [])]
    if not allowed:
        return
    token = _token(request)
    if not _matches(token, allowed):
        raise AuthError("missing or wrong bearer token: send 'Authorization: Bearer <token>'")
    request.state.caller = caller_id(token)


def caller_id(token: str | None) -> str:
    """Who is asking, as far as the server can tell: a digest of the token (never the token)."""
    if token is None:
        return "local"  # no tokens configured: loopback only, every caller is the local user
    return "token-" + hashlib.sha256(token.encode()).hexdigest()[:16]


async def require_admin(request: Request) -> None:
    settings = services_of(request).settings
    if not settings.admin_token:
        if settings.api_tokens:
            raise ForbiddenError("admin routes are disabled: set EDITLOOP_ADMIN_TOKEN to enable them")
        return
    token = _token(request)
    if _matches(token, [settings.admin_token]):
        return
    if _matches(token, settings.api_tokens):
        raise ForbiddenError("this token may complete but not administer; use the admin token")
    raise AuthError("missing or wrong admin bearer token")


def services_of(request: Request) -> Services:
    return request.app.state.services
