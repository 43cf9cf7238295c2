"""Does the file still parse with the completion inserted? tree-sitter for every language, plus
``compile()`` for Python, which also catches what a grammar allows and the compiler does not
(``return`` outside a function, a misplaced ``nonlocal``). Compiling runs none of the code.

1.0: no new parse error (and, for Python, the file compiles); 0.0: the completion breaks it;
None: no grammar for the language. A Python file that did not compile with the kept text either
(a fragment, a file mid-edit) is judged by tree-sitter alone.

>>> SyntaxValidity()(completions=["x + 1", "x +"], prefix=["y = "] * 2, suffix=["\\n"] * 2,
...                  language=["python"] * 2, reference=["x + 1"] * 2)
[1.0, 0.0]
"""

from typing import Any

from editloop.completion.syntax import SyntaxChecker
from editloop.training.rewards.columns import column, completion_texts, languages


def python_compiles(source: str, filename: str = "<completion>") -> bool:
    """Whether CPython compiles ``source``; nothing in it runs."""
    try:
        compile(source, filename, "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return False
    return True


class SyntaxValidity:
    """A picklable reward; its tree-sitter parsers are built on first use in each process."""

    def __init__(self) -> None:
        self.__name__ = "syntax"
        self._checker: SyntaxChecker | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"__name__": self.__name__}  # parsers and locks do not pickle; rebuilt lazily

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__name__ = state["__name__"]
        self._checker = None

    def __call__(
        self,
        prompts: list[Any] | None = None,
        completions: list[Any] | None = None,
        completion_ids: list[list[int]] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        texts = completion_texts(completions or [])
        n = len(texts)
        rows = zip(
            texts,
            column(kwargs, "prefix", n),
            column(kwargs, "suffix", n),
            languages(kwargs, n),
            column(kwargs, "reference", n),
            strict=True,
        )
        return [
            self.score(text, prefix or "", suffix or "", lang, ref)
            for text, prefix, suffix, lang, ref in rows
        ]

    def score(
        self, completion: str, prefix: str, suffix: str, language: str, reference: str | None
    ) -> float | None:
        if self._checker is None:
            self._checker = SyntaxChecker()
        parses = self._checker.check(language, prefix, completion, suffix) if language else None
        if language != "python":
            return None if parses is None else float(parses)
        if python_compiles(prefix + completion + suffix):
            return 1.0  # CPython is the authority where a grammar lags behind the language
        baseline = prefix + (reference or "") + suffix
        if python_compiles(baseline):
            return 0.0  # the kept text compiles here, so the completion is what breaks the file
        return None if parses is None else float(parses)
