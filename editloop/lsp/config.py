"""One LSP session's options: the process settings, overridden by what the editor sends.

Editors send ``initializationOptions`` at start and ``workspace/didChangeConfiguration`` later,
in camelCase (``serverUrl``, ``debounceMs``) or snake_case, either bare or under an ``editloop``
key. Unknown keys are ignored (editors send whole settings sections); a bad value is reported and
the previous configuration stays.

>>> from editloop.settings import load_settings
>>> config = LspConfig.from_settings(load_settings())
>>> config.update({"editloop": {"debounceMs": 0, "languages": ["python"]}}).debounce_ms
0
"""

import getpass
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from editloop.errors import BadRequestError
from editloop.settings import Settings


def _safe_user() -> str:
    try:
        return getpass.getuser() or "anonymous"
    except (KeyError, OSError):  # no passwd entry (containers)
        return "anonymous"


class LspConfig(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    server_url: str | None = Field(default=None, description="Complete through this editloop server.")
    token: str | None = Field(default=None, description="Its bearer token.")
    languages: list[str] = Field(default=[], description="Language ids to complete; empty: all.")
    debounce_ms: int = Field(default=150, ge=0, le=5000)
    candidates: int = Field(default=3, ge=1, le=16)
    retention_horizons_s: list[float] = Field(default=[30.0, 120.0, 600.0], min_length=1)
    edit_settle_s: float = Field(default=5.0, gt=0)
    telemetry: bool = True
    user: str = Field(default_factory=_safe_user, min_length=1, max_length=128)
    project: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:\-]+$", max_length=128)

    @classmethod
    def from_settings(cls, settings: Settings, server_url: str | None = None, token: str | None = None):
        return cls(
            server_url=server_url or settings.lsp_server_url,
            token=token or settings.lsp_token,
            languages=settings.lsp_languages,
            debounce_ms=settings.lsp_debounce_ms,
            candidates=settings.lsp_candidates,
            retention_horizons_s=settings.lsp_retention_horizons_s,
            edit_settle_s=settings.lsp_edit_settle_s,
            telemetry=settings.lsp_telemetry,
        )

    def update(self, options: Any) -> "LspConfig":
        """This configuration with the editor's options applied; raises BadRequestError naming the field."""
        if not isinstance(options, dict):
            return self
        section = options.get("editloop", options)
        if not isinstance(section, dict):
            return self
        merged = {**self.model_dump(), **_snake(section)}
        try:
            updated = LspConfig.model_validate(merged)
        except ValidationError as exc:
            fields = ", ".join(".".join(str(p) for p in err["loc"]) for err in exc.errors())
            raise BadRequestError(f"invalid editloop LSP options ({fields}): kept the previous ones") from exc
        return updated.model_copy(update={"retention_horizons_s": sorted(updated.retention_horizons_s)})

    def completes(self, language_id: str) -> bool:
        return not self.languages or language_id in self.languages


def _snake(section: dict) -> dict:
    names = {to_camel(name): name for name in LspConfig.model_fields}
    return {
        names.get(key, key): value for key, value in section.items() if names.get(key, key) in names.values()
    }


def project_name(root: str | None) -> str | None:
    """A project id from a workspace folder's name, in the characters event ids allow."""
    if not root:
        return None
    name = re.sub(r"[^A-Za-z0-9_.:\-]+", "-", root.rstrip("/").rsplit("/", 1)[-1]).strip("-")
    return name[:128] or None
