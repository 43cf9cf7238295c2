"""Tokenizing a text that extends a recent one: only from its last reusable line start on.

While a developer types, the text before the cursor (kept from the prompt's sticky cut) grows by a
few characters per request, and tokenizing all of it again cost the starter 0.7 ms of a 4 ms
request. A byte-level BPE tokenizer first splits text into pre-tokens with a regular expression and
merges bytes only within one. In the expressions of GPT-2, Llama 3 and Qwen2 alike, the first word
of a line starts a pre-token: at the line start when the line is not indented, one space before the
word when it is indented by spaces (the word takes that space, :func:`line_split`). Where the
pre-tokens before that point end depends on nothing after the word's first byte, so two texts that
share everything up to it share their tokens up to the split, and the tokens after it are those of
the text from there alone. A tokenizer that splits otherwise (SentencePiece adds a space before a
text's first word) fails :func:`splits_at_line_starts` and is never trusted with it.

>>> text = b"def f(x):\\n    return x\\nprint(f(1))\\n"
>>> reusable_start(text, len(text) - 3, [3, 5, 9, 10, 14, 21, 23, 28, 35])  # tokens' ends
(23, 7)
"""

import bisect
import threading
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate

# Texts shorter than this are tokenized whole: there is little to save, and nothing worth keeping.
# (The starter's 384-token context holds about 1,000 bytes of the text before the cursor.)
LEAST_BYTES = 256
# How many recent texts are kept to extend: the text before the cursor, and a few others a request
# tokenizes beside it (another document's, a context snippet) that must not push it out.
SLOTS = 4
# Line starts tried, walking back from where the new text departs from a kept one.
TRIES = 8
# Code whose unindented and space-indented words (the splits checked) follow blank lines, comments,
# operators, digits, quotes, brackets, tab-indented and non-ASCII lines and an indented blank line:
# whatever precedes a split in real code.
SAMPLE = (
    "import os\n\nclass Point:\n    x: int = 0  # first\n\n\n    def norm(p):\n        return (p.x ** 2\n"
    "            + 1)\n    \n        # done\n        42\n        'quoted'\n\t\tx = [1, 2]\n"
    "\u00e9t\u00e9 = 1\n  y = {\n}\nz = 3\n"
).encode()


@dataclass(frozen=True, eq=False)  # compared by identity: a kept text is found by common prefix
class _Tokenized:
    data: bytes
    ids: list[int]
    ends: list[int]  # the byte offset each token ends at


def splits_at_line_starts(tokenize: Callable[[bytes], list[int]], piece_length: Callable[[int], int]) -> bool:
    """Whether, at every :func:`line_split` of :data:`SAMPLE`, the tokens of the whole text end
    there and those after it are the tokens of the text after it alone."""
    whole = tokenize(SAMPLE)
    ends = list(accumulate(piece_length(t) for t in whole))
    if not ends or ends[-1] != len(SAMPLE):
        return False
    for newline in (i for i, byte in enumerate(SAMPLE) if byte == ord("\n")):
        split = line_split(SAMPLE, newline)
        if split is None:
            continue
        k = _tokens_through(ends, split)
        if k is None or whole[k:] != tokenize(SAMPLE[split:]):
            return False
    return True


def line_split(data: bytes, newline: int) -> int | None:
    """Where the pre-token of the first word of the line after ``data[newline]`` begins, when that
    line is indented by spaces only (or not at all) and starts with an ASCII letter; else None.

    The word takes the space before it (`` ?\\p{L}+``), so an indented line splits one byte before
    its word; an unindented one at its start (no expression lets a word take a newline).
    """
    line = newline + 1
    word = line
    while word < len(data) and data[word] == 0x20:
        word += 1
    if word >= len(data) or not (0x41 <= data[word] <= 0x5A or 0x61 <= data[word] <= 0x7A):
        return None
    return word if word == line else word - 1


def reusable_start(data: bytes, common: int, ends: list[int]) -> tuple[int, int] | None:
    """(b, k): the last :func:`line_split` b whose word starts before byte ``common`` (so the kept
    text and ``data`` agree on every byte that decides the split) and where a token of the kept text
    ends, k being how many tokens end by it; None if none is near.
    """
    limit = common
    for _ in range(TRIES):
        newline = data.rfind(b"\n", 0, limit)
        if newline < 0:
            return None
        split = line_split(data, newline)
        if split is not None and split + 1 < common:
            k = _tokens_through(ends, split)
            if k is not None:
                return split, k
        limit = newline
    return None


def _tokens_through(ends: list[int], offset: int) -> int | None:
    """How many tokens end by byte ``offset``, when one ends exactly there; else None."""
    k = bisect.bisect_left(ends, offset)
    return k + 1 if k < len(ends) and ends[k] == offset else None


class RecentTokens:
    """Tokenizes through ``tokenize``, reusing a recent long text's tokens up to the last line start
    the new text shares with it. Only for a tokenizer :func:`splits_at_line_starts` approves.

    Safe to share between threads: the kept texts are swapped under a lock, and ``tokenize`` runs
    outside it.
    """

    def __init__(self, tokenize: Callable[[bytes], list[int]], piece_length: Callable[[int], int]) -> None:
        self._tokenize = tokenize
        self._piece_length = piece_length
        self._kept: list[_Tokenized] = []  # most recently used last
        self._lock = threading.Lock()
        self.reused_bytes = 0  # bytes not tokenized again, in all (for tests and measurements)

    def __call__(self, data: bytes) -> list[int]:
        if len(data) < LEAST_BYTES:
            return self._tokenize(data)
        with self._lock:
            found = self._best(data)
        start, head, head_ends = 0, [], []
        if found is not None:
            kept, start, k = found
            head, head_ends = kept.ids[:k], kept.ends[:k]
        tail = self._tokenize(data[start:])
        ids = head + tail
        ends = head_ends + list(accumulate((self._piece_length(t) for t in tail), initial=start))[1:]
        with self._lock:
            self.reused_bytes += start
            if found is not None and found[0] in self._kept:
                self._kept.remove(found[0])  # the text it extends is superseded
            if ends and ends[-1] == len(data):  # else some token's bytes are not its text: keep none
                self._kept.append(_Tokenized(data, ids, ends))
            del self._kept[:-SLOTS]
        return ids

    def _best(self, data: bytes) -> tuple[_Tokenized, int, int] | None:
        """The kept text sharing the longest prefix with ``data``, and the byte and token to resume
        at in it; None when none shares a line start."""
        best, common = None, 0
        for kept in self._kept:
            shared = common_prefix(kept.data, data)
            if shared > common:
                best, common = kept, shared
        split = None if best is None else reusable_start(data, common, best.ends)
        return None if best is None or split is None else (best, *split)


def common_prefix(a: bytes, b: bytes) -> int:
    """Length of the longest common prefix, by halving (each comparison a memcmp, not a Python loop).

    >>> common_prefix(b"abcdef", b"abcxyz"), common_prefix(b"", b"a"), common_prefix(b"ab", b"ab")
    (3, 0, 2)
    """
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low
