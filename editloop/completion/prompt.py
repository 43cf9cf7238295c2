"""FIM prompts within a token budget, in the model's own template.

The budget (context minus the decode budget) is split like Continue's: the suffix gets at
most a fifth, context from other files at most a quarter, and the prefix — what the user
just wrote — all the rest. With ``<|file_sep|>`` in the vocabulary, other files use the
repo-level layout Qwen2.5-Coder was trained on::

    <|file_sep|>utils.py\\n{code}<|file_sep|>main.py\\n<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>

(suffix first, ``<|fim_suffix|>{suffix}<|fim_prefix|>{prefix}<|fim_middle|>``, for a model whose
template says ``spm``).

A prefix too long for its share is cut at a line start on a fixed grid of character offsets
(:data:`WINDOW_STEPS` steps per context), not token by token: while the user types, the cut stays
where it was, consecutive prompts begin alike, and a KV cache keeps what they share. The prefix
gives up at most one step of its share for that. A :class:`RecentCuts` given to
:func:`build_prompt` keeps the cut exactly where the last prompt of the same text had it for as
long as that still fits well: one tokenization of the prefix per keystroke instead of two.
"""

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from editloop.completion.types import Snippet
from editloop.errors import BadRequestError, ModelError
from editloop.models.fim import FimTemplate, ordered

SUFFIX_SHARE, EXTRA_SHARE = 0.2, 0.25
CHARS_PER_TOKEN_MAX = 8  # pre-trim text before tokenizing: no token is longer than this on average
CHARS_PER_TOKEN = 4  # a typical code token, to size the window's grid in characters
WINDOW_STEPS = 16
SPECIAL_MARGIN = 8
MIN_PROMPT_TOKENS = 16
# The prefix's cut guessed from the suffix's characters per token keeps this share of its room
# (code before and after a cursor differ a little), and is kept if it fills at least GUESS_FILL.
GUESS_MARGIN, GUESS_FILL = 0.98, 0.8
MIN_MEASURED_TOKENS = 32
RECENT_CUTS = 16  # documents whose last cut is remembered


class PromptModel(Protocol):
    """What building a prompt needs of a model: a backend has it, and so does a bare tokenizer
    (training builds the serving prompt without loading the model)."""

    version: str
    fim: FimTemplate
    n_ctx: int

    def tokenize(self, text: str) -> list[int]: ...

    def special_id(self, token: str) -> int | None: ...


@dataclass
class Prompt:
    ids: list[int]
    prefix_tokens: int
    suffix_tokens: int
    extra_tokens: int
    truncated: bool
    snippets: list[int] = field(default_factory=list)  # indices of the extra snippets in the prompt


class RecentCuts:
    """Where the last prompts cut their prefixes, a few documents' worth; safe to share between threads.

    A developer typing appends to the prefix, so the text before the last cut is unchanged and the
    cut usually still fits. Trying it first costs one tokenization; guessing a new cut costs two on
    code denser than the text after the cursor (the guess comes from the suffix). It keeps the
    prompt's start, and with it the KV cache, exactly in place until the share is full.
    """

    def __init__(self, size: int = RECENT_CUTS) -> None:
        self._size = size
        # (grid step, where the cut is, hash of the text before it) → the text's length when a
        # try at the grid point before it did not fit (None: not known). A file's head is not kept.
        self._cuts: OrderedDict[tuple[int, int, int], int | None] = OrderedDict()
        self._lock = threading.Lock()

    def latest(self, text: str, step: int) -> tuple[int, bool] | None:
        """The latest cut on ``step``'s grid whose text before it ``text`` still begins with, and
        whether no earlier grid point can fit (the text after the cut has not shrunk since one did not)."""
        with self._lock:
            cuts = list(reversed(self._cuts.items()))
        for (s, start, head), tight in cuts:
            if s == step and start < len(text) and hash(text[:start]) == head:
                return start, tight is not None and len(text) >= tight
        return None

    def remember(self, text: str, step: int, start: int, tight: bool) -> None:
        key = (step, start, hash(text[:start]))
        with self._lock:
            known = self._cuts.get(key)
            self._cuts[key] = (len(text) if known is None else min(known, len(text))) if tight else None
            self._cuts.move_to_end(key)
            while len(self._cuts) > self._size:
                self._cuts.popitem(last=False)


def build_prompt(
    backend: PromptModel,
    prefix: str,
    suffix: str,
    extra: list[Snippet],
    filepath: str | None,
    max_new_tokens: int,
    cuts: RecentCuts | None = None,
) -> Prompt:
    """Token ids of the FIM prompt; :class:`BadRequestError` if max_tokens leaves no room for one.

    With ``cuts`` a prefix is first cut where a recent prompt of the same text cut it (see
    :class:`RecentCuts`); without, the same request always gives the same prompt.
    """
    budget = backend.n_ctx - max_new_tokens - SPECIAL_MARGIN
    if budget < MIN_PROMPT_TOKENS:
        largest = backend.n_ctx - SPECIAL_MARGIN - MIN_PROMPT_TOKENS
        raise BadRequestError(
            f"max_tokens: {max_new_tokens} leaves no room for a prompt in model {backend.version}'s "
            f"{backend.n_ctx}-token context; ask for at most {largest}"
        )
    fim = backend.fim
    pre_id, suf_id, mid_id = (backend.special_id(t) for t in (fim.prefix, fim.suffix, fim.middle))
    if pre_id is None or suf_id is None or mid_id is None:
        raise ModelError(f"model {backend.version} lacks its FIM tokens")
    suffix_ids, chars_per_token = _head_measured(backend, suffix, int(budget * SUFFIX_SHARE))
    sep_id = backend.special_id(fim.file_sep) if fim.file_sep else None
    extra_ids, used = (
        _extra(backend, extra, filepath, sep_id, int(budget * EXTRA_SHARE))
        if sep_id is not None
        else ([], [])
    )
    room = budget - len(suffix_ids) - len(extra_ids)
    step = max(CHARS_PER_TOKEN, backend.n_ctx * CHARS_PER_TOKEN // WINDOW_STEPS)
    prefix_ids, truncated = _tail(backend, prefix, room, step, chars_per_token, cuts)
    ids = [*extra_ids, *ordered(prefix_ids, suffix_ids, (pre_id, suf_id, mid_id), fim.spm)]
    return Prompt(ids, len(prefix_ids), len(suffix_ids), len(extra_ids), truncated, used)


def _tail(
    backend: PromptModel,
    text: str,
    limit: int,
    step: int,
    chars_per_token: float | None = None,
    cuts: RecentCuts | None = None,
) -> tuple[list[int], bool]:
    """The end of ``text`` in at most ``limit`` tokens, cut at a line start after a multiple of
    ``step`` characters; and whether anything was cut.

    With ``chars_per_token`` (measured on the suffix: the same file) the cut is guessed and the
    kept text tokenized once or a few times; tokenizing 12,000 characters to find the cut, then
    the kept ones again, cost more than the starter's whole decode. A guess that fits at once but
    leaves the share far from full falls back to measuring.
    """
    if not text or limit <= 0:
        return [], bool(text)
    long = len(text) > limit * (chars_per_token or CHARS_PER_TOKEN)
    if cuts is not None and long and (kept := _at_latest_cut(backend, text, limit, step, cuts)) is not None:
        return kept, True
    found = _tail_cut(backend, text, limit, step, chars_per_token if long else None)
    if found.start is not None and cuts is not None:
        cuts.remember(text, step, found.start, found.failed)
    return found.ids, found.truncated


def _at_latest_cut(
    backend: PromptModel, text: str, limit: int, step: int, cuts: RecentCuts
) -> list[int] | None:
    """The tokens from the latest cut of this text, if it is still one a guess would keep."""
    latest = cuts.latest(text, step)
    if latest is None or len(text) - latest[0] > limit * CHARS_PER_TOKEN_MAX:
        return None
    start, tight = latest
    cut = _Cut(backend.tokenize(text[start:]), True, start, tight)
    if not cut.keeps(limit):
        return None
    cuts.remember(text, step, start, tight)
    return cut.ids


@dataclass(frozen=True)
class _Cut:
    ids: list[int]
    truncated: bool
    start: int | None = None  # where a cut at a line start kept the text from
    failed: bool = False  # a try at an earlier grid point did not fit

    def keeps(self, limit: int) -> bool:
        """It fits, and fills the share, unless no earlier grid point fits (then a short share is
        all there is)."""
        return len(self.ids) <= limit and (self.failed or len(self.ids) >= limit * GUESS_FILL)


def _tail_cut(backend: PromptModel, text: str, limit: int, step: int, chars_per_token: float | None) -> _Cut:
    if chars_per_token:
        least = len(text) - int(limit * chars_per_token * GUESS_MARGIN)
        found = _from_cut(backend, text, limit, step, least)
        if found is not None and found.keeps(limit):
            return found
    start = max(0, len(text) - limit * CHARS_PER_TOKEN_MAX)
    ids = backend.tokenize(text[start:])
    if len(ids) <= limit and start == 0:
        return _Cut(ids, False)
    # Where the cut must be at least, from this text's own characters per token.
    least = len(text) - int(limit * (len(text) - start) / max(1, len(ids)))
    found = _from_cut(backend, text, limit, step, max(least, start))
    return found if found is not None else _Cut(ids[len(ids) - limit :], True)


def _from_cut(backend: PromptModel, text: str, limit: int, step: int, least: int) -> _Cut | None:
    """The tokens from a line start after a grid point at or past ``least`` that fit in ``limit``,
    where they start, and whether a try before them did not fit; None when four tries find none.

    A try that does not fit moves the cut by what its surplus tokens span at the density it
    measured, at least a step: where the suffix's characters per token misguess the cut (prose
    after the cursor, dense code before it), a step a try took up to five tokenizations of the
    kept text, and a jump mostly fits at the second. It may pass over a grid point that would
    have fitted, giving up at most what the jump's rounding adds (under a step).
    """
    point, failed = -(-least // step), False
    for _ in range(4):
        cut = point * step
        line = text.find("\n", cut, cut + step)
        start = line + 1 if line >= 0 else cut
        kept = backend.tokenize(text[start:]) if cut < len(text) else []
        if len(kept) <= limit:
            return _Cut(kept, True, start, failed)
        failed = True
        surplus_chars = (len(kept) - limit) * (len(text) - start) / len(kept)
        point += max(1, math.ceil(surplus_chars / step))
    return None


def _head(backend: PromptModel, text: str, limit: int) -> list[int]:
    return _head_measured(backend, text, limit)[0]


def _head_measured(backend: PromptModel, text: str, limit: int) -> tuple[list[int], float | None]:
    """The start of ``text`` in at most ``limit`` tokens, and its characters per token (None: too
    little text to say)."""
    if not text or limit <= 0:
        return [], None
    window = text[: limit * CHARS_PER_TOKEN_MAX]
    ids = backend.tokenize(window)
    ratio = len(window) / len(ids) if len(ids) >= MIN_MEASURED_TOKENS else None
    return ids[:limit], ratio


def _extra(
    backend: PromptModel, snippets: list[Snippet], filepath: str | None, sep_id: int, limit: int
) -> tuple[list[int], list[int]]:
    """Other files by score (a client's unscored snippets first, in its order), whole where they
    fit, then the current file's header; and the indices of the snippets that went in.

    A snippet too long for what is left is skipped for the next, shorter one; only the first,
    most relevant one is cut to fit rather than left out.
    """
    order = sorted(range(len(snippets)), key=lambda i: -_score(snippets[i]))
    ids: list[int] = []
    used: list[int] = []
    for i in order:
        room = limit - len(ids) - 1
        if room <= 8:
            break
        snippet = snippets[i]
        tokens = _head(backend, f"{snippet.filepath}\n{snippet.text}", room + 1)
        if len(tokens) > room:
            if used:
                continue
            tokens = tokens[:room]
        ids += [sep_id, *tokens]
        used.append(i)
    header = [sep_id, *backend.tokenize(f"{filepath}\n")] if ids and filepath else []
    return (ids + header if len(ids) + len(header) <= limit else ids), used


def _score(snippet: Snippet) -> float:
    return math.inf if snippet.score is None else snippet.score
