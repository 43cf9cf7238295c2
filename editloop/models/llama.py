"""The in-process backend: llama.cpp through llama-cpp-python's low-level API.

Latency on editor traffic comes from five things, all here:

- **KV reuse across requests.** The active document's prompt stays in sequence 0; the next prompt
  evaluates only what the cache lacks (:func:`~editloop.models.kvcache.plan_reuse`: the common
  prefix, and with ``cache_reuse`` runs moved by a KV shift as llama.cpp's ``--cache-reuse``).
  The KV of the last ``cache_documents`` - 1 other documents is parked in host memory, so two
  files edited in turn do not evict each other.
- **n candidates, one batch.** Candidates share the prompt's KV (a unified KV cache makes
  ``llama_memory_seq_cp`` a metadata copy). Candidates that have produced the same tokens share
  one sequence and are decoded once; a sequence forks only where their tokens differ, so a
  candidate that duplicates another costs nothing until it stops duplicating it. A request waits
  for its longest candidate, so once the greedy one has ended the sampled ones are held to
  ``params.stretch`` times its length in decode rounds, a run it copies from the context counting
  as one (:func:`~editloop.models.backend.alternative_limit`).
- **Sampling in llama.cpp.** Candidate 0 is greedy; each other one samples with its own seeded
  llama.cpp sampler chain (top-k, temperature, top-p, dist). The ranker's log-probs (under the
  unscaled distribution) are one vectorised log-softmax per decoded row.
- **Prompt-lookup speculative decoding.** Each step the greedy candidate's sequence decodes its
  last token plus a draft copied from the context (:mod:`~editloop.models.speculative`); a
  candidate keeps the drafted tokens its own sampler picks at each position, and its first own
  pick ends the run.
  Every candidate therefore emits exactly the tokens it would have emitted without drafts.
- **Tokenizing only what is new.** The text before the cursor, a few characters longer than at the
  last request, is tokenized from the last line start it shares with that text
  (:class:`~editloop.models.tokens.RecentTokens`), where the vocabulary allows it.

>>> backend = LlamaBackend.from_version(registry.get("current"))
>>> result = backend.generate(prompt_ids, GenerationParams(n=4, max_tokens=32, stop=("\\n",)))
>>> [g.text for g in result.generations], result.cached_tokens
"""

import codecs
import ctypes
import dataclasses
import os
import threading
import time
import weakref
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Self

# llama.cpp's CPU threads wait for work in OpenMP, which spins by default: on a busy machine (a
# trainer beside the server, other processes) a spinning waiter holds the core its partner needs,
# and a 2-thread decode of a 0.5B model went from 33 ms to 1.4 s a token. libgomp reads this once,
# when it is loaded, so it is set before llama_cpp is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import llama_cpp
import numpy as np
from llama_cpp._logger import set_verbose
from llama_cpp._utils import suppress_stdout_stderr

from editloop.errors import ModelError
from editloop.models.backend import (
    FinishReason,
    Generation,
    GenerationParams,
    GenerationResult,
    alternative_limit,
)
from editloop.models.fim import FimTemplate
from editloop.models.kvcache import LruSlots, ReusePlan, plan_reuse, staleness
from editloop.models.registry import ModelVersion
from editloop.models.speculative import DraftPolicy, copy_rounds, draft
from editloop.models.tokens import RecentTokens, splits_at_line_starts

# KV cells reserved per sequence beyond the first. Completions are short (Tabby: 64 tokens), so
# this covers them at a few percent more KV memory; a longer request decodes fewer candidates
# rather than failing.
SAMPLED_RESERVE = 256
PROMPT_BATCH = 512
# Sampled candidates draw from the 64 likeliest tokens: past them a code model's tail holds next
# to nothing, and without the cut llama.cpp sorts all 151,936 of a real vocabulary per token.
TOP_K = 64
# A decode of fewer multiply-adds than this runs on one thread: waking a second one costs more
# than it saves (a tiny model's step is ~0.1 ms of work; waking a thread on a busy machine, ms).
ONE_THREAD_WORK = 200_000_000
# A cached token moved by more than 1/STALE_SHARE of the context in all since it was evaluated is
# evaluated afresh: a moved chunk's error grows with the text typed or dropped before it since
# (see editloop.models.kvcache). The prompt's window slides 1/16 of the context at a time.
STALE_SHARE = 8
TOKEN_CACHE_TEXTS = 16
# Moved KV is parked this far out while the chunks are shifted, so no two ranges ever overlap.
_PARK = 1 << 24
_SPECIAL_ATTRS = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED


@dataclass
class _Native:
    """The llama.cpp objects one backend owns, freed in reverse order of creation."""

    model: Any
    ctx: Any
    batch: llama_cpp.llama_batch
    vocab: Any
    memory: Any


@dataclass
class _Parked:
    """A document's prompt KV, copied out of sequence 0 while another document is active."""

    tokens: list[int]
    stale: list[int]
    state: ctypes.Array


class LlamaBackend:
    """A GGUF model in this process; implements :class:`~editloop.models.backend.Backend`.

    ``n_ctx`` is the most tokens one candidate's prompt plus completion may hold (0: the
    model's trained context). The KV cache holds that plus :data:`SAMPLED_RESERVE` tokens for
    each further sequence; a request whose candidates would not fit decodes fewer of them
    (``result.extra["sequences"]`` says how many ran). ``cache_documents`` documents keep their
    prompt's KV (0 or 1: only the last prompt's); ``cache_reuse`` is the shortest run of tokens
    moved by a KV shift (0: only the exact common prefix is reused); ``draft_max`` bounds the
    tokens drafted per step (0: no speculative decoding). One llama context is not thread-safe,
    so ``generate`` calls are serialised by a lock.
    """

    def __init__(
        self,
        gguf_path: Path,
        fim: FimTemplate,
        version: str,
        n_ctx: int = 0,
        n_threads: int | None = None,
        max_candidates: int = 8,
        cache_documents: int = 4,
        cache_reuse: int = 0,
        draft_max: int = 8,
    ) -> None:
        most = llama_cpp.llama_max_parallel_sequences() - 1  # one sequence is the spare
        if not 1 <= max_candidates <= most:
            raise ModelError(
                f"max_candidates={max_candidates} is out of range; this build decodes 1 to {most}"
            )
        self.version = version
        self.fim = fim
        self.max_candidates = max_candidates
        self.draft_max = max(0, draft_max)
        self._lock = threading.Lock()
        self._token_lock = threading.Lock()  # tokenizing needs no decode lock: requests do it in parallel
        self._token_cache: OrderedDict[tuple[bytes, bool], list[int]] = OrderedDict()
        threads = n_threads or os.cpu_count() or 1
        self._native, self.n_ctx = _load(Path(gguf_path), n_ctx, threads, max_candidates)
        # weakref.finalize, not __del__: it runs at interpreter exit while llama_cpp is still intact.
        self._free = weakref.finalize(self, _free_native, self._native)
        self._threads, self._threads_now = threads, threads
        self._n_params = llama_cpp.llama_model_n_params(self._native.model)
        self._kv_cells = llama_cpp.llama_n_ctx(self._native.ctx)
        self._spare = max_candidates  # the sequence moved chunks wait in (sequences 1.. are candidates)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._native.vocab)
        self._n_embd = llama_cpp.llama_model_n_embd(self._native.model)
        self.cache_reuse = cache_reuse if llama_cpp.llama_memory_can_shift(self._native.memory) else 0
        self._cached: list[int] = []  # tokens whose KV sequence 0 holds, position i at index i
        self._stale: list[int] = []  # how far each has been moved by KV shifts since it was evaluated
        self._document: str | None = None  # whose prompt sequence 0 holds
        self._parked: LruSlots[str | None, _Parked] = LruSlots(cache_documents - 1)
        self._pieces: dict[int, bytes] = {}
        self._recent = self._recent_tokens()
        self._drafts = DraftPolicy(self.draft_max)  # learns what drafting costs and earns here
        named = (*fim.eos, fim.pad, fim.file_sep)
        self._end_ids = frozenset(i for t in named if t and (i := self.special_id(t)) is not None)
        self._fim_ids = tuple(self.special_id(t) for t in (fim.prefix, fim.suffix, fim.middle))

    @classmethod
    def from_version(cls, version: ModelVersion, quant: str | None = None, **kw: Any) -> Self:
        return cls(version.gguf_path(quant), version.manifest.fim, version.name, **kw)

    def tokenize(self, text: str) -> list[int]:
        # Lone surrogates are valid JSON but not UTF-8: replace them rather than fail the request.
        return self._tokenize(text.encode("utf-8", "replace"), special=False)

    def special_id(self, token: str) -> int | None:
        ids = self._tokenize(token.encode("utf-8"), special=True)
        if len(ids) != 1:
            return None
        attr = llama_cpp.llama_vocab_get_attr(self._native.vocab, ids[0])
        return ids[0] if attr & _SPECIAL_ATTRS else None

    def generate(self, prompt_ids: list[int], params: GenerationParams) -> GenerationResult:
        with self._decoding():
            return self._generate(list(prompt_ids), params)

    def hidden_states(self, prompt_ids: list[int], continuations: list[list[int]]) -> list[np.ndarray]:
        """The model's last hidden state (after its final norm) once it has read the prompt and
        then each continuation: what the model itself "thinks" of a candidate, a feature the value
        model can learn from. Continuations are evaluated one at a time after the prompt, which is
        read once and stays cached as :meth:`generate` would leave it; each needs a token.
        """
        if any(not tokens for tokens in continuations):
            raise ModelError("a continuation without tokens has no hidden state of its own")
        with self._decoding():
            return self._hidden_states(list(prompt_ids), continuations)

    def close(self) -> None:
        with self._lock:
            self._parked.clear()
            self._free()

    @contextmanager
    def _decoding(self) -> Iterator[None]:
        """The context to one caller at a time, refused once closed."""
        with self._lock:
            if not self._free.alive:
                raise ModelError(f"model {self.version} is closed")
            try:
                yield
            except BaseException:
                # A failed or interrupted decode leaves the KV in an unknown state.
                self._forget_cache()
                raise

    def _hidden_states(self, prompt: list[int], continuations: list[list[int]]) -> list[np.ndarray]:
        self._check_prompt(prompt, 1)
        evaluated = self._eval_prompt(prompt, GenerationParams(max_tokens=1))
        if not isinstance(evaluated, tuple):
            raise ModelError(f"the prompt could not be evaluated ({evaluated})")
        room = self.n_ctx - len(prompt)  # a continuation past the context is read up to its end
        states = []
        with self._hidden_outputs():
            for tokens in continuations:
                tokens = tokens[:room]
                for start in range(0, len(tokens), PROMPT_BATCH):
                    chunk = tokens[start : start + PROMPT_BATCH]
                    self._decode([(t, len(prompt) + start + j, 0, True) for j, t in enumerate(chunk)])
                pointer = llama_cpp.llama_get_embeddings_ith(self._native.ctx, len(chunk) - 1)
                if not pointer:
                    raise ModelError(f"llama.cpp returned no hidden state on model {self.version}")
                states.append(np.ctypeslib.as_array(pointer, shape=(self._n_embd,)).copy())
                llama_cpp.llama_memory_seq_rm(self._native.memory, 0, len(prompt), -1)
        return states

    @contextmanager
    def _hidden_outputs(self) -> Iterator[None]:
        """Decodes that also output hidden states. Never a prompt's: with them on, llama.cpp outputs
        every token of a batch, and a prompt's logits at every position would cost more than the
        prompt itself (a decode step's entries are all outputs anyway)."""
        llama_cpp.llama_set_embeddings(self._native.ctx, True)
        try:
            yield
        finally:
            llama_cpp.llama_set_embeddings(self._native.ctx, False)

    # -- one request -----------------------------------------------------------------------

    def _generate(self, prompt: list[int], params: GenerationParams) -> GenerationResult:
        self._check_prompt(prompt, params.max_tokens)
        wanted = 1 if params.temperature <= 0 else min(params.n, self.max_candidates)
        # Sequence 0's prompt cells are shared, each other sequence adds its tokens and a draft.
        per_sequence = max(1, params.max_tokens + self.draft_max)
        fits = max(1, (self._kv_cells - len(prompt)) // per_sequence)
        started = time.monotonic()
        switched = self._select_document(params.document)
        evaluated = self._eval_prompt(prompt, params)
        prompt_done = time.monotonic()
        decoder = _Decoder(self, prompt, params, min(wanted, fits))
        try:
            if isinstance(evaluated, str):
                decoder.interrupt(evaluated)
                plan = None
            else:
                plan, row = evaluated
                decoder.run(row)
        finally:
            decoder.close()
            self._drop_generated(len(prompt))
        generations = [c.result() for c in decoder.candidates]
        # Greedy-only requests still answer one generation per requested candidate.
        while len(generations) < params.n and wanted == 1:
            generations.append(_copy(generations[0]))
        return GenerationResult(
            generations=generations,
            prompt_tokens=len(prompt),
            cached_tokens=plan.kept if plan else 0,
            prompt_ms=(prompt_done - started) * 1000,
            decode_ms=(time.monotonic() - prompt_done) * 1000,
            extra={
                "sequences": len(decoder.candidates),
                "shifted_tokens": plan.kept - plan.prefix if plan else 0,
                "document_switched": switched,
                **decoder.stats,
            },
        )

    def _check_prompt(self, prompt: list[int], max_tokens: int) -> None:
        if not prompt:
            raise ModelError("the prompt is empty; a completion needs at least one prompt token")
        if len(prompt) > self.n_ctx - max_tokens:
            raise ModelError(
                f"prompt of {len(prompt)} tokens plus max_tokens={max_tokens} exceeds the context "
                f"of {self.n_ctx} tokens of model {self.version}; shorten the prompt to at most "
                f"{self.n_ctx - max_tokens} tokens"
            )
        if min(prompt) < 0 or max(prompt) >= self._n_vocab:
            bad = next(t for t in prompt if not 0 <= t < self._n_vocab)
            raise ModelError(f"token id {bad} is outside the vocabulary of {self._n_vocab} tokens")

    # -- the prompt's KV -------------------------------------------------------------------

    def _select_document(self, document: str | None) -> bool:
        """Make sequence 0 hold ``document``'s cached prompt if one is parked; True if it switched."""
        if document == self._document:
            return False
        parked = self._parked.take(document)  # before parking the current one takes its slot
        if self._cached and self._parked.capacity > 0:
            self._parked.put(self._document, _Parked(list(self._cached), self._stale, self._copy_out()))
        self._document = document
        if parked is None:
            return True  # the other document's prompt may still share a prefix (e.g. extra context)
        llama_cpp.llama_memory_seq_rm(self._native.memory, 0, -1, -1)
        read = llama_cpp.llama_state_seq_set_data(
            self._native.ctx, ctypes.cast(parked.state, ctypes.POINTER(ctypes.c_uint8)), len(parked.state), 0
        )
        self._cached = list(parked.tokens) if read else []
        self._stale = parked.stale if read else []
        if not read:
            llama_cpp.llama_memory_seq_rm(self._native.memory, 0, -1, -1)
        return True

    def _copy_out(self) -> ctypes.Array:
        size = llama_cpp.llama_state_seq_get_size(self._native.ctx, 0)
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(self._native.ctx, buffer, size, 0)
        return buffer if written == size else (ctypes.c_uint8 * 0)()

    def _eval_prompt(
        self, prompt: list[int], params: GenerationParams
    ) -> tuple[ReusePlan, int] | FinishReason:
        """Make sequence 0 hold ``prompt``: (what was reused, logits row of its last token), or why not.

        llama.cpp appends to a sequence only right after its last position, so moved chunks wait
        in a spare sequence and join sequence 0 once the new tokens before them are decoded.
        """
        plan = plan_reuse(self._cached, prompt, self.cache_reuse, self._stale, self.n_ctx // STALE_SHARE)
        memory, spare = self._native.memory, self._spare
        for seq in range(1, spare + 1):
            llama_cpp.llama_memory_seq_rm(memory, seq, -1, -1)
        for chunk in plan.chunks:
            llama_cpp.llama_memory_seq_cp(memory, 0, spare, chunk.start, chunk.end)
        if not llama_cpp.llama_memory_seq_rm(memory, 0, plan.prefix, -1):
            self._forget_cache()
            plan = ReusePlan(0, [], list(range(len(prompt))))
        self._shift_parked(plan)
        stale = staleness(plan, self._stale, len(prompt))
        del self._cached[plan.prefix :]
        row, pos = 0, plan.prefix
        for moved in [*plan.chunks, None]:  # None: the rest of the prompt
            stop = moved.to if moved else len(prompt)
            for start in range(pos, stop, PROMPT_BATCH):
                interrupted = params.interruption()
                if interrupted:
                    llama_cpp.llama_memory_seq_rm(memory, spare, -1, -1)
                    self._stale = stale[:start]
                    return interrupted  # sequence 0 holds prompt[:start]: the next request reuses it
                end = min(stop, start + PROMPT_BATCH)
                self._decode([(prompt[p], p, 0, p == len(prompt) - 1) for p in range(start, end)])
                self._cached.extend(prompt[start:end])
                row = end - start - 1
            if moved:
                size = moved.end - moved.start
                llama_cpp.llama_memory_seq_cp(memory, spare, 0, moved.to, moved.to + size)
                self._cached.extend(prompt[moved.to : moved.to + size])
                pos = moved.to + size
        llama_cpp.llama_memory_seq_rm(memory, spare, -1, -1)
        self._stale = stale
        return plan, row

    def _shift_parked(self, plan: ReusePlan) -> None:
        """Move each chunk waiting in the spare sequence to its new positions (via a far-off
        range, so a chunk never lands on one not yet moved)."""
        memory, spare = self._native.memory, self._spare
        moved = [c for c in plan.chunks if c.to != c.start]
        for chunk in moved:
            llama_cpp.llama_memory_seq_add(memory, spare, chunk.start, chunk.end, _PARK)
        for chunk in moved:
            delta = chunk.to - chunk.start - _PARK
            llama_cpp.llama_memory_seq_add(memory, spare, chunk.start + _PARK, chunk.end + _PARK, delta)

    def _drop_generated(self, prompt_len: int) -> None:
        """Keep only the prompt in sequence 0 and nothing in the others: what the next request reuses."""
        if not self._free.alive:
            return
        memory = self._native.memory
        for seq in range(1, self._spare + 1):
            llama_cpp.llama_memory_seq_rm(memory, seq, -1, -1)
        if not llama_cpp.llama_memory_seq_rm(memory, 0, prompt_len, -1):
            self._forget_cache()

    # -- llama.cpp calls -------------------------------------------------------------------

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> None:
        """One ``llama_decode`` of (token, position, sequence, wants logits) entries."""
        threads = 1 if self._n_params * len(entries) < ONE_THREAD_WORK else self._threads
        if threads != self._threads_now:
            llama_cpp.llama_set_n_threads(self._native.ctx, threads, threads)
            self._threads_now = threads
        batch = self._native.batch
        batch.n_tokens = len(entries)
        # llama-cpp-python annotates pos as an array of arrays; it is one int32 per token.
        positions = ctypes.cast(batch.pos, ctypes.POINTER(ctypes.c_int32))
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i] = token
            positions[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        status = llama_cpp.llama_decode(self._native.ctx, batch)
        if status != 0:
            raise ModelError(f"llama_decode failed with status {status} on model {self.version}")

    def _logits(self, row: int) -> np.ndarray:
        pointer = llama_cpp.llama_get_logits_ith(self._native.ctx, row)
        if not pointer:
            raise ModelError(f"llama.cpp returned no logits for batch row {row}")
        return np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))

    def _ends(self, token: int) -> bool:
        # End-of-generation tokens only, as llama.cpp's own server decides: other control tokens
        # (a stray FIM marker) add no text and decoding goes on, so a remote llama.cpp or vLLM
        # backend and this one give the same candidates for the same model.
        return token in self._end_ids or llama_cpp.llama_vocab_is_eog(self._native.vocab, token)

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = _token_bytes(self._native.vocab, token)
            self._pieces[token] = piece
        return piece

    def _tokenize(self, data: bytes, special: bool) -> list[int]:
        if not self._free.alive:
            raise ModelError(f"model {self.version} is closed")
        # While a developer types on a line, the text after the cursor (and the FIM tokens looked up
        # for every request) stay the same: their tokens are remembered, a few texts' worth.
        key = (data, special)
        with self._token_lock:
            known = self._token_cache.get(key)
            if known is not None:
                self._token_cache.move_to_end(key)
                return list(known)
        ids = self._tokenize_native(data, special) if special or self._recent is None else self._recent(data)
        with self._token_lock:
            self._token_cache[key] = ids
            if len(self._token_cache) > TOKEN_CACHE_TEXTS:
                self._token_cache.popitem(last=False)
        return list(ids)

    def _recent_tokens(self) -> RecentTokens | None:
        """Tokenizing from a recent text's last shared line start, when this vocabulary splits there."""
        plain = partial(self._tokenize_native, special=False)
        piece_length = lambda token: len(self._piece(token))  # noqa: E731
        return RecentTokens(plain, piece_length) if splits_at_line_starts(plain, piece_length) else None

    def _tokenize_native(self, data: bytes, special: bool) -> list[int]:
        size = len(data) + 1  # without BOS a token covers at least one byte
        for _ in range(2):
            ids = (llama_cpp.llama_token * size)()
            n = llama_cpp.llama_tokenize(self._native.vocab, data, len(data), ids, size, False, special)
            if n >= 0:
                return list(ids[:n])
            size = -n
        raise ModelError(f"llama.cpp could not tokenize {len(data)} bytes of text")

    def _forget_cache(self) -> None:
        if self._free.alive:
            llama_cpp.llama_memory_clear(self._native.memory, True)
        self._cached, self._stale = [], []

    def _draft_base(self, prompt: list[int]) -> np.ndarray:
        """The prompt with the text before the cursor moved last, so the last tokens of
        (that text + a completion so far) are the n-gram drafts look up."""
        pre, suf, mid = self._fim_ids
        tokens = np.asarray(prompt, dtype=np.int64)
        if pre is None or suf is None or mid is None or pre not in prompt:
            return tokens
        start = len(prompt) - 1 - prompt[::-1].index(pre) + 1
        ends = np.flatnonzero((tokens[start:] == suf) | (tokens[start:] == mid))
        end = start + int(ends[0]) if len(ends) else len(prompt)
        return np.concatenate([tokens[:start], tokens[end:], tokens[start:end]])


@dataclass
class _Candidate:
    """One candidate's progress: tokens, their log-probs, and its text so far."""

    index: int
    sampler: Any  # a llama.cpp sampler chain; None: greedy
    limit: int  # the most tokens it may emit
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    ends: list[int] = field(default_factory=list)  # len(text) after each token
    cut: int | None = None  # where a stop string begins
    finish: FinishReason | None = None
    hidden: np.ndarray | None = None  # the hidden state of the row its last token was drawn from
    # Holds back the bytes of a character split across tokens until it is complete.
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="ignore")
    )

    def add(self, token: int, logprob: float, piece: bytes, params: GenerationParams) -> None:
        before = len(self.text)
        self.tokens.append(token)
        self.logprobs.append(logprob)
        self.text += self.decoder.decode(piece)
        self.ends.append(len(self.text))
        stops = [s for s in params.stop if s]
        if stops:
            start = max(0, before - max(map(len, stops)) + 1)
            found = [i for s in stops if (i := self.text.find(s, start)) >= 0]
            if found:
                self.cut, self.finish = min(found), "stop"
                return
        if len(self.tokens) >= self.limit:
            self.finish = "length"

    def bound(self, limit: int) -> None:
        """Hold it to ``limit`` tokens, ending as it would have had the limit applied from the start.

        Accepted drafts can carry a candidate past the limit, or to its end, before the limit is
        known; those tokens are taken back so that speculation never changes the output.
        """
        self.limit = limit = min(self.limit, limit)
        if len(self.tokens) > limit or (len(self.tokens) == limit and self.cut is None):
            self.text = self.text[: self.ends[limit - 1]] if limit else ""
            del self.tokens[limit:], self.logprobs[limit:], self.ends[limit:]
            self.cut, self.finish = None, "length"

    def result(self) -> Generation:
        assert self.finish is not None
        if self.cut is None:
            return Generation(self.text, self.tokens, self.logprobs, self.finish, self.hidden)
        # Keep the tokens that contribute to the text before the stop string.
        kept = bisect_left(self.ends, self.cut) + 1 if self.cut else 0
        return Generation(
            self.text[: self.cut], self.tokens[:kept], self.logprobs[:kept], self.finish, self.hidden
        )


@dataclass
class _Branch:
    """A sequence and the candidates that have emitted the same tokens on it.

    After a decode, ``rows[j]`` holds the logits after ``pending[j]``: row 0 predicts the token
    after the last emitted one, row j > 0 the token after draft token ``pending[j]``.
    """

    seq: int
    candidates: list[_Candidate]
    pending: list[int]  # decoded this step: the last emitted token, then the draft
    pos: int  # position of pending[0]
    rows: list[int] = field(default_factory=list)


class _Decoder:
    """Decodes one request's candidates, one ``llama_decode`` per step for all of them."""

    def __init__(
        self, backend: LlamaBackend, prompt: list[int], params: GenerationParams, count: int
    ) -> None:
        self.backend = backend
        self.params = params
        self.prompt_len = len(prompt)
        self.candidates = [
            _Candidate(i, _sampler(params, i) if i else None, params.max_tokens) for i in range(count)
        ]
        self.prompt = prompt
        self.free_seqs = list(range(backend.max_candidates - 1, 0, -1))
        self.stats = {"steps": 0, "drafted": 0, "accepted": 0, "branches": 1}
        self._lse: dict[int, float] = {}
        self._argmax: dict[int, int] = {}
        self._rows: np.ndarray | None = None  # every logits row of the last step, in batch order
        self._hidden: np.ndarray | None = None  # and its hidden states, when params.hidden

    @cached_property
    def base(self) -> np.ndarray:
        """What drafts and copy_rounds look up; built only when a request drafts or bounds samples."""
        return self.backend._draft_base(self.prompt)

    def run(self, prompt_row: int) -> None:
        if not self.params.hidden:
            return self._run(prompt_row)
        with self.backend._hidden_outputs():  # the prompt was read without them
            return self._run(prompt_row)

    def _run(self, prompt_row: int) -> None:
        branches = [_Branch(0, list(self.candidates), [], self.prompt_len - 1, [prompt_row])]
        bounded = False
        while True:
            branches = [b for branch in branches for b in self._advance(branch)]
            if not bounded and self.candidates[0].finish is not None:
                branches, bounded = self._bound_alternatives(branches), True
            interrupted = self.params.interruption() if branches else None
            if not branches or interrupted:
                self.interrupt(interrupted)
                return
            self.stats["branches"] = max(self.stats["branches"], len(branches))
            self._decode_step(branches)

    def interrupt(self, reason: FinishReason | None) -> None:
        for c in self.candidates:
            if c.finish is None:
                c.finish = reason

    def close(self) -> None:
        for c in self.candidates:
            if c.sampler is not None:
                llama_cpp.llama_sampler_free(c.sampler)
                c.sampler = None

    def _bound_alternatives(self, branches: list[_Branch]) -> list[_Branch]:
        """Once the greedy candidate has ended, hold the sampled ones to its length's limit.

        The greedy candidate's length is counted in the rounds it takes with prompt-lookup drafts
        (:func:`~editloop.models.speculative.copy_rounds`): it copies runs from the context in one
        decode step each, and a sampled candidate, which seldom copies, gets as many steps. The count
        depends on the prompt and the greedy tokens alone, so the output does not depend on whether
        this backend drafts.
        """
        if len(self.candidates) == 1 or self.params.stretch <= 0:
            return branches  # nothing to hold (the count would be wasted on the one-candidate path)
        rounds = copy_rounds(self.base, self.candidates[0].tokens)
        limit = alternative_limit(rounds, self.params)
        for c in self.candidates[1:]:
            c.bound(limit)
        live: list[_Branch] = []
        for b in branches:
            b.candidates = [c for c in b.candidates if c.finish is None]
            if b.candidates:
                live.append(b)
            else:
                self._release(b.seq)
        return live

    # -- one step --------------------------------------------------------------------------

    def _advance(self, branch: _Branch) -> list[_Branch]:
        """Sample each candidate along the branch's rows; regroup the live ones by what they emitted."""
        draft_tokens = branch.pending[1:]
        groups: dict[tuple[int, ...], list[_Candidate]] = {}
        accepted = 0
        for c in branch.candidates:
            emitted = self._emit(c, branch.rows, draft_tokens)
            accepted = max(accepted, min(len(emitted) - 1, len(draft_tokens)))
            if c.finish is None:
                groups.setdefault(tuple(emitted), []).append(c)
        self.backend._drafts.record_draft(len(draft_tokens), accepted)
        self.stats["accepted"] += accepted
        memory = self.backend._native.memory
        out: list[_Branch] = []
        # The first group keeps the sequence; others fork it before the first drops its rejected cells.
        for k, (tokens, members) in enumerate(groups.items()):
            valid_end = branch.pos + len(tokens)  # pending[0] and the accepted drafts
            seq = branch.seq if k == 0 else self.free_seqs.pop()
            if k:
                llama_cpp.llama_memory_seq_cp(memory, branch.seq, seq, -1, valid_end)
            out.append(_Branch(seq, members, [tokens[-1]], valid_end))
        if out:
            llama_cpp.llama_memory_seq_rm(memory, branch.seq, out[0].pos, -1)
        else:
            self._release(branch.seq)
        return out

    def _emit(self, c: _Candidate, rows: list[int], draft_tokens: list[int]) -> list[int]:
        """The tokens ``c`` emits this step: drafted ones while its own sampler agrees, then its own."""
        emitted: list[int] = []
        if c.finish is not None:
            return emitted
        for j, row in enumerate(rows):
            token = self._pick(c, row)
            if self._hidden is not None:
                c.hidden = self._hidden[row]
            if self.backend._ends(token):
                c.finish = "stop"
                return emitted
            c.add(token, self._logprob(row, token), self.backend._piece(token), self.params)
            emitted.append(token)
            if c.finish is not None or j >= len(draft_tokens) or token != draft_tokens[j]:
                return emitted
        return emitted

    def _decode_step(self, branches: list[_Branch]) -> None:
        entries: list[tuple[int, int, int, bool]] = []
        for b in branches:
            b.pending += self._draft(b)
            b.rows = list(range(len(entries), len(entries) + len(b.pending)))
            entries += [(t, b.pos + j, b.seq, True) for j, t in enumerate(b.pending)]
        started = time.perf_counter()
        self.backend._decode(entries)
        self.backend._drafts.record_step(len(entries), (time.perf_counter() - started) * 1000)
        self.stats["steps"] += 1
        self.stats["drafted"] += len(entries) - len(branches)
        self._lse.clear()
        self._argmax.clear()
        # Every entry asked for logits, so output i is batch row i: one view for all of them.
        ctx = self.backend._native.ctx
        self._rows = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits(ctx), shape=(len(entries), self.backend._n_vocab)
        )
        if self.params.hidden:
            # A copy: the next step overwrites llama.cpp's buffer, and a candidate keeps its row.
            self._hidden = np.ctypeslib.as_array(
                llama_cpp.llama_get_embeddings(ctx), shape=(len(entries), self.backend._n_embd)
            ).copy()

    def _draft(self, branch: _Branch) -> list[int]:
        """A draft for the branch that carries the greedy candidate; sampled branches draft none.

        The request waits for its slowest sequence, and once the greedy line ends the sampled ones
        are held to its rounds: a drafted token kept on one of several sampled sequences rarely
        saves the request a step, and every draft costs a lookup and a row to sample (measured on
        the starter's typing trace: n=5 took 0.5 ms longer at p50 with sampled sequences drafting).
        Sampled candidates riding in the greedy branch still take its drafted rows where they agree.
        """
        if not self.backend.draft_max or not _has_greedy(branch):
            return []
        c = branch.candidates[0]
        room = min(self.backend._drafts.length(), c.limit - len(c.tokens) - 1)
        if room <= 0:
            return []
        return draft(np.concatenate([self.base, np.asarray(c.tokens, dtype=np.int64)]), room)

    def _release(self, seq: int) -> None:
        memory = self.backend._native.memory
        if seq == 0:
            llama_cpp.llama_memory_seq_rm(memory, 0, self.prompt_len, -1)
        else:
            llama_cpp.llama_memory_seq_rm(memory, seq, -1, -1)
            self.free_seqs.append(seq)

    # -- sampling --------------------------------------------------------------------------

    def _pick(self, c: _Candidate, row: int) -> int:
        if c.sampler is not None:
            return llama_cpp.llama_sampler_sample(c.sampler, self.backend._native.ctx, row)
        if row not in self._argmax:
            self._argmax[row] = int(np.argmax(self._logits(row)))
        return self._argmax[row]

    def _logits(self, row: int) -> np.ndarray:
        return self.backend._logits(row) if self._rows is None else self._rows[row]

    def _logprob(self, row: int, token: int) -> float:
        """log P(token) under the unscaled distribution of ``row``."""
        logits = self._logits(row)
        if row not in self._lse:
            peak = float(logits.max())
            self._lse[row] = peak + float(np.log(np.exp(logits - peak).sum(dtype=np.float64)))
        return float(logits[token]) - self._lse[row]


def _has_greedy(branch: _Branch) -> bool:
    return any(c.sampler is None for c in branch.candidates)


def _sampler(params: GenerationParams, index: int) -> Any:
    """Candidate ``index``'s own chain, seeded so its text does not depend on how many others ran."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    seed = (params.seed * 1_000_003 + index) % 0xFFFFFFFF  # 0xFFFFFFFF would mean "random"
    for part in (
        llama_cpp.llama_sampler_init_top_k(TOP_K),
        llama_cpp.llama_sampler_init_temp(params.temperature),
        llama_cpp.llama_sampler_init_top_p(params.top_p, 1),
        llama_cpp.llama_sampler_init_dist(seed),
    ):
        llama_cpp.llama_sampler_chain_add(chain, part)
    return chain


# -- loading ---------------------------------------------------------------------------------


def _load(path: Path, n_ctx: int, threads: int, max_candidates: int) -> tuple[_Native, int]:
    """Model, context and batch for ``max_candidates`` sequences of ``n_ctx`` tokens each."""
    if not path.is_file():
        raise ModelError(f"GGUF file {path} does not exist")
    # As Llama(verbose=False) does: llama.cpp's loader writes to fd 2 directly, and its warnings
    # here are expected (a unified KV cache is larger than the trained context on purpose).
    set_verbose(False)
    with suppress_stdout_stderr(disable=False):
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params)
        if not model:
            raise ModelError(f"llama.cpp could not load {path}; is it a GGUF of a supported architecture?")
        n_ctx = n_ctx or llama_cpp.llama_model_n_ctx_train(model)
        ctx = llama_cpp.llama_init_from_model(model, _context_params(n_ctx, threads, max_candidates))
    if not ctx:
        llama_cpp.llama_model_free(model)
        raise ModelError(f"llama.cpp could not create a context for {max_candidates} sequences for {path}")
    batch = llama_cpp.llama_batch_init(max(PROMPT_BATCH, max_candidates), 0, 1)
    vocab = llama_cpp.llama_model_get_vocab(model)
    return _Native(model, ctx, batch, vocab, llama_cpp.llama_get_memory(ctx)), n_ctx


def _context_params(n_ctx: int, threads: int, max_candidates: int) -> llama_cpp.llama_context_params:
    params = llama_cpp.llama_context_default_params()
    # One cell pool for all sequences (kv_unified): the shared prompt is stored once and each
    # sampled candidate adds only its own tokens.
    params.n_ctx = n_ctx + (max_candidates - 1) * min(n_ctx, SAMPLED_RESERVE)
    params.n_batch = params.n_ubatch = min(PROMPT_BATCH, params.n_ctx)
    params.n_seq_max = max_candidates + 1  # and the spare sequence moved KV waits in
    params.kv_unified = True
    params.n_threads = params.n_threads_batch = threads
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as Llama() by default
    return params


def _free_native(native: _Native) -> None:
    llama_cpp.llama_batch_free(native.batch)
    llama_cpp.llama_free(native.ctx)
    llama_cpp.llama_model_free(native.model)


def _token_bytes(vocab: Any, token: int) -> bytes:
    size = 64
    for _ in range(2):
        buffer = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(vocab, token, buffer, size, 0, False)
        if n >= 0:
            return buffer.raw[:n]
        size = -n
    raise ModelError(f"llama.cpp could not turn token {token} into text")


def _copy(generation: Generation) -> Generation:
    return dataclasses.replace(
        generation, token_ids=list(generation.token_ids), logprobs=list(generation.logprobs)
    )
