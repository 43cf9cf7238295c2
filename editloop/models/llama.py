"""The in-process backend: llama.cpp through llama-cpp-python's low-level API.

``n`` candidates cost one prompt evaluation and one ``llama_decode`` per new token: the prompt is
evaluated once on sequence 0, its KV is shared with sequences 1..n-1 (a unified KV cache makes
``llama_memory_seq_cp`` a metadata copy), and every step decodes one token of each live sequence
as a single batch. Candidate 0 is greedy; the others sample with their own seeded generator.

Sequence 0's KV outlives the request: the next prompt re-evaluates only what follows the
longest common prefix, which for an editor typing at the cursor is most of the prompt.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import llama_cpp
import numpy as np
from llama_cpp._logger import set_verbose
from llama_cpp._utils import suppress_stdout_stderr

from editloop.errors import ModelError
from editloop.models.backend import FinishReason, Generation, GenerationParams, GenerationResult
from editloop.models.fim import FimTemplate
from editloop.models.registry import ModelVersion

# KV cells reserved per sampled candidate beyond the first. Completions are short (Tabby: 64
# tokens), so this covers them at a few percent more KV memory; a longer request decodes fewer
# candidates rather than failing.
SAMPLED_RESERVE = 256
PROMPT_BATCH = 512
NEGLIGIBLE = 25.0
_SPECIAL_ATTRS = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED


@dataclass
class _Native:
    """The llama.cpp objects one backend owns, freed in reverse order of creation."""

    model: Any
    ctx: Any
    batch: llama_cpp.llama_batch
    vocab: Any
    memory: Any


class LlamaBackend:
    """A GGUF model in this process; implements :class:`~editloop.models.backend.Backend`.

    ``n_ctx`` is the most tokens one candidate's prompt plus completion may hold (0: the
    model's trained context). The KV cache holds that plus :data:`SAMPLED_RESERVE` tokens for
    each further candidate; a request whose candidates would not fit decodes fewer of them
    (``result.extra["sequences"]`` says how many ran). One llama context is not thread-safe, so
    ``generate`` calls are serialised by a lock.
    """

    def __init__(
        self,
        gguf_path: Path,
        fim: FimTemplate,
        version: str,
        n_ctx: int = 0,
        n_threads: int | None = None,
        max_candidates: int = 8,
    ) -> None:
        if not 1 <= max_candidates <= llama_cpp.llama_max_parallel_sequences():
            raise ModelError(
                f"max_candidates={max_candidates} is out of range; "
                f"llama.cpp decodes 1 to {llama_cpp.llama_max_parallel_sequences()} sequences at once"
            )
        self.version = version
        self.fim = fim
        self.max_candidates = max_candidates
        self._lock = threading.Lock()
        threads = n_threads or os.cpu_count() or 1
        self._native, self.n_ctx = _load(Path(gguf_path), n_ctx, threads, max_candidates)
        # weakref.finalize, not __del__: it runs at interpreter exit while llama_cpp is still intact.
        self._free = weakref.finalize(self, _free_native, self._native)
        self._kv_cells = llama_cpp.llama_n_ctx(self._native.ctx)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._native.vocab)
        self._cached: list[int] = []  # tokens whose KV sequence 0 holds, position i at index i
        self._pieces: dict[int, bytes] = {}
        named = (*fim.eos, fim.pad, fim.file_sep)
        self._end_ids = frozenset(i for t in named if t and (i := self.special_id(t)) is not None)

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
        with self._lock:
            if not self._free.alive:
                raise ModelError(f"model {self.version} is closed")
            try:
                return self._generate(list(prompt_ids), params)
            except BaseException:
                # A failed or interrupted decode leaves the KV in an unknown state.
                self._forget_cache()
                raise

    def close(self) -> None:
        with self._lock:
            self._free()

    # -- one request -----------------------------------------------------------------------

    def _generate(self, prompt: list[int], params: GenerationParams) -> GenerationResult:
        self._check_prompt(prompt, params.max_tokens)
        wanted = 1 if params.temperature <= 0 else min(params.n, self.max_candidates)
        # Sequence 0's prompt cells are shared, each other sequence adds up to max_tokens cells.
        fits = max(1, (self._kv_cells - len(prompt)) // max(1, params.max_tokens))
        candidates = [_Candidate.start(i, params) for i in range(min(wanted, fits))]
        started = time.monotonic()
        evaluated = self._eval_prompt(prompt, params)
        prompt_done = time.monotonic()
        if isinstance(evaluated, str):
            for candidate in candidates:
                candidate.finish = evaluated
            cached = 0
        else:
            cached, row = evaluated
            self._decode_candidates(candidates, row, len(prompt), params)
        generations = [c.result() for c in candidates]
        # Greedy-only requests still answer one generation per requested candidate.
        while len(generations) < params.n and wanted == 1:
            generations.append(_copy(generations[0]))
        return GenerationResult(
            generations=generations,
            prompt_tokens=len(prompt),
            cached_tokens=cached,
            prompt_ms=(prompt_done - started) * 1000,
            decode_ms=(time.monotonic() - prompt_done) * 1000,
            extra={"sequences": len(candidates)},
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
        bad = [t for t in prompt if not 0 <= t < self._n_vocab]
        if bad:
            raise ModelError(f"token id {bad[0]} is outside the vocabulary of {self._n_vocab} tokens")

    def _eval_prompt(self, prompt: list[int], params: GenerationParams) -> tuple[int, int] | FinishReason:
        """Make sequence 0 hold ``prompt``: (cached tokens, logits row of its last token), or why not."""
        # The last token is always evaluated again: its logits start the completion.
        keep = min(_common_prefix(self._cached, prompt), len(prompt) - 1)
        for seq in range(1, self.max_candidates):
            llama_cpp.llama_memory_seq_rm(self._native.memory, seq, -1, -1)
        if not llama_cpp.llama_memory_seq_rm(self._native.memory, 0, keep, -1):
            self._forget_cache()
            keep = 0
        del self._cached[keep:]
        row = 0
        for start in range(keep, len(prompt), PROMPT_BATCH):
            interrupted = params.interruption()
            if interrupted:
                return interrupted
            chunk = prompt[start : start + PROMPT_BATCH]
            self._decode([(token, start + i, 0) for i, token in enumerate(chunk)], logits_last_only=True)
            self._cached.extend(chunk)
            row = len(chunk) - 1
        return keep, row

    def _decode_candidates(
        self, candidates: list["_Candidate"], row: int, pos: int, params: GenerationParams
    ) -> None:
        """Sample and decode every candidate one token per step until each has finished."""
        rows = dict.fromkeys(range(len(candidates)), row)  # all start from the prompt's logits
        shared = False
        while True:
            for c in candidates:
                if c.finish is None:
                    self._step(c, rows[c.seq], params)
            live = [c for c in candidates if c.finish is None]
            interrupted = params.interruption() if live else None
            if not live or interrupted:
                for c in live:
                    c.finish = interrupted
                return
            if not shared:
                for c in live:
                    if c.seq:
                        llama_cpp.llama_memory_seq_cp(self._native.memory, 0, c.seq, -1, -1)
                shared = True
            self._decode([(c.tokens[-1], pos, c.seq) for c in live], logits_last_only=False)
            if live[0].seq == 0:
                self._cached.append(live[0].tokens[-1])
            rows = {c.seq: i for i, c in enumerate(live)}
            pos += 1

    def _step(self, candidate: "_Candidate", row: int, params: GenerationParams) -> None:
        logits = self._logits(row)
        token = _sample(logits, candidate.rng, params.temperature, params.top_p)
        if self._ends(token):
            candidate.finish = "stop"
            return
        candidate.add(token, _logprob(logits, token), self._piece(token), params)

    def _ends(self, token: int) -> bool:
        # End-of-generation tokens only, as llama.cpp's own server decides: other control tokens
        # (a stray FIM marker) add no text and decoding goes on, so a remote llama.cpp or vLLM
        # backend and this one give the same candidates for the same model.
        return token in self._end_ids or llama_cpp.llama_vocab_is_eog(self._native.vocab, token)

    # -- llama.cpp calls -------------------------------------------------------------------

    def _decode(self, entries: list[tuple[int, int, int]], *, logits_last_only: bool) -> None:
        """One ``llama_decode`` of (token, position, sequence) entries."""
        batch = self._native.batch
        batch.n_tokens = len(entries)
        for i, (token, pos, seq) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = not logits_last_only or i == len(entries) - 1
        status = llama_cpp.llama_decode(self._native.ctx, batch)
        if status != 0:
            raise ModelError(f"llama_decode failed with status {status} on model {self.version}")

    def _logits(self, row: int) -> np.ndarray:
        pointer = llama_cpp.llama_get_logits_ith(self._native.ctx, row)
        if not pointer:
            raise ModelError(f"llama.cpp returned no logits for batch row {row}")
        return np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = _token_bytes(self._native.vocab, token)
            self._pieces[token] = piece
        return piece

    def _tokenize(self, data: bytes, special: bool) -> list[int]:
        if not self._free.alive:
            raise ModelError(f"model {self.version} is closed")
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
        self._cached = []


@dataclass
class _Candidate:
    """One sequence's progress: tokens, their log-probs, and its text so far."""

    seq: int
    rng: np.random.Generator | None  # None: greedy
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    ends: list[int] = field(default_factory=list)  # len(text) after each token
    cut: int | None = None  # where a stop string begins
    finish: FinishReason | None = None
    # Holds back the bytes of a character split across tokens until it is complete.
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="ignore")
    )

    @classmethod
    def start(cls, seq: int, params: GenerationParams) -> "_Candidate":
        # One generator per candidate: candidate i's text does not depend on how many others ran.
        return cls(seq, np.random.default_rng([params.seed % 2**64, seq]) if seq else None)

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
        if len(self.tokens) >= params.max_tokens:
            self.finish = "length"

    def result(self) -> Generation:
        assert self.finish is not None
        if self.cut is None:
            return Generation(self.text, self.tokens, self.logprobs, self.finish)
        # Keep the tokens that contribute to the text before the stop string.
        kept = bisect_left(self.ends, self.cut) + 1 if self.cut else 0
        return Generation(self.text[: self.cut], self.tokens[:kept], self.logprobs[:kept], self.finish)


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
    params.n_seq_max = max_candidates
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


# -- sampling --------------------------------------------------------------------------------


def _sample(logits: np.ndarray, rng: np.random.Generator | None, temperature: float, top_p: float) -> int:
    """Argmax without a generator, else a draw from the top-p nucleus at ``temperature``."""
    if rng is None or temperature <= 0:
        return int(np.argmax(logits))
    peak = logits.max()
    # Tokens e^-NEGLIGIBLE below the best hold < 1e-5 of the mass even over 150k tokens.
    ids = np.flatnonzero(logits >= peak - NEGLIGIBLE * temperature)
    weights = np.exp((logits[ids] - peak) / temperature)
    nucleus_mass = top_p * weights.sum(dtype=np.float64)
    head = _head(weights, nucleus_mass)
    order = head[np.argsort(-weights[head], kind="stable")]
    cumulative = np.cumsum(weights[order], dtype=np.float64)
    size = min(len(order), int(np.searchsorted(cumulative, nucleus_mass)) + 1)
    drawn = int(np.searchsorted(cumulative[:size], rng.random() * cumulative[size - 1], side="right"))
    return int(ids[order[min(drawn, size - 1)]])


def _head(weights: np.ndarray, mass: float) -> np.ndarray:
    """Indices of a few largest weights that hold ``mass``, so only they need sorting."""
    for k in (64, 1024):
        if len(weights) > k:
            top = np.argpartition(weights, -k)[-k:]
            if weights[top].sum(dtype=np.float64) >= mass:
                return top
    return np.arange(len(weights))


def _logprob(logits: np.ndarray, token: int) -> float:
    """log P(token) under the unscaled distribution."""
    peak = logits.max()
    return float(logits[token] - peak) - float(np.log(np.exp(logits - peak).sum(dtype=np.float64)))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _copy(generation: Generation) -> Generation:
    return dataclasses.replace(
        generation, token_ids=list(generation.token_ids), logprobs=list(generation.logprobs)
    )
