"""Prompt-lookup drafts: a completion mostly copies from its context, so the tokens that followed
the latest earlier occurrence of the last few tokens are a good guess of the next ones.

The backend decodes a draft together with the token before it in one batch and keeps the drafted
tokens its own sampler would have chosen anyway, so speculation changes the speed of decoding and
never its output. :class:`DraftPolicy` decides how long a draft pays for itself.

>>> draft([7, 1, 2, 3, 9, 8, 5, 1, 2, 3], max_tokens=2)
[9, 8]
>>> draft([7, 1, 2, 3, 9, 8, 5, 1, 2, 4], max_tokens=2)
[]
>>> copy_rounds([7, 1, 2, 3, 9, 8], [5, 1, 2, 3, 9, 8, 4])  # 5; 1; 2; 3 9 8 drafted and 4
4
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Longest n-gram first: a longer match predicts better (Zed's Zeta looks up 2 to 4 tokens).
NGRAM_SIZES = (4, 3, 2)
# The draft length copy_rounds counts with: the default most a step drafts (model_draft_max).
ROUND_TOKENS = 8


def draft(
    context: Sequence[int] | np.ndarray, max_tokens: int, sizes: Sequence[int] = NGRAM_SIZES
) -> list[int]:
    """Up to ``max_tokens`` tokens that followed the latest earlier match of the context's last n-gram."""
    tokens = np.asarray(context, dtype=np.int64)
    total = len(tokens)
    if max_tokens <= 0 or total < 2:
        return []
    # Earlier positions holding the last token: the ends of every possible match.
    ends = np.flatnonzero(tokens[:-1] == tokens[-1])
    for n in sizes:
        candidates = ends[ends >= n - 1]
        for back in range(1, n):
            candidates = candidates[tokens[candidates - back] == tokens[total - 1 - back]]
        if len(candidates):
            start = int(candidates[-1]) + 1
            return tokens[start : start + max_tokens].tolist()
    return []


def copy_rounds(
    context: Sequence[int] | np.ndarray, tokens: Sequence[int], max_draft: int = ROUND_TOKENS
) -> int:
    """The decode rounds greedy decoding of ``tokens`` after ``context`` takes when each round after
    the first drafts ``max_draft`` tokens by prompt lookup: a round emits its own token plus one for
    each drafted token that matched. A line the model writes afresh takes a round a token; one it
    copies from the context, a round a run.
    """
    whole = np.concatenate([np.asarray(context, dtype=np.int64), np.asarray(tokens, dtype=np.int64)])
    start, done, rounds = len(whole) - len(tokens), 0, 0
    while done < len(tokens):
        guess = draft(whole[: start + done], max_draft) if done else []
        matched = 0
        for guessed, actual in zip(guess, tokens[done:], strict=False):
            if guessed != actual:
                break
            matched += 1
        done += matched + 1
        rounds += 1
    return rounds


@dataclass
class DraftPolicy:
    """How many tokens to draft, from what drafting has cost and earned so far on this backend.

    Drafted token j is kept with probability ``acceptance ** j`` (each one after the first only
    if the one before was kept) and saves a decode step when it is; it costs its share of the
    batch it rides in. So a draft is as long as ``acceptance ** j * step_ms > token_ms`` allows.
    On a tiny model an extra token in a batch is nearly free; on a 0.5B model on a CPU it costs
    half a step, and only drafts that are mostly kept pay. Only the greedy candidate's sequence
    drafts (see ``_Decoder._draft``), so the counts are its own.
    """

    limit: int
    kept: float = 2.0  # decayed count of drafted tokens kept
    rejected: float = 2.0  # decayed count of drafts ended by a rejected token
    step_ms: float | None = None  # a one-token decode step
    token_ms: float | None = None  # what each further token adds to a step
    decay: float = 0.95

    def acceptance(self) -> float:
        return self.kept / (self.kept + self.rejected)

    def length(self) -> int:
        """Tokens to draft for the greedy sequence."""
        if self.limit <= 0 or self.step_ms is None:
            return 0  # measure a plain step first
        if self.token_ms is None or self.token_ms <= 0:
            return self.limit
        ratio = self.token_ms / self.step_ms
        if ratio >= 1:
            return 0
        alpha = min(self.acceptance(), 0.999)
        return max(0, min(self.limit, int(math.log(ratio) / math.log(alpha))))

    def record_draft(self, drafted: int, kept: int) -> None:
        if drafted == 0:
            return
        self.kept = self.kept * self.decay + kept
        self.rejected = self.rejected * self.decay + (kept < drafted)

    def record_step(self, tokens: int, ms: float) -> None:
        if tokens == 1:
            self.step_ms = ms if self.step_ms is None else 0.8 * self.step_ms + 0.2 * ms
        elif self.step_ms is not None:
            extra = max(0.0, (ms - self.step_ms) / (tokens - 1))
            self.token_ms = extra if self.token_ms is None else 0.8 * self.token_ms + 0.2 * extra
