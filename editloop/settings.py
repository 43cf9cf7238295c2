"""One settings object per process: ``EDITLOOP_*`` environment over an optional TOML file.

The TOML file is ``$EDITLOOP_CONFIG`` when set, else ``./editloop.toml`` when present.
Environment variables win over the file. Keys are the field names below, e.g.::

    home = "/srv/editloop"
    log_level = "debug"
"""

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from editloop.errors import SettingsError

CONFIG_ENV = "EDITLOOP_CONFIG"


def _default_home() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "editloop"


def _config_file() -> Path | None:
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise SettingsError(
                f"{CONFIG_ENV}={explicit} does not exist; point it at a TOML file or unset it"
            )
        return path
    local = Path("editloop.toml")
    return local if local.is_file() else None


class Settings(BaseSettings):
    """Everything a process reads from its environment, validated once at start."""

    model_config = SettingsConfigDict(env_prefix="EDITLOOP_", extra="forbid")

    home: Path = Field(
        default_factory=_default_home,
        description="Data directory: model registry, feedback spool, training runs.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Logging verbosity."
    )
    torch_threads: int = Field(default=0, ge=0, description="CPU threads for torch; 0 uses every core.")

    # Serving
    host: str = Field(default="127.0.0.1", description="Address `editloop serve` binds.")
    port: int = Field(default=8765, ge=1, le=65535, description="Port `editloop serve` binds.")
    api_tokens: list[str] = Field(
        default=[], description="Bearer tokens of users; empty: no auth, loopback only."
    )
    admin_token: str | None = Field(default=None, description="Bearer token for /admin routes.")
    max_body_bytes: int = Field(default=2_000_000, ge=1024, description="Larger request bodies get 413.")
    max_pending: int = Field(default=16, ge=1, description="Completions queued or running; beyond that, 503.")
    request_timeout_s: float = Field(default=10.0, gt=0, description="Hard limit on one completion request.")
    model_quant: str | None = Field(default=None, description="GGUF quant to serve; default q8_0, else f16.")
    model_threads: int = Field(default=0, ge=0, description="llama.cpp threads; 0 uses every core.")
    backend: Literal["llama", "remote"] = Field(
        default="llama", description="Run the model in-process or remote."
    )
    remote_url: str | None = Field(default=None, description="OpenAI-compatible server for backend=remote.")
    remote_model: str = Field(default="default", description="Model name sent to the remote server.")
    remote_api_key: str | None = Field(default=None, description="Bearer key for the remote server.")
    registry_poll_s: float = Field(
        default=2.0, gt=0, description="How often the server looks for a new version."
    )

    # Completion
    abstain_threshold: float = Field(default=0.05, ge=0, le=1, description="Abstain below this best score.")
    default_max_tokens: int = Field(
        default=64, ge=1, le=1024, description="Decode budget when a client sets none."
    )
    max_candidates: int = Field(
        default=8, ge=1, le=16, description="Most candidates one request may ask for."
    )
    cache_entries: int = Field(default=100, ge=0, description="LRU completion cache size (0 disables).")
    cache_ttl_s: float = Field(default=300.0, gt=0, description="Completion cache entry lifetime.")

    @field_validator("home")
    @classmethod
    def _home_usable(cls, home: Path) -> Path:
        home = home.expanduser()
        if home.exists() and not home.is_dir():
            raise ValueError(f"{home} exists and is not a directory")
        return home

    @model_validator(mode="after")
    def _remote_needs_url(self) -> "Settings":
        if self.backend == "remote" and not self.remote_url:
            raise ValueError("backend is 'remote' but remote_url is unset: set EDITLOOP_REMOTE_URL")
        return self

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _config_file()
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        if toml_file is not None:
            sources += (TomlConfigSettingsSource(settings_cls, toml_file=toml_file),)
        return sources


def load_settings(**overrides: object) -> Settings:
    """Build the settings or raise one :class:`SettingsError` that names each bad field and its fix."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(_describe(err) for err in exc.errors())
        raise SettingsError(f"invalid settings: {problems}") from exc
    except ValueError as exc:  # malformed TOML surfaces as a plain ValueError
        raise SettingsError(f"cannot read settings: {exc}") from exc


def _describe(err: dict) -> str:
    field = ".".join(str(part) for part in err["loc"])
    if not field:  # a rule across fields: its message names the fix
        return str(err["msg"]).removeprefix("Value error, ")
    hint = f"set EDITLOOP_{field.upper()} or `{field} = ...` in editloop.toml"
    if err["type"] == "extra_forbidden":
        return f"unknown setting {field!r} (remove it; known: {', '.join(Settings.model_fields)})"
    return f"{field}: {err['msg']} ({hint})"
