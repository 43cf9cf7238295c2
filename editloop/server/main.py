"""``editloop serve``: uvicorn over the app, loopback-only unless tokens protect it."""

import ipaddress
import logging

import uvicorn

from editloop.server.app import create_app
from editloop.settings import Settings

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def effective_host(settings: Settings) -> str:
    """The address to bind: without tokens, anything but loopback would open the server to the network."""
    if settings.api_tokens or is_loopback(settings.host):
        return settings.host
    log.warning(
        "no EDITLOOP_API_TOKENS set: binding 127.0.0.1 instead of %s (set tokens to serve the network)",
        settings.host,
    )
    return "127.0.0.1"


def serve(settings: Settings) -> None:
    host = effective_host(settings)
    if not settings.api_tokens:
        log.warning("no API tokens configured: open to local users only, on %s:%d", host, settings.port)
    uvicorn.run(
        create_app(settings),
        host=host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=5,
    )
