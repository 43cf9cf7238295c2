"""Build the engine from the settings: one recipe for the HTTP server and the in-process LSP.

>>> models = ModelManager(Registry(settings.models_dir), backend_factory(settings))  # doctest: +SKIP
>>> engine = build_engine(settings, models)  # doctest: +SKIP
"""

from editloop.completion.cache import CompletionCache
from editloop.completion.engine import CompletionEngine, EngineConfig
from editloop.models.backend import Backend
from editloop.models.manager import BackendFactory, ModelManager
from editloop.models.registry import ModelVersion, Registry
from editloop.settings import Settings


def backend_factory(settings: Settings) -> BackendFactory:
    """How a registry version becomes a running backend, per the settings."""

    def load(version: ModelVersion) -> Backend:
        if settings.backend == "remote":
            from editloop.models.remote import RemoteBackend

            return RemoteBackend(
                settings.remote_url or "",
                settings.remote_model,
                version.tokenizer_path(),
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


def build_models(settings: Settings) -> ModelManager:
    """The hot-swap owner over the settings' registry (not started: call ``start(poll_s)``)."""
    return ModelManager(Registry(settings.models_dir), backend_factory(settings))


def build_engine(settings: Settings, models: ModelManager) -> CompletionEngine:
    cache = CompletionCache(settings.cache_entries, settings.cache_ttl_s) if settings.cache_entries else None
    config = EngineConfig(
        abstain_threshold=settings.abstain_threshold,
        default_max_tokens=settings.default_max_tokens,
        max_candidates=settings.max_candidates,
    )
    return CompletionEngine(models, config, cache)
