"""One settings object per process: ``EDITLOOP_*`` environment over an optional TOML file.

The TOML file is ``$EDITLOOP_CONFIG`` when set, else ``./editloop.toml`` when present.
Environment variables win over the file. Keys are the field names below, e.g.::

    home = "/srv/editloop"
    log_level = "debug"
"""

import ipaddress
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from editloop.errors import SettingsError

CONFIG_ENV = "EDITLOOP_CONFIG"


def _default_home() -> Path:
    """``$XDG_DATA_HOME/editloop``, else ``~/.local/share/editloop``."""
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
    access_log: bool = Field(
        default=False,
        description="Log a line per HTTP request (uvicorn's access log); off: it cost ~1 ms a completion.",
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
    inline_completion_ms: float = Field(
        default=20.0,
        ge=0,
        description="A completion runs on the server's event loop, without handing it to a worker thread, "
        "while it is the only one pending and recent ones took less than this (ms); 0: always on a worker.",
    )
    model_quant: str | None = Field(default=None, description="GGUF quant to serve; default q8_0, else f16.")
    model_threads: int = Field(default=0, ge=0, description="llama.cpp threads; 0 uses every core.")
    model_context: int = Field(
        default=2048,
        ge=0,
        description="Tokens of prompt + completion the in-process model runs with (its trained context if "
        "smaller; 0: the trained context). Prompt evaluation dominates latency on a CPU.",
    )
    model_cache_documents: int = Field(
        default=4,
        ge=0,
        description="Documents whose prompt KV cache the in-process model keeps (one slot each).",
    )
    model_cache_reuse: int = Field(
        default=16,
        ge=0,
        description="Reuse cached runs of at least this many tokens by a KV shift (llama.cpp's "
        "--cache-reuse; approximate, bounded); 0 reuses only the exact common prefix.",
    )
    model_draft_max: int = Field(
        default=8,
        ge=0,
        le=64,
        description="Tokens drafted per step by prompt lookup (exact); 0 turns it off.",
    )
    backend: Literal["llama", "remote"] = Field(
        default="llama", description="Run the model in-process or remote."
    )
    remote_url: str | None = Field(default=None, description="OpenAI-compatible server for backend=remote.")
    remote_model: str = Field(default="default", description="Model name sent to the remote server.")
    remote_api_key: str | None = Field(default=None, description="Bearer key for the remote server.")
    registry_poll_s: float = Field(
        default=2.0, gt=0, description="How often the server looks for a new version."
    )
    starter_dir: Path | None = Field(
        default=None,
        description="Folder `editloop run` imports when no version is active (written by `editloop models "
        "ship`); unset: the small starter shipped with editloop, else one built here.",
    )

    # Completion
    abstain_threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Abstain below this best score; unset: the threshold the version's cycle calibrated "
        "(0.05 for a version without one).",
    )
    ranker: Literal["auto", "value", "logprob"] = Field(
        default="auto",
        description="How candidates are ranked: auto uses the version's value model when it has one.",
    )
    default_max_tokens: int = Field(
        default=64, ge=1, le=1024, description="Decode budget when a client sets none."
    )
    max_candidates: int = Field(
        default=8, ge=1, le=16, description="Most candidates one request may ask for."
    )
    candidate_stretch: float = Field(
        default=1.0,
        ge=0,
        le=16,
        description="Sampled candidates stop at this many times the greedy candidate's length in decode "
        "rounds, a run it copies from the context counting as one (at least 4 tokens): a request waits "
        "for its longest candidate. 0: only the token budget bounds them.",
    )
    cache_entries: int = Field(default=100, ge=0, description="LRU completion cache size (0 disables).")
    cache_ttl_s: float = Field(default=300.0, gt=0, description="Completion cache entry lifetime.")

    # Context from the codebase (opt-in: the server reads only projects inside these roots)
    context_roots: list[Path] = Field(
        default=[],
        description="Directories whose projects a request's project_root may name (JSON list); "
        "empty: the server reads no project's files.",
    )
    context_max_files: int = Field(default=20_000, ge=1, description="Source files indexed per project.")
    context_max_file_kb: int = Field(default=1024, ge=1, description="Larger files are not indexed.")
    context_workspaces: int = Field(default=4, ge=1, description="Project indexes kept in memory.")
    context_refresh_s: float = Field(
        default=30.0, ge=0, description="How often a project's index looks for changed files."
    )
    context_build_wait_s: float = Field(
        default=2.0,
        ge=0,
        description="How long a project's first request waits for its index (built on in the background).",
    )

    # Feedback log (Redis streams)
    redis_url: str | None = Field(
        default=None,
        description="External Redis, e.g. rediss://user:password@host:6380/0; unset: editloop runs its own.",
    )
    redis_ca_file: Path | None = Field(default=None, description="CA bundle for a rediss:// server.")
    redis_server_bin: str = Field(default="redis-server", description="Binary of the embedded Redis.")
    feedback_enabled: bool = Field(default=True, description="Record completions and accept feedback.")
    feedback_dedupe_ttl_s: int = Field(
        default=7 * 86400, ge=60, description="How long an event_id is remembered to drop retries."
    )
    feedback_max_deliveries: int = Field(
        default=5,
        ge=1,
        description="Deliveries to a consumer before an event goes to the dead-letter stream.",
    )
    feedback_retention_days: float = Field(
        default=90.0, gt=0, description="Trim events older than this (never ones a consumer has not acked)."
    )
    feedback_opt_out_users: list[str] = Field(
        default=[], description="Users whose events are dropped (counted, never stored)."
    )
    feedback_code_free: bool = Field(
        default=False, description="Store hashes and metrics only: no prefix, suffix or completion text."
    )
    feedback_private_paths: bool = Field(
        default=False, description="Store a hash of each file path instead of the path."
    )
    feedback_default_project: str = Field(
        default="default", pattern=r"^[A-Za-z0-9_.:\-]+$", description="Project of events that name none."
    )
    dashboard_bucket_s: int = Field(
        default=300,
        ge=1,
        le=86400,
        description="Finest time bucket of /dashboard charts (seconds); smaller costs server memory.",
    )

    # Trainer (retrain cycles)
    trainer: bool = Field(
        default=True, description="Run the trainer beside `editloop serve` (a lower-priority process)."
    )
    retrain_min_events: int = Field(
        default=500, ge=0, description="Start a cycle once this many new feedback events arrived (0: never)."
    )
    retrain_every_min: float = Field(
        default=0.0, ge=0, description="Start a cycle this often (0: no schedule)."
    )
    retrain_min_samples: int = Field(
        default=20, ge=1, description="Skip a cycle with fewer training samples than this."
    )
    # 80 was enough for the starter before its line-completion phase; after it, the email demo's
    # gain at 80 steps (+0.015 edit similarity) was within noise, at 160 it was +0.071. On the
    # 128-wide starter 160 steps were refused at both rates below; 320 at 3e-3 gain +0.096.
    retrain_sft_steps: int = Field(default=320, ge=1, description="SFT optimizer steps per cycle.")
    retrain_grpo_steps: int = Field(default=5, ge=0, description="GRPO optimizer steps per cycle (0: skip).")
    retrain_projects: list[str] = Field(
        default=[], description="Feedback projects the trainer learns from (JSON list); empty: all of them."
    )
    # On the SPM starter the email demo at 1.5 (3e-3) was refused for stdlib single-line 0.217 ->
    # 0.195, and at 1e-3 for multi-line 0.168 -> 0.145; at 3.0 it publishes with both within 0.005
    # and the same feedback gain (+0.056 edit similarity).
    retrain_general_mix: float = Field(
        default=3.0, ge=0, le=4, description="General-code rows mixed into SFT per feedback row (forgetting)."
    )
    # The rate follows the starter. On the 192-wide Muon starter 3e-3 learned less and forgot more
    # than 1e-3 (demo gain +0.021 within noise, stdlib multi-line 0.136 -> 0.108). On today's
    # 128-wide one, 160 steps gained nothing at 1e-3 (-0.000, interval -0.026..+0.030) and +0.025
    # (within noise) at 3e-3; 320 steps at 3e-3 gain +0.096 (+0.055..+0.137) with stdlib single-
    # and multi-line within tolerance (-0.015, -0.010).
    retrain_learning_rate: float = Field(
        default=3e-3, gt=0, description="SFT learning rate of the LoRA adapter."
    )
    retrain_device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="Where cycles train.")
    retrain_processes: int = Field(
        default=1,
        ge=0,
        description="Processes each SFT, GRPO and cold-start stage trains in (DDP under `accelerate launch`, "
        "gloo on CPUs); 0: one per CUDA GPU.",
    )
    retrain_accelerate_config: Path | None = Field(
        default=None,
        description="accelerate config for retrain_processes > 1 on multi-GPU boxes (DeepSpeed ZeRO, FSDP: "
        "docker/accelerate-*.yaml); unset: plain DDP.",
    )
    retrain_general_samples: int = Field(
        default=60, ge=0, description="Held-out stdlib lines the gate checks for forgetting (0: skip)."
    )
    retrain_humaneval_tasks: int = Field(
        default=0, ge=0, description="HumanEval single-line tasks the gate runs in the sandbox (0: skip)."
    )
    retrain_general_tolerance: float = Field(
        default=0.02, ge=0, le=1, description="Largest general-code drop the gate lets through."
    )
    retrain_checkpoints: int = Field(
        default=4,
        ge=1,
        le=20,
        description="Points along SFT the gate scores (every 1/N of its steps); the best passing one wins.",
    )
    retrain_blends: list[float] = Field(
        default=[0.5],
        description="Also score the last point with its LoRA update scaled by each of these (0..1).",
    )

    # Canary: a version that passed the gate serves a share of requests until live feedback decides
    canary_share: float = Field(
        default=0.2,
        ge=0,
        lt=1,
        description="Share of (user, document) pairs a new version serves first; 0: promote at once.",
    )
    canary_min_shown: int = Field(
        default=200, ge=1, description="Suggestions each arm must show before the canary is decided."
    )
    canary_margin: float = Field(
        default=0.02, gt=0, lt=1, description="Full-accept rate a canary may lose and still be promoted."
    )
    canary_alpha: float = Field(default=0.05, gt=0, lt=0.5, description="Error rate of each sequential test.")
    canary_max_minutes: float = Field(
        default=1440.0, gt=0, description="Decide an undecided canary on its estimate after this long."
    )
    canary_check_s: float = Field(default=30.0, gt=0, description="How often the trainer checks the canary.")

    # LSP server (`editloop lsp`); an editor's initializationOptions override these per session
    lsp_server_url: str | None = Field(
        default=None, description="A running `editloop serve` to complete from; unset: an in-process model."
    )
    lsp_token: str | None = Field(default=None, description="Bearer token for lsp_server_url.")
    lsp_languages: list[str] = Field(
        default=[], description="LSP language ids to complete (JSON list); empty: every language."
    )
    lsp_debounce_ms: int = Field(
        default=150, ge=0, le=5000, description="Wait this long after typing before an automatic completion."
    )
    lsp_candidates: int = Field(
        default=3, ge=1, le=16, description="Candidates per LSP completion; an automatic one shows the best."
    )
    lsp_retention_horizons_s: list[float] = Field(
        default=[30.0, 120.0, 600.0],
        min_length=1,
        description="Seconds after an accept at which the kept text is reported (`retained` events).",
    )
    lsp_edit_settle_s: float = Field(
        default=5.0,
        gt=0,
        description="Quiet seconds before what a user wrote in place of a completion counts.",
    )
    lsp_telemetry: bool = Field(default=True, description="Send the editor's feedback events; false: none.")
    lsp_context: bool = Field(
        default=True,
        description="Gather context (recent edits, definitions, similar code) from the workspace folders.",
    )
    lsp_max_message_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="Largest LSP message `editloop lsp` reads (a bigger one is skipped, with a log line).",
    )

    @field_validator("lsp_retention_horizons_s")
    @classmethod
    def _positive_horizons(cls, horizons: list[float]) -> list[float]:
        return positive_horizons(horizons)

    @field_validator("retrain_blends")
    @classmethod
    def _blends_are_shares(cls, blends: list[float]) -> list[float]:
        if any(not 0 < b < 1 for b in blends):
            raise ValueError("every blend is a share of the LoRA update, between 0 and 1 (exclusive)")
        return blends

    @field_validator("api_tokens")
    @classmethod
    def _no_blank_tokens(cls, tokens: list[str]) -> list[str]:
        # An unset shell variable in EDITLOOP_API_TOKENS='["$TOKEN"]' arrives as "": were it kept,
        # an empty X-Api-Key would pass and the server would think itself protected.
        if any(not t.strip() for t in tokens):
            raise ValueError(
                "a token is empty or blank (an unset shell variable?): remove it or give it a value"
            )
        return tokens

    @field_validator("admin_token", "lsp_token")
    @classmethod
    def _no_blank_token(cls, token: str | None) -> str | None:
        if token is not None and not token.strip():
            raise ValueError(
                "the token is empty or blank (an unset shell variable?): unset it or give it a value"
            )
        return token

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

    @property
    def redis_dir(self) -> Path:
        return self.home / "redis"

    @property
    def feedback_dir(self) -> Path:
        return self.home / "feedback"

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


def positive_horizons(horizons: list[float]) -> list[float]:
    """Retention horizons, each > 0 seconds, in order (a setting and an editor option alike)."""
    if any(h <= 0 for h in horizons):
        raise ValueError("every retention horizon must be > 0 seconds")
    return sorted(horizons)


def load_settings(**overrides: Any) -> Settings:
    """Build the settings or raise one :class:`SettingsError` that names each bad field and its fix."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(_describe(err) for err in exc.errors())
        raise SettingsError(f"invalid settings: {problems}") from exc
    except ValueError as exc:  # malformed TOML surfaces as a plain ValueError
        raise SettingsError(f"cannot read settings: {exc}") from exc


def _describe(err: ErrorDetails) -> str:
    field = ".".join(str(part) for part in err["loc"])
    if not field:  # a rule across fields: its message names the fix
        return str(err["msg"]).removeprefix("Value error, ")
    hint = f"set EDITLOOP_{field.upper()} or `{field} = ...` in editloop.toml"
    if err["type"] == "extra_forbidden":
        return f"unknown setting {field!r} (remove it; known: {', '.join(Settings.model_fields)})"
    return f"{field}: {err['msg']} ({hint})"


def is_loopback(host: str) -> bool:
    """Whether ``host`` reaches only this machine: the one bind that needs no tokens."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
