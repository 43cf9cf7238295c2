"""``editloop models``: list, inspect, import, activate and roll back model versions.

Errors are not caught here: the top-level CLI prints any ``EditloopError`` as one line.

    editloop models import ./qwen2.5-coder-0.5b-q8_0.gguf --hf ./Qwen2.5-Coder-0.5B
    editloop models show current --json
    editloop models rollback
"""

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from editloop.models.registry import ModelVersion, Registry
from editloop.settings import load_settings

app = typer.Typer(help="Model versions: list, show, import, activate, roll back.", no_args_is_help=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _registry() -> Registry:
    return Registry(load_settings().models_dir)


def _current_name(registry: Registry) -> str | None:
    current = registry.current()
    return current.name if current else None


def _describe(version: ModelVersion, current: str | None) -> dict[str, Any]:
    """The JSON shape of ``show``: absolute paths first, then the manifest as stored."""
    return {
        "version": version.name,
        "current": version.name == current,
        "path": str(version.path.resolve()),
        "gguf": {quant: str((version.path / rel).resolve()) for quant, rel in version.manifest.gguf.items()},
        "hf_dir": _absolute(version.hf_path()),
        "tokenizer": _absolute(version.tokenizer_path()),
        "manifest": version.manifest.model_dump(mode="json"),
    }


def _absolute(path: Path | None) -> str | None:
    return str(path.resolve()) if path else None


@app.command("list")
def list_versions(as_json: JsonFlag = False) -> None:
    """List published versions, oldest first; * marks the current one."""
    registry = _registry()
    current = _current_name(registry)
    versions = registry.versions()
    if as_json:
        print(json.dumps([_describe(v, current) for v in versions], indent=2))
        return
    table = Table("", "version", "kind", "created (UTC)", "parent", "arch", "fim", "gguf")
    for version in versions:
        table.add_row(*_summary(version, current))
    Console().print(table if versions else "no model versions yet; run `editloop models import GGUF`")


def _summary(version: ModelVersion, current: str | None) -> list[str]:
    m = version.manifest
    created = m.created_at[:16].replace("T", " ")
    mark = "*" if version.name == current else ""
    return [
        mark,
        version.name,
        m.kind if not m.synthetic or m.kind == "synthetic" else f"{m.kind} (synthetic)",
        created,
        m.parent or "",
        m.arch or "",
        f"{m.fim.family} ({'SPM' if m.fim.spm else 'PSM'})",
        ", ".join(m.gguf),
    ]


@app.command()
def show(
    version: Annotated[str, typer.Argument(help="A version name such as v3, or 'current'.")],
    as_json: JsonFlag = False,
) -> None:
    """Show one version's files, FIM template, metrics and checks."""
    registry = _registry()
    described = _describe(registry.get(version), _current_name(registry))
    if as_json:
        print(json.dumps(described, indent=2))
        return
    table = Table("field", "value", title=f"model version {described['version']}", show_header=False)
    for key in ("current", "path", "gguf", "hf_dir", "tokenizer"):
        table.add_row(key, _text(described[key]))
    manifest = described["manifest"]
    for key in (
        "kind",
        "synthetic",
        "created_at",
        "parent",
        "arch",
        "fim",
        "training_data",
        "metrics",
        "checks",
    ):
        table.add_row(key, _text(manifest[key]))
    table.add_row("files", f"{len(manifest['files'])} (sha256 in manifest.json)")
    Console().print(table)


def _text(value: object) -> str:
    if isinstance(value, dict):
        return "\n".join(f"{k}: {v}" for k, v in value.items()) or "-"
    return "-" if value is None else str(value)


@app.command()
def verify(version: Annotated[str, typer.Argument(help="A version name, or 'current'.")]) -> None:
    """Re-hash a version's files against its manifest."""
    checked = _registry().verify(version)
    Console().print(f"{checked.name}: all {len(checked.manifest.files)} files match the manifest")


@app.command()
def activate(version: Annotated[str, typer.Argument(help="The version to serve, such as v3.")]) -> None:
    """Verify a version and make it current; running servers pick it up on their next swap."""
    registry = _registry()
    before = _current_name(registry)
    activated = registry.activate(version)
    Console().print(f"current model: {activated.name}" + (f" (was {before})" if before else ""))


@app.command()
def rollback() -> None:
    """Make the previously current version current again."""
    Console().print(f"current model: {_registry().rollback().name} (rolled back)")


@app.command("import")
def import_(
    gguf: Annotated[Path, typer.Argument(help="A GGUF file of a code model with FIM tokens.")],
    hf: Annotated[
        Path | None,
        typer.Option("--hf", help="Its Hugging Face directory (config.json, weights, tokenizer)."),
    ] = None,
    activate: Annotated[
        bool | None,
        typer.Option(
            "--activate/--no-activate", help="Make it current (default: only when no version is current yet)."
        ),
    ] = None,
) -> None:
    """Publish an existing GGUF (optionally with its HF weights, needed to retrain) as a new version."""
    registry = _registry()
    version = registry.import_gguf(gguf, hf_dir=hf)
    message = f"imported {gguf.name} as {version.name} ({version.manifest.fim.family} FIM tokens)"
    if activate or (activate is None and registry.current() is None):
        registry.activate(version.name)
        message += "; it is now current"
    Console().print(message)
