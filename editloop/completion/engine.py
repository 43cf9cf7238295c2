"""The completion engine: cursor context in, ranked candidates (or an abstention) out.

Every transport — native HTTP, llama.cpp ``/infill``, OpenAI, Tabby, LSP — calls
:meth:`CompletionEngine.complete` and only reshapes its result.

>>> engine.complete(CompletionRequest(prefix="def add(a, b):\\n    return ", suffix="\\n"))  # doctest: +SKIP
"""

import math
import threading
import time
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from editloop.completion.cache import CompletionCache
from editloop.completion.context.workspace import CodebaseCandidate, ContextService, Workspace
from editloop.completion.postprocess import Cleaner, dedupe, resolve_mode
from editloop.completion.prompt import RecentCuts, build_prompt
from editloop.completion.ranker import RankContext, Ranker, RankInput, should_abstain
from editloop.completion.served import ServedModel
from editloop.completion.syntax import SyntaxChecker, language_for_path
from editloop.completion.types import (
    CandidateReport,
    Choice,
    CompletionRequest,
    CompletionResult,
    ResolvedMode,
)
from editloop.errors import ContextRootError
from editloop.models.backend import Generation, GenerationParams


@dataclass(frozen=True)
class EngineConfig:
    # None: each version's own (calibrated) threshold; a number overrides it (evals use 0: they
    # score what the model would say, never an abstention).
    abstain_threshold: float | None = None
    default_max_tokens: int = 64
    max_candidates: int = 8
    block_max_tokens: int = 128
    candidate_stretch: float = 1.0  # see GenerationParams.stretch


class ServedSource(Protocol):
    """Where the engine leases the model it completes with (the hot-swap manager, or one model)."""

    @property
    def version(self) -> str | None:
        """The version serving requests that go to no canary (None: nothing loaded)."""
        ...

    def lease(self, key: str | None = None) -> AbstractContextManager[ServedModel]:
        """The model for a request keyed ``key`` (a canary serves a stable share of keys)."""
        ...


@dataclass(frozen=True)
class _Ranking:
    name: str
    ranker: Ranker
    threshold: float
    cache_key: str


class CompletionEngine:
    def __init__(
        self,
        models: ServedSource,
        config: EngineConfig,
        cache: CompletionCache | None = None,
        context: ContextService | None = None,
    ) -> None:
        self.models = models
        self.config = config
        self.cache = cache
        self.context = context
        self.syntax = SyntaxChecker()
        self.cuts = RecentCuts()
        self._documents: dict[str, threading.Event] = {}
        self._documents_lock = threading.Lock()

    def complete(
        self,
        request: CompletionRequest,
        cancel: threading.Event | None = None,
        workspace: Workspace | None = None,
    ) -> CompletionResult:
        """Rank the request's candidates; ``cancel`` (e.g. a client disconnect) stops decoding.

        Context comes from ``workspace`` (the LSP's own), else from the request's ``project_root``
        when the engine's context service allows it (:class:`ContextRootError` when not).
        """
        started = time.perf_counter()
        language = request.language or language_for_path(request.filepath or "") or "text"
        mode = resolve_mode(request.mode, request.prefix, request.suffix, language)
        workspace = workspace or self.workspace_for(request)
        cancel = self._supersede(request.document_id, cancel or threading.Event())
        try:
            with self.models.lease(arm_key(request)) as served:
                ranking = self._ranking(served, request, workspace)
                cached = self._from_cache(served.version, ranking, language, mode, request, started)
                if cached is not None:
                    return cached
                return self._generate(served, ranking, request, language, mode, cancel, started, workspace)
        finally:
            self._release(request.document_id, cancel)

    def workspace_for(self, request: CompletionRequest) -> Workspace | None:
        """The workspace of the request's ``project_root`` (None: it names none)."""
        if request.project_root is None:
            return None
        if self.context is None:
            raise ContextRootError("this server gathers no context: its context_roots setting is empty")
        return self.context.workspace(request.project_root)

    def _ranking(
        self, served: ServedModel, request: CompletionRequest, workspace: Workspace | None = None
    ) -> _Ranking:
        name, ranker, threshold = served.pick(request.ranker)
        override = self.config.abstain_threshold
        # A prompt with context gives other answers: its cached rankings are kept apart.
        key = f"{name}+context" if workspace is not None else name
        return _Ranking(name, ranker, threshold if override is None else override, key)

    def complete_cached(self, request: CompletionRequest) -> CompletionResult | None:
        """The completion cache's answer (a repeat, or typing into a shown completion), else None.

        It takes microseconds and never waits on the model, so a server answers it on its event
        loop without a thread hop; as :meth:`complete` would, it stops a decode the same document
        still has running.
        """
        if self.cache is None:
            return None
        started = time.perf_counter()
        language = request.language or language_for_path(request.filepath or "") or "text"
        mode = resolve_mode(request.mode, request.prefix, request.suffix, language)
        if request.project_root is not None:
            return None  # its context is gathered (and its root checked) in complete()
        with self.models.lease(arm_key(request)) as served:
            ranking = self._ranking(served, request)
            result = self._from_cache(served.version, ranking, language, mode, request, started)
        if result is not None:
            self._release(request.document_id, self._supersede(request.document_id, threading.Event()))
        return result

    def _generate(
        self,
        served: ServedModel,
        ranking: _Ranking,
        request: CompletionRequest,
        language: str,
        mode: ResolvedMode,
        cancel: threading.Event,
        started: float,
        workspace: Workspace | None = None,
    ) -> CompletionResult:
        backend = served.backend
        max_tokens = request.max_tokens or (
            self.config.default_max_tokens if mode == "line" else self.config.block_max_tokens
        )
        context_started = time.perf_counter()
        extra, copies = list(request.extra), []
        if workspace is not None:
            extra += workspace.gather(request.filepath, request.prefix, request.suffix)
            copies = workspace.continuations(request.filepath, request.prefix, block=mode == "block")
        context_ms = _ms(context_started)
        prompt = build_prompt(
            backend, request.prefix, request.suffix, extra, request.filepath, max_tokens, self.cuts
        )
        n = min(request.n, self.config.max_candidates)
        deadline = time.monotonic() + request.time_budget_ms / 1000 if request.time_budget_ms else None
        params = GenerationParams(
            n=n,
            max_tokens=max_tokens,
            temperature=request.temperature,
            seed=request.seed,
            stop=("\n",) if mode == "line" else (),
            deadline=deadline,
            cancel=cancel,
            document=request.document_id or request.filepath,
            stretch=self.config.candidate_stretch,
            hidden=ranking.ranker.wants_hidden,
        )
        generated = backend.generate(prompt.ids, params)
        post_started = time.perf_counter()
        cleaner = Cleaner(request.prefix, request.suffix, language)
        reports, rank_ms = self._rank(ranking.ranker, generated.generations, request, language, mode, cleaner)
        reports += self._copies(ranking.ranker, copies, reports, request, language, mode, cleaner)
        choices = _choices(reports, request.n)
        abstained = should_abstain(choices[0].score if choices else None, ranking.threshold)
        if self.cache is not None and choices and not cancel.is_set():
            # Keyed by the requested mode: typing into a block suggestion turns "auto" into a
            # line, and the type-ahead lookup must still find the block it came from.
            self.cache.put(
                _cache_version(backend.version, ranking.cache_key),
                language,
                request.mode,
                request.prefix,
                request.suffix,
                [(c.text, (c.score, c.source)) for c in choices],
            )
        return CompletionResult(
            id=_new_id(),
            model_version=backend.version,
            ranker=ranking.name,
            choices=[] if abstained else choices,
            abstained=abstained,
            mode=mode,
            prompt_tokens=len(prompt.ids),
            cached_tokens=generated.cached_tokens,
            truncated=prompt.truncated,
            candidates=reports,
            context=[extra[i] for i in prompt.snippets],
            timings={
                "context_ms": context_ms,
                "prompt_ms": generated.prompt_ms,
                "decode_ms": generated.decode_ms,
                "postprocess_ms": _ms(post_started),
                "rank_ms": rank_ms,
                "total_ms": _ms(started),
            },
        )

    def _rank(
        self,
        ranker: Ranker,
        generations: list[Generation],
        request: CompletionRequest,
        language: str,
        mode: ResolvedMode,
        cleaner: Cleaner,
    ) -> tuple[list[CandidateReport], float]:
        """Every candidate's report, and how long the ranker took (ms)."""
        texts = [cleaner.truncate(g.text, mode) for g in generations]
        reasons = [cleaner.drop_reason(t) for t in texts]
        first = set(dedupe(texts))
        reasons = [r or (None if i in first else "duplicate") for i, r in enumerate(reasons)]
        kept = [i for i, r in enumerate(reasons) if r is None]
        valid = {i: self.syntax.check(language, request.prefix, texts[i], request.suffix) for i in kept}
        logprobs = [_kept_logprobs(g, t) for g, t in zip(generations, texts, strict=True)]
        inputs = [RankInput(texts[i], logprobs[i], valid[i], hidden=generations[i].hidden) for i in kept]
        samples = tuple(texts[i] for i, r in enumerate(reasons) if r in (None, "duplicate"))
        context = RankContext(request.prefix, request.suffix, language, mode, samples)
        rank_started = time.perf_counter()
        scores = dict(zip(kept, ranker.score(context, inputs) if inputs else [], strict=True))
        rank_ms = _ms(rank_started)
        reports = [
            CandidateReport(
                text=texts[i],
                score=scores.get(i),
                mean_logprob=_mean(logprobs[i]),
                logprobs=logprobs[i],
                parse_valid=valid.get(i),
                dropped=reasons[i],
                finish_reason=g.finish_reason,
            )
            for i, g in enumerate(generations)
        ]
        return reports, rank_ms

    def _copies(
        self,
        ranker: Ranker,
        copies: list[CodebaseCandidate],
        reports: list[CandidateReport],
        request: CompletionRequest,
        language: str,
        mode: ResolvedMode,
        cleaner: Cleaner,
    ) -> list[CandidateReport]:
        """Reports of the codebase's continuations, scored by the same ranker as the model's.

        A copy the model also proposed is kept once, as the model's (its log-probs then score it).
        """
        taken = {r.text for r in reports if r.dropped is None}
        texts: list[str] = []
        reasons: list[str | None] = []
        valid: dict[int, bool | None] = {}
        for copy in copies:
            text = cleaner.truncate(copy.text, mode)
            reason = cleaner.drop_reason(text)
            reason = reason or ("duplicate" if text in taken else None)
            taken.add(text)
            if reason is None:
                valid[len(texts)] = self.syntax.check(language, request.prefix, text, request.suffix)
            texts.append(text)
            reasons.append(reason)
        kept = [i for i, r in enumerate(reasons) if r is None]
        inputs = [RankInput(texts[i], [], valid[i], "codebase", copies[i].share) for i in kept]
        samples = tuple(r.text for r in reports if r.dropped in (None, "duplicate"))
        context = RankContext(request.prefix, request.suffix, language, mode, samples)
        scores = dict(zip(kept, ranker.score(context, inputs) if inputs else [], strict=True))
        return [
            CandidateReport(
                text=texts[i],
                score=scores.get(i),
                mean_logprob=None,
                parse_valid=valid.get(i),
                dropped=reasons[i],
                finish_reason="copy",
                source="codebase",
                origin=copy.rel or request.filepath,
            )
            for i, copy in enumerate(copies)
        ]

    def _from_cache(
        self,
        version: str,
        ranking: _Ranking,
        language: str,
        mode: ResolvedMode,
        request: CompletionRequest,
        started: float,
    ) -> CompletionResult | None:
        if self.cache is None:
            return None
        key = _cache_version(version, ranking.cache_key)
        hit = self.cache.get(key, language, request.mode, request.prefix, request.suffix)
        if hit is None or not hit.choices:
            return None
        choices = [
            Choice(index=i, text=t, score=s, source=source)
            for i, (t, (s, source)) in enumerate(hit.choices[: request.n])
        ]
        abstained = should_abstain(choices[0].score, ranking.threshold)
        return CompletionResult(
            id=_new_id(),
            model_version=version,
            ranker=ranking.name,
            choices=[] if abstained else choices,
            abstained=abstained,
            mode=mode,
            cached=True,
            timings={"total_ms": _ms(started)},
        )

    def _supersede(self, document_id: str | None, cancel: threading.Event) -> threading.Event:
        """Latest wins per document: a newer request cancels the one still running."""
        if document_id is None:
            return cancel
        with self._documents_lock:
            previous = self._documents.get(document_id)
            if previous is not None:
                previous.set()
            self._documents[document_id] = cancel
        return cancel

    def _release(self, document_id: str | None, cancel: threading.Event) -> None:
        if document_id is None:
            return
        with self._documents_lock:
            if self._documents.get(document_id) is cancel:
                del self._documents[document_id]


def arm_key(request: CompletionRequest) -> str | None:
    """Who asks about what: a canary keeps each (user, document) on one arm, on every replica."""
    document = request.document_id or request.filepath
    if request.user is None and document is None:
        return None
    return f"{request.user or ''}\x00{document or ''}"


def _cache_version(version: str, ranker: str) -> str:
    # Scores are the ranker's: a cached ranking is reused only under the same version and ranker.
    return f"{version}/{ranker}"


def _choices(reports: list[CandidateReport], n: int) -> list[Choice]:
    ranked = sorted((r for r in reports if r.score is not None), key=lambda r: -(r.score or 0.0))
    return [
        Choice(index=i, text=r.text, score=round(r.score or 0.0, 6), source=r.source)
        for i, r in enumerate(ranked[:n])
    ]


def _kept_logprobs(generation: Generation, kept_text: str) -> list[float]:
    """Log-probs of roughly the tokens that survived truncation (by share of characters)."""
    if not generation.text or not generation.logprobs:
        return generation.logprobs
    share = min(1.0, len(kept_text) / len(generation.text))
    return generation.logprobs[: max(1, math.ceil(len(generation.logprobs) * share))]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


def _new_id() -> str:
    return f"cmpl-{uuid.uuid4().hex[:24]}"
