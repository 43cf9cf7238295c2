"""Which cached prompt tokens a new prompt can keep, and the documents whose cache is kept.

An editor asks again after every pause in typing, and the prompt it gets changes little:

- typing at the cursor extends the prompt's common prefix with the last one: that KV is kept
  exactly (what llama-cpp-python's ``create_completion`` also does);
- with ``min_chunk`` > 0, runs of at least that many tokens found again later in the prompt
  (the suffix after text was typed before it, the prefix after the window slid past its first
  lines) are kept too, their KV moved to the new positions as llama.cpp's ``--cache-reuse``
  does. That is an approximation: a moved token's KV was computed next to tokens that are now
  gone or were not yet there, so the output can differ from evaluating the prompt afresh.
  Each cached token counts how far it has been moved since it was evaluated (``stale``); a run
  that would pass ``max_stale`` is evaluated afresh instead, so the approximation stays bounded
  however long the developer types.

>>> plan = plan_reuse([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 9, 4, 5, 6, 7, 8], min_chunk=3)
>>> plan.prefix, plan.chunks, plan.evaluate
(2, [Chunk(start=3, end=7, to=3)], [2, 7])
"""

from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_LOOKUP = 4  # tokens that index cached runs; a run is kept only if it is min_chunk long


@dataclass(frozen=True)
class Chunk:
    """Cached positions [start, end) that the new prompt holds at [to, to + end - start)."""

    start: int
    end: int
    to: int


@dataclass
class ReusePlan:
    prefix: int  # the common prefix kept in place
    chunks: list[Chunk] = field(default_factory=list)  # moved runs, in prompt order
    evaluate: list[int] = field(default_factory=list)  # prompt positions to decode (includes the last)

    @property
    def kept(self) -> int:
        return self.prefix + sum(c.end - c.start for c in self.chunks)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def plan_reuse(
    cached: Sequence[int],
    prompt: Sequence[int],
    min_chunk: int = 0,
    stale: Sequence[int] | None = None,
    max_stale: int = 64,
) -> ReusePlan:
    """Keep the common prefix, then (``min_chunk`` > 0) cached runs found again in order.

    ``stale[i]``: how many positions cached token i has moved since it was evaluated (0 if None).
    The prompt's last token is always evaluated: its logits start the completion.
    """
    prefix = min(common_prefix(cached, prompt), len(prompt) - 1)
    moved = stale if stale is not None else [0] * len(cached)
    chunks = _chunks(cached, prompt, prefix, min_chunk, moved, max_stale) if min_chunk > 0 else []
    if chunks and chunks[-1].to + chunks[-1].end - chunks[-1].start == len(prompt):
        last = chunks.pop()
        if last.end - last.start > 1:
            chunks.append(Chunk(last.start, last.end - 1, last.to))
    covered = {p for c in chunks for p in range(c.to, c.to + c.end - c.start)}
    evaluate = [p for p in range(prefix, len(prompt)) if p not in covered]
    return ReusePlan(prefix, chunks, evaluate)


def staleness(plan: ReusePlan, stale: Sequence[int], prompt_len: int) -> list[int]:
    """``stale`` of the prompt's tokens once ``plan`` is carried out."""
    out = list(stale[: plan.prefix]) + [0] * (prompt_len - plan.prefix)
    for c in plan.chunks:
        out[c.to : c.to + c.end - c.start] = [s + abs(c.to - c.start) for s in stale[c.start : c.end]]
    return out


def _chunks(
    cached: Sequence[int],
    prompt: Sequence[int],
    prefix: int,
    min_chunk: int,
    stale: Sequence[int],
    max_stale: int,
) -> list[Chunk]:
    """Greedy in prompt order: at each prompt position, the earliest cached run after the last one kept."""
    where: dict[tuple[int, ...], list[int]] = {}
    for i in range(prefix, len(cached) - _LOOKUP + 1):
        where.setdefault(tuple(cached[i : i + _LOOKUP]), []).append(i)
    chunks: list[Chunk] = []
    head_c, head_p = prefix, prefix
    while head_p + max(min_chunk, _LOOKUP) <= len(prompt):
        found = _longest_from(cached, prompt, where, head_c, head_p)
        if found is None or found[1] < min_chunk:
            head_p += 1
            continue
        start, length = found
        if max(stale[start : start + length]) + abs(head_p - start) > max_stale:
            head_p += length  # moved too far too often: evaluated afresh
            continue
        chunks.append(Chunk(start, start + length, head_p))
        head_c, head_p = start + length, head_p + length
    return chunks


def _longest_from(
    cached: Sequence[int],
    prompt: Sequence[int],
    where: dict[tuple[int, ...], list[int]],
    head_c: int,
    head_p: int,
) -> tuple[int, int] | None:
    starts = where.get(tuple(prompt[head_p : head_p + _LOOKUP]), [])
    best: tuple[int, int] | None = None
    for start in starts[bisect_left(starts, head_c) :][:8]:  # a few candidates bound the cost
        n = _LOOKUP
        while (
            start + n < len(cached) and head_p + n < len(prompt) and cached[start + n] == prompt[head_p + n]
        ):
            n += 1
        if best is None or n > best[1]:
            best = (start, n)
    return best


class LruSlots(Generic[K, V]):
    """At most ``capacity`` values, the least recently stored or taken one evicted first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def put(self, key: K, value: V) -> None:
        self._items.pop(key, None)
        if self.capacity <= 0:
            return
        self._items[key] = value
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def take(self, key: K) -> V | None:
        return self._items.pop(key, None)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
