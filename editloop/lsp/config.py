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

import copy
import getpass
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from editloop.errors import BadRequestError
from editloop.settings import Settings, positive_horizons

# The options that are process settings too (`lsp_<name>`); user and project are per session only.
SETTINGS = (
    "server_url",
    "token",
    "languages",
    "debounce_ms",
    "candidates",
    "retention_horizons_s",
    "edit_settle_s",
    "telemetry",
    "context",
)
# `lsp_<name>` settings of the process alone, never an editor option: a client must not lift the
# bound on the frames it sends.
PROCESS_ONLY = ("max_message_bytes",)


def _safe_user() -> str:
    try:
        return getpass.getuser() or "anonymous"
    except (KeyError, OSError):  # no passwd entry (containers)
        return "anonymous"


def _setting(name: str) -> Any:
    """The ``lsp_*`` setting's field (default, bounds, description): one definition for both."""
    return copy.copy(Settings.model_fields[name])


class LspConfig(BaseModel):
    """The process's ``lsp_*`` settings, overridden per session by the editor's options."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    server_url: str | None = _setting("lsp_server_url")
    token: str | None = _setting("lsp_token")
    languages: list[str] = _setting("lsp_languages")
    debounce_ms: int = _setting("lsp_debounce_ms")
    candidates: int = _setting("lsp_candidates")
    retention_horizons_s: list[float] = _setting("lsp_retention_horizons_s")
    edit_settle_s: float = _setting("lsp_edit_settle_s")
    telemetry: bool = _setting("lsp_telemetry")
    context: bool = _setting("lsp_context")  # read at initialize: the workspace folders are indexed then
    user: str = Field(default_factory=_safe_user, min_length=1, max_length=128)
    project: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:\-]+$", max_length=128)

    _horizons = field_validator("retention_horizons_s")(positive_horizons)

    @classmethod
    def from_settings(cls, settings: Settings, server_url: str | None = None, token: str | None = None):
        values = {name: getattr(settings, f"lsp_{name}") for name in SETTINGS}
        return cls(
            **values | {"server_url": server_url or values["server_url"], "token": token or values["token"]}
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
        return updated

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
