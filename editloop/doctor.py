"""``editloop doctor``: is this machine ready to serve and retrain? Each failed check names its fix.

    $ editloop doctor
    ✓ python       Python 3.11.2 in the virtualenv /srv/editloop/.venv; torch 2.13.0, llama-cpp-python 0.3.16
    ✗ redis        redis-server is not on PATH: the feedback log cannot start
                   fix: sudo apt-get install -y redis-server
    ...

Exit status 1 when any check fails; ``--json`` prints ``{"ok": bool, "checks": [...]}``.
"""

import importlib.metadata
import importlib.util
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Annotated, Literal

import httpx
import typer

from editloop.errors import EditloopError, SandboxUnavailableError
from editloop.settings import Settings, load_settings

Status = Literal["ok", "warn", "fail", "info"]
MARKS = {"ok": "✓", "warn": "!", "fail": "✗", "info": "·"}
# Below this a retrain cycle of the small starter fits; a real model's checkpoints do not.
DISK_FAIL_BYTES, DISK_WARN_BYTES = 1 << 30, 5 << 30
PACKAGES = ("torch", "llama_cpp", "transformers", "trl", "peft", "fastapi", "pygls", "redis")


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None


def run_checks(settings: Settings) -> list[Check]:
    return [
        check_python(),
        check_redis(settings),
        check_bubblewrap(),
        check_model(settings),
        check_port(settings),
        check_tokens(settings),
        check_disk(settings),
        check_cuda(settings),
    ]


def _apt(package: str) -> str:
    sudo = "" if os.geteuid() == 0 else "sudo "
    return f"{sudo}apt-get install -y {package}"


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    missing = [name for name in PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        return Check("python", "fail", f"missing packages: {', '.join(missing)}", "make install")
    where = (
        f"the virtualenv {sys.prefix}" if sys.prefix != sys.base_prefix else f"{sys.prefix} (no virtualenv)"
    )
    versions = f"torch {_version('torch')}, llama-cpp-python {_version('llama_cpp_python')}"
    detail = f"Python {version} in {where}; {versions}"
    if sys.prefix == sys.base_prefix:
        return Check("python", "warn", detail, "make install  (creates .venv with pinned torch)")
    return Check("python", "ok", detail)


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def check_redis(settings: Settings) -> Check:
    if settings.redis_url:
        from editloop.feedback.store import redis_client

        try:
            redis_client(settings.redis_url, str(settings.redis_ca_file or "") or None).ping()
        except Exception as exc:  # any failure to reach it is the finding
            return Check(
                "redis",
                "fail",
                f"EDITLOOP_REDIS_URL does not answer: {exc}",
                "start that Redis, fix EDITLOOP_REDIS_URL, or unset it to run the embedded one",
            )
        return Check("redis", "ok", "the external Redis at EDITLOOP_REDIS_URL answers")
    binary = shutil.which(settings.redis_server_bin)
    if binary is None:
        return Check(
            "redis",
            "fail",
            f"{settings.redis_server_bin} is not on PATH: the feedback log cannot start",
            _apt("redis-server"),
        )
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    version = next((w.removeprefix("v=") for w in out.split() if w.startswith("v=")), "?")
    return Check("redis", "ok", f"{binary} {version} (embedded: editloop starts it in EDITLOOP_HOME)")


def check_bubblewrap() -> Check:
    from editloop.sandbox import BwrapSandbox

    try:
        sandbox = BwrapSandbox()
    except SandboxUnavailableError as exc:
        if shutil.which("bwrap") is None:
            fix = _apt("bubblewrap")
        else:
            fix = "sysctl -w kernel.unprivileged_userns_clone=1  (or run as root)"
        why = "generated code (rewards, HumanEval) cannot run"
        return Check("bubblewrap", "fail", f"{exc.message.split(';')[0]}: {why}", fix)
    return Check("bubblewrap", "ok", f"{sandbox.bwrap} starts a sandbox here ({sandbox.mode} mode)")


def check_model(settings: Settings) -> Check:
    if settings.backend == "remote":
        return _check_remote(settings)
    from editloop.models.registry import Registry

    registry = Registry(settings.models_dir)
    try:
        current = registry.current()
        if current is None:
            return _no_model(settings)
        version = registry.verify(current.name)
    except EditloopError as exc:
        return Check(
            "model",
            "fail",
            exc.message,
            "editloop models rollback  (or `editloop models list`, then `editloop models activate VERSION`)",
        )
    m = version.manifest
    return Check(
        "model",
        "ok",
        f"{version.name} ({m.kind}, {m.arch or '?'}, {', '.join(m.gguf)}): all {len(m.files)} files match",
    )


def _no_model(settings: Settings) -> Check:
    from editloop.starter import SHIPPED_DIR

    shipped = settings.starter_dir or SHIPPED_DIR / "small"
    if (shipped / "manifest.json").is_file():
        return Check("model", "info", f"no model yet: `editloop run` imports the starter in {shipped}")
    return Check(
        "model",
        "warn",
        f"no model yet and no shipped starter in {shipped}: `editloop run` would train one (17-75 min)",
        "editloop models import MODEL.gguf --hf HF_DIR  (a real model), or editloop bootstrap-model",
    )


def _check_remote(settings: Settings) -> Check:
    url = f"{(settings.remote_url or '').rstrip('/')}/v1/models"
    headers = {"Authorization": f"Bearer {settings.remote_api_key}"} if settings.remote_api_key else {}
    try:
        httpx.get(url, headers=headers, timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        return Check(
            "model",
            "fail",
            f"the remote backend {url} does not answer: {exc}",
            "start it or fix EDITLOOP_REMOTE_URL",
        )
    return Check("model", "ok", f"remote backend {url} answers")


def check_port(settings: Settings) -> Check:
    from editloop.server.main import effective_host

    host, port = effective_host(settings), settings.port
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        served = _editloop_at(host, port)
        if served is not None:
            return Check(
                "port", "ok", f"{host}:{port} is taken by a running editloop server (model {served})"
            )
        return Check(
            "port",
            "fail",
            f"cannot listen on {host}:{port} ({exc.strerror or exc})",
            f"EDITLOOP_PORT={_free_port(host)} editloop run",
        )
    return Check("port", "ok", f"{host}:{port} is free")


def _editloop_at(host: str, port: int) -> str | None:
    try:
        reply = httpx.get(f"http://{host}:{port}/health", timeout=3).json()
        return reply["model"]["version"] or "none"
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def _free_port(host: str) -> int:
    with socket.create_server((host, 0)) as s:
        return s.getsockname()[1]


def check_tokens(settings: Settings) -> Check:
    from editloop.settings import is_loopback

    if is_loopback(settings.host):
        users = f"{len(settings.api_tokens)} user token(s)" if settings.api_tokens else "no tokens needed"
        return Check("tokens", "ok", f"bound to loopback ({settings.host}): {users}")
    if not settings.api_tokens:
        return Check(
            "tokens",
            "fail",
            f"EDITLOOP_HOST={settings.host} without EDITLOOP_API_TOKENS: the server binds 127.0.0.1 instead",
            f"export EDITLOOP_API_TOKENS='[\"{secrets.token_urlsafe(24)}\"]'",
        )
    if not settings.admin_token:
        return Check(
            "tokens",
            "warn",
            f"{len(settings.api_tokens)} user token(s) on {settings.host}, no admin token: /admin is closed",
            f"export EDITLOOP_ADMIN_TOKEN={secrets.token_urlsafe(24)}",
        )
    return Check(
        "tokens", "ok", f"{len(settings.api_tokens)} user token(s) and an admin token on {settings.host}"
    )


def check_disk(settings: Settings) -> Check:
    home = settings.home
    existing = next(p for p in (home, *home.parents) if p.exists())
    fix = "export EDITLOOP_HOME=/a/disk/with/room  (or free space there)"
    if not os.access(existing, os.W_OK):
        return Check("disk", "fail", f"{existing} is not writable: EDITLOOP_HOME={home} cannot be made", fix)
    free = shutil.disk_usage(existing).free
    detail = f"{free / (1 << 30):.1f} GiB free for EDITLOOP_HOME={home}"
    if free < DISK_FAIL_BYTES:
        return Check("disk", "fail", f"{detail}: a retrain cycle needs about 1 GiB", fix)
    if free < DISK_WARN_BYTES:
        return Check("disk", "warn", f"{detail}: enough for the starter, not for a real model's cycles", fix)
    return Check("disk", "ok", detail)


def check_cuda(settings: Settings) -> Check:
    import torch

    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return Check("cuda", "info", f"retrain cycles can train on {names} (EDITLOOP_RETRAIN_DEVICE=auto)")
    if settings.retrain_device == "cuda":
        return Check(
            "cuda",
            "fail",
            "EDITLOOP_RETRAIN_DEVICE=cuda but torch sees no CUDA GPU",
            "export EDITLOOP_RETRAIN_DEVICE=auto",
        )
    return Check(
        "cuda", "info", f"no CUDA GPU visible to torch {torch.__version__}: retrain cycles train on CPU"
    )


def render(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{MARKS[c.status]} {c.name:<{width}}  {c.detail}")
        if c.fix and c.status in ("fail", "warn"):
            lines.append(f"  {'':<{width}}  fix: {c.fix}")
    failed = [c.name for c in checks if c.status == "fail"]
    lines.append(f"{len(failed)} check(s) failed: {', '.join(failed)}" if failed else "all checks passed")
    return "\n".join(lines)


def doctor_command(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of lines")] = False,
) -> None:
    """Check this machine: Python and the venv, Redis, bubblewrap, the model, port, tokens, disk, CUDA."""
    try:
        checks = run_checks(load_settings())
    except EditloopError as exc:  # settings that do not load: nothing else can be checked
        checks = [Check("settings", "fail", exc.message, "fix the setting it names (docs/configuration.md)")]
    ok = all(c.status != "fail" for c in checks)
    if as_json:
        typer.echo(json.dumps({"ok": ok, "checks": [asdict(c) for c in checks]}, indent=2))
    else:
        typer.echo(render(checks))
    if not ok:
        raise typer.Exit(1)
