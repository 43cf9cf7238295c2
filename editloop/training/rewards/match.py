"""Rewards for matching the text the user kept: exact, edit similarity, and whole lines.

Texts are compared after normalising line ends and trailing whitespace, which no user notices.
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

from rapidfuzz.distance import Levenshtein

from editloop.training.rewards.columns import column, completion_texts


def normalize(text: str) -> str:
    """CRLF → LF, no trailing spaces on lines, no trailing blank lines."""
    lines = text.replace("\r\n", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).rstrip("\n")


def similarity(candidate: str, reference: str) -> float:
    """Normalised Levenshtein similarity in [0, 1]; two empty texts are identical."""
    return float(Levenshtein.normalized_similarity(normalize(candidate), normalize(reference)))


def lines_matched(candidate: str, reference: str) -> float:
    """Leading lines equal to the kept text's, over the longer of the two line counts.

    What a user keeps line by line: a right first line then a wrong one is worth half of two.
    """
    got, want = normalize(candidate).split("\n"), normalize(reference).split("\n")
    same = 0
    for a, b in zip(got, want, strict=False):
        if a != b:
            break
        same += 1
    return same / max(len(got), len(want))


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
    return _against_kept(completions, kwargs, lambda c, r: float(normalize(c) == normalize(r)))


def edit_similarity(
    prompts: list[Any] | None = None,
    completions: list[Any] | None = None,
    completion_ids: list[list[int]] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """Normalised edit similarity to the kept text, in [0, 1]."""
    return _against_kept(completions, kwargs, similarity)


def line_match(
    prompts: list[Any] | None = None,
    completions: list[Any] | None = None,
    completion_ids: list[list[int]] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """The share of lines, from the first, that equal the kept text's (see :func:`lines_matched`)."""
    return _against_kept(completions, kwargs, lines_matched)
