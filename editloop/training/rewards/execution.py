"""Compile, lint, format and test rewards: the language's own tools judge the file with the
completion inserted, relative to the same file with the text the user kept.

Each check scores in [0, 1] and the language's :class:`ToolWeights` average the checks that apply
(Rust by default: 0.4 compile + 0.3 tests + 0.2 clippy + 0.1 rustfmt). A check does not apply —
None, left out of the average — when the tool is missing, the sandbox failed, the row has no tests,
or the kept text fails it too (a file that only compiles inside its crate, an unformatted project):
then it says nothing about this completion. A row with no check left gets None.

>>> reward = ExecutionReward()
>>> reward(completions=["a + b", "a +"], prefix=["def add(a, b):\\n    return "] * 2,
...        suffix=["\\n"] * 2, reference=["a + b"] * 2, language=["python"] * 2,
...        tests=["assert add(1, 2) == 3"] * 2)  # doctest: +SKIP
[1.0, 0.0]
"""

import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from editloop.errors import SandboxUnavailableError
from editloop.sandbox import Sandbox, open_sandbox
from editloop.training.rewards.columns import column, completion_texts, languages
from editloop.training.rewards.toolchains import CheckResult, SourceUnit, toolchain_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToolWeights:
    """How one language's checks add up; a weight of 0 turns a check off."""

    compile: float = 0.4
    tests: float = 0.3
    lint: float = 0.2
    format: float = 0.1


DEFAULT_TOOL_WEIGHTS: Mapping[str, ToolWeights] = MappingProxyType(
    {
        "rust": ToolWeights(compile=0.4, tests=0.3, lint=0.2, format=0.1),
        "python": ToolWeights(compile=0.4, tests=0.3, lint=0.2, format=0.1),
        "java": ToolWeights(compile=0.5, tests=0.3, lint=0.2, format=0.0),  # no formatter ships with a JDK
    }
)


@dataclass(frozen=True)
class ToolTerms:
    """Each check's score for one completion; None where the check does not apply."""

    compile: float | None = None
    tests: float | None = None
    lint: float | None = None
    format: float | None = None

    def weighted(self, weights: ToolWeights) -> float | None:
        pairs = [
            (getattr(weights, name), value)
            for name, value in self.__dict__.items()
            if value is not None and getattr(weights, name) > 0
        ]
        total = sum(w for w, _ in pairs)
        return sum(w * v for w, v in pairs) / total if total > 0 else None


def score_checks(candidate: CheckResult, baseline: CheckResult | None) -> ToolTerms:
    """Scores of a completion's checks; ``baseline`` is the file with the kept text (None: unknown)."""
    base = baseline or CheckResult()
    compile_score = _applies(candidate.compiles, base.compiles)
    return ToolTerms(
        compile=compile_score,
        tests=_applies(candidate.tests_pass, base.tests_pass),
        lint=_lint_score(candidate, base, compile_score),
        format=_applies(candidate.formatted, base.formatted),
    )


def _applies(passed: bool | None, baseline_passed: bool | None) -> float | None:
    if passed is None or baseline_passed is False:
        return None
    return float(passed)


def _lint_score(candidate: CheckResult, base: CheckResult, compile_score: float | None) -> float | None:
    """1.0 with no more warnings than the kept text had, then 1/2, 1/3, ... per extra warning."""
    if compile_score == 0.0:
        return 0.0  # code that does not compile is not worth linting
    if compile_score is None and base.compiles is False:
        return None
    if candidate.lint_issues is None:
        return None
    extra = candidate.lint_issues - (base.lint_issues or 0)
    return 1.0 if extra <= 0 else 1.0 / (1 + extra)


class ExecutionReward:
    """The weighted check score per completion; checks run in the sandbox, several at a time."""

    def __init__(
        self,
        weights: Mapping[str, ToolWeights] = DEFAULT_TOOL_WEIGHTS,
        sandbox: Sandbox | None = None,
        workers: int = 2,
        cache_size: int = 2048,
    ) -> None:
        self.__name__ = "execution"
        self.weights = dict(weights)
        self.sandbox = sandbox
        self.workers = workers
        self.cache_size = cache_size
        self._cache: dict[tuple[str, SourceUnit], CheckResult] = {}
        self._unavailable: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        # The cache is an optimisation local to a process; a copy starts empty.
        return {**self.__dict__, "_cache": {}}

    def __call__(
        self,
        prompts: list[Any] | None = None,
        completions: list[Any] | None = None,
        completion_ids: list[list[int]] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        terms = self.terms(completions or [], **kwargs)
        langs = languages(kwargs, len(terms))
        return [
            None if t is None or lang not in self.weights else t.weighted(self.weights[lang])
            for t, lang in zip(terms, langs, strict=True)
        ]

    def terms(self, completions: list[Any], **kwargs: Any) -> list[ToolTerms | None]:
        """Per completion, the checks' scores; None for a language without a toolchain here."""
        texts = completion_texts(completions)
        n = len(texts)
        langs = languages(kwargs, n)
        prefixes, suffixes = column(kwargs, "prefix", n), column(kwargs, "suffix", n)
        refs, paths, tests = (
            column(kwargs, "reference", n),
            column(kwargs, "filepath", n),
            column(kwargs, "tests", n),
        )
        jobs: list[tuple[str, SourceUnit, SourceUnit | None] | None] = []
        for i in range(n):
            if langs[i] not in self.weights:
                jobs.append(None)
                continue
            prefix, suffix, path = prefixes[i] or "", suffixes[i] or "", paths[i] or ""
            unit = SourceUnit(prefix + texts[i] + suffix, path, tests[i] or None)
            base = (
                SourceUnit(prefix + refs[i] + suffix, path, tests[i] or None) if refs[i] is not None else None
            )
            jobs.append((langs[i], unit, base))
        keys = [(job[0], unit) for job in jobs if job for unit in job[1:] if unit is not None]
        results = self._check_all(list(dict.fromkeys(keys)))
        terms: list[ToolTerms | None] = []
        for job in jobs:
            if job is None or (job[0], job[1]) not in results:
                terms.append(None)
                continue
            lang, unit, base = job
            terms.append(score_checks(results[(lang, unit)], results.get((lang, base)) if base else None))
        return terms

    def _check_all(self, wanted: list[tuple[str, SourceUnit]]) -> dict[tuple[str, SourceUnit], CheckResult]:
        """Check every (language, file) once: cached results first, the rest a few at a time."""
        sandbox = self._sandbox()
        if sandbox is None:
            return {}
        found = {key: self._cache[key] for key in wanted if key in self._cache}
        toolchains = {lang: toolchain_for(lang, sandbox) for lang, _ in wanted}
        missing = [key for key in wanted if key not in found and toolchains[key[0]] is not None]

        def check(key: tuple[str, SourceUnit]) -> CheckResult:
            toolchain = toolchains[key[0]]
            assert toolchain is not None
            return toolchain.check(key[1])

        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            for key, result in zip(missing, pool.map(check, missing), strict=True):
                self._remember(key, result)
                found[key] = result
        return found

    def _remember(self, key: tuple[str, SourceUnit], result: CheckResult) -> None:
        if len(self._cache) >= self.cache_size:
            self._cache.pop(next(iter(self._cache)))  # oldest first: dicts keep insertion order
        self._cache[key] = result

    def _sandbox(self) -> Sandbox | None:
        if self.sandbox is None and self._unavailable is None:
            try:
                self.sandbox = open_sandbox()
            except SandboxUnavailableError as exc:
                self._unavailable = exc.message
                log.warning("execution rewards off: %s", exc.message)
        return self.sandbox
