"""Reading TRL's reward-function keywords: every dataset column arrives as a list, one per completion.

>>> column({"reference": ["a", "b"]}, "reference", 2)
['a', 'b']
>>> column({}, "tests", 2)
[None, None]
"""

from collections.abc import Mapping
from typing import Any

from editloop.completion.syntax import canonical_language, language_for_path


def column(kwargs: Mapping[str, Any], name: str, n: int) -> list[Any]:
    """The column ``name`` for ``n`` completions; all None when the dataset lacks it."""
    values = kwargs.get(name)
    if values is None:
        return [None] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"reward column {name!r} has {len(values)} values for {n} completions")
    return values


def languages(kwargs: Mapping[str, Any], n: int) -> list[str]:
    """The canonical language of each row: the ``language`` column, else the ``filepath``'s extension."""
    named, paths = column(kwargs, "language", n), column(kwargs, "filepath", n)
    found = []
    for language, path in zip(named, paths, strict=True):
        guess = language or (language_for_path(path) if path else None) or ""
        found.append(canonical_language(guess))
    return found


def completion_texts(completions: list[Any]) -> list[str]:
    """Plain completions are strings; conversational ones (not used here) are message lists."""
    return [c if isinstance(c, str) else str(c[-1]["content"]) for c in completions]
