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
gives up at most one step of its share for that.
"""

import math
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


def build_prompt(
    backend: PromptModel,
    prefix: str,
    suffix: str,
    extra: list[Snippet],
    filepath: str | None,
    max_new_tokens: int,
) -> Prompt:
    """Token ids of the FIM prompt; :class:`BadRequestError` if max_tokens leaves no room for one."""
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
    prefix_ids, truncated = _tail(backend, prefix, room, step, chars_per_token)
    ids = [*extra_ids, *ordered(prefix_ids, suffix_ids, (pre_id, suf_id, mid_id), fim.spm)]
    return Prompt(ids, len(prefix_ids), len(suffix_ids), len(extra_ids), truncated, used)


def _tail(
    backend: PromptModel, text: str, limit: int, step: int, chars_per_token: float | None = None
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
    if chars_per_token and len(text) > limit * chars_per_token:
        least = len(text) - int(limit * chars_per_token * GUESS_MARGIN)
        found = _from_cut(backend, text, limit, step, least)
        # Past a grid point that did not fit, no cut keeps more: a short share is all there is.
        if found is not None and (found[1] or len(found[0]) >= limit * GUESS_FILL):
            return found[0], True
    start = max(0, len(text) - limit * CHARS_PER_TOKEN_MAX)
    ids = backend.tokenize(text[start:])
    if len(ids) <= limit and start == 0:
        return ids, False
    # Where the cut must be at least, from this text's own characters per token.
    least = len(text) - int(limit * (len(text) - start) / max(1, len(ids)))
    found = _from_cut(backend, text, limit, step, max(least, start))
    return (found[0], True) if found is not None else (ids[len(ids) - limit :], True)


def _from_cut(
    backend: PromptModel, text: str, limit: int, step: int, least: int
) -> tuple[list[int], bool] | None:
    """The tokens from a line start after a grid point at or past ``least`` that fit in ``limit``,
    and whether a try before them did not fit; None when four tries find none.

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
            return kept, failed
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
