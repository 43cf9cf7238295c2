"""Build the engine from the settings: one recipe for the HTTP server, the in-process LSP and evals.

>>> models = build_models(settings)  # doctest: +SKIP
>>> engine = build_engine(settings, models)  # doctest: +SKIP
"""

from collections.abc import Callable

from editloop.completion.cache import CompletionCache
from editloop.completion.context.workspace import ContextLimits, ContextService
from editloop.completion.engine import CompletionEngine, EngineConfig
from editloop.completion.served import ServedModel, load_served, validate_served
from editloop.errors import ModelError
from editloop.models.backend import Backend
from editloop.models.manager import ModelManager
from editloop.models.registry import ModelVersion, Registry
from editloop.settings import Settings


def backend_factory(settings: Settings) -> Callable[[ModelVersion], Backend]:
    """How a registry version becomes a running backend, per the settings."""

    def load(version: ModelVersion) -> Backend:
        if settings.backend == "remote":
            from editloop.models.remote import RemoteBackend

            tokenizer = version.tokenizer_path()
            if tokenizer is None:  # the server builds FIM prompts itself: it needs the tokens
                raise ModelError(f"{version.name} has no tokenizer file: a remote backend needs one")
            return RemoteBackend(
                settings.remote_url or "",
                settings.remote_model,
                tokenizer,
                version.manifest.fim,
                version.name,
                n_ctx=_context_length(version),
                api_key=settings.remote_api_key,
            )
        from editloop.models.llama import LlamaBackend

        return LlamaBackend.from_version(
            version,
            quant=settings.model_quant,
            n_ctx=_serving_context(settings, version),
            n_threads=settings.model_threads or None,
            max_candidates=settings.max_candidates,
            cache_documents=settings.model_cache_documents,
            cache_reuse=settings.model_cache_reuse,
            draft_max=settings.model_draft_max,
        )

    return load


def _serving_context(settings: Settings, version: ModelVersion) -> int:
    """``model_context`` where the model was trained on more; 0 (the trained context) otherwise."""
    if not settings.model_context:
        return 0
    try:
        trained = _context_length(version)
    except KeyError:  # a GGUF without the key: llama.cpp decides
        return 0
    return settings.model_context if settings.model_context < trained else 0


def _context_length(version: ModelVersion) -> int:
    import gguf

    reader = gguf.GGUFReader(version.gguf_path())
    arch = version.manifest.arch or "llama"
    field = reader.fields[f"{arch}.context_length"]
    return int(field.parts[field.data[0]][0])


def served_factory(settings: Settings) -> Callable[[ModelVersion], ServedModel]:
    """How a registry version becomes what serves: its backend with its rankers and thresholds."""
    load_backend = backend_factory(settings)

    def load(version: ModelVersion) -> ServedModel:
        backend = load_backend(version)
        try:
            return load_served(version, backend, settings.ranker, settings.abstain_threshold)
        except BaseException:
            backend.close()
            raise

    return load


def build_models(settings: Settings) -> ModelManager[ServedModel]:
    """The hot-swap owner over the settings' registry (not started: call ``start(poll_s)``)."""
    return ModelManager(Registry(settings.models_dir), served_factory(settings), validate_served)


def build_engine(settings: Settings, models: ModelManager[ServedModel]) -> CompletionEngine:
    cache: CompletionCache | None = (
        CompletionCache(settings.cache_entries, settings.cache_ttl_s) if settings.cache_entries else None
    )
    config = EngineConfig(
        default_max_tokens=settings.default_max_tokens,
        max_candidates=settings.max_candidates,
        candidate_stretch=settings.candidate_stretch,
    )
    return CompletionEngine(models, config, cache, build_context(settings))


def context_limits(settings: Settings) -> ContextLimits:
    return ContextLimits(
        max_files=settings.context_max_files,
        max_file_bytes=settings.context_max_file_kb * 1024,
        max_workspaces=settings.context_workspaces,
        refresh_s=settings.context_refresh_s,
        build_wait_s=settings.context_build_wait_s,
    )


def build_context(settings: Settings) -> ContextService | None:
    """Context from the projects under ``context_roots``; None when the setting names none."""
    if not settings.context_roots:
        return None
    return ContextService(settings.context_roots, context_limits(settings))
