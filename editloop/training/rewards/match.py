"""Rewards for matching the text the user kept: exact, edit similarity, and whole lines.

Texts are compared by :mod:`editloop.metrics`, the measures the gate and the evals use too.
A row without a kept text (``reference`` None) gets None: there is nothing to match.

>>> edit_similarity(completions=["a + b"], reference=["a + c"])
[0.8]
>>> exact_match(completions=["x = 1  \\n"], reference=["x = 1"])
[1.0]
>>> line_match(completions=["a\\nb\\nz"], reference=["a\\nb\\nc"])
[0.6666666666666666]
"""

from collections.abc import Callable
from typing import Any

from editloop import metrics
from editloop.training.rewards.columns import column, completion_texts


def _against_kept(
    completions: list[Any] | None, kwargs: dict[str, Any], score: Callable[[str, str], float]
) -> list[float | None]:
    """``score(completion, kept text)`` per row; None where nothing was kept."""
    texts = completion_texts(completions or [])
    refs = column(kwargs, "reference", len(texts))
    return [None if r is None else score(c, r) for c, r in zip(texts, refs, strict=True)]


def exact_match(
    prompts: list[Any] | None = None,
    completions: list[Any] | None = None,
    completion_ids: list[list[int]] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 when the completion is the kept text, else 0.0."""
    return _against_kept(completions, kwargs, lambda c, r: float(metrics.exact_match(c, r)))


def edit_similarity(
    prompts: list[Any] | None = None,
    completions: list[Any] | None = None,
    completion_ids: list[list[int]] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """Normalised edit similarity to the kept text, in [0, 1]."""
    return _against_kept(completions, kwargs, metrics.edit_similarity)


def line_match(
    prompts: list[Any] | None = None,
    completions: list[Any] | None = None,
    completion_ids: list[list[int]] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """The share of lines, from the first, that equal the kept text's (:func:`metrics.line_match`)."""
    return _against_kept(completions, kwargs, metrics.line_match)
