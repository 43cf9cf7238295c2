"""The serving engine over one model version, for measuring it rather than serving it.

Evals, the replay's in-process server and the gate load a version exactly as the server does —
backend, rankers and thresholds as one :class:`~editloop.completion.served.ServedModel` — so what
they measure is what users get.

>>> with open_engine(load_settings(), "current") as engine:  # doctest: +SKIP
...     report = evaluate_fim(engine, tasks)
"""

from collections.abc import Iterator
from contextlib import contextmanager

from editloop.completion.builder import served_factory
from editloop.completion.engine import CompletionEngine, EngineConfig
from editloop.completion.served import ServedModel, load_served
from editloop.completion.types import CompletionResult
from editloop.models.backend import Backend
from editloop.models.registry import Registry
from editloop.settings import Settings


class OneModel:
    """The engine's model source for a single served model: no registry polling, no hot-swap."""

    def __init__(self, served: ServedModel) -> None:
        self.served = served

    @property
    def version(self) -> str:
        return self.served.version

    @contextmanager
    def lease(self, key: str | None = None) -> Iterator[ServedModel]:
        yield self.served


def engine_for(model: ServedModel | Backend, settings: Settings | None = None) -> CompletionEngine:
    """An engine that always answers: benchmarks score every task, so nothing abstains or is cached.

    A bare backend (one outside the registry, e.g. a candidate being gated) ranks by log-prob.
    """
    served = model if isinstance(model, ServedModel) else load_served(None, model)
    config = EngineConfig(
        abstain_threshold=0.0,
        default_max_tokens=settings.default_max_tokens if settings else EngineConfig.default_max_tokens,
        max_candidates=settings.max_candidates if settings else EngineConfig.max_candidates,
        candidate_stretch=settings.candidate_stretch if settings else EngineConfig.candidate_stretch,
    )
    return CompletionEngine(OneModel(served), config, cache=None)


@contextmanager
def open_engine(settings: Settings, version: str = "current") -> Iterator[CompletionEngine]:
    """The verified ``version`` of the settings' registry, loaded as the server would load it."""
    model = Registry(settings.models_dir).verify(version)
    served = served_factory(settings)(model)
    try:
        yield engine_for(served, settings)
    finally:
        served.close()


def top_text(result: CompletionResult) -> str:
    """The text a benchmark scores: the top choice, else the best candidate that survived the filters.

    An abstention is a serving decision; a benchmark still scores what the model would have said.
    """
    if result.choices:
        return result.choices[0].text
    kept = [c for c in result.candidates if c.dropped is None]
    return max(kept, key=lambda c: c.score or 0.0).text if kept else ""
