"""Recent completions, reused when the same request comes back or the user types into a completion.

Type-ahead: after completing ``total = comp|`` with ``ute(a, b)``, typing ``u`` asks again with prefix
``total = compu``; the cache answers ``te(a, b)`` at once instead of running the model.

>>> cache = CompletionCache()
>>> cache.put("v1", "python", "line", "total = comp", "\\n", [("ute(a, b)", 0.9), ("are(a)", 0.4)])
>>> cache.get("v1", "python", "line", "total = compu", "\\n")
CacheHit(choices=[('te(a, b)', 0.9)], typeahead=True)
"""

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

# (model version, language, mode, prefix, suffix)
_Key = tuple[str, str, str, str, str]
# Type-ahead candidates share everything but the text typed on the cursor line, so they are found
# by (model version, language, mode, suffix, prefix up to the cursor line) without a scan.
_LineKey = tuple[str, str, str, str, str]


@dataclass(frozen=True)
class CacheHit(Generic[T]):
    """Cached choices as (text, payload) pairs; typeahead: texts shortened by what was typed since."""

    choices: list[tuple[str, T]]
    typeahead: bool


@dataclass
class _Entry(Generic[T]):
    choices: list[tuple[str, T]]
    stored_at: float


class CompletionCache(Generic[T]):
    """A thread-safe LRU of choice lists with a time to live.

    Each choice is a (text, payload) pair: the engine stores (text, score); only the text is read.
    """

    def __init__(
        self, max_entries: int = 100, ttl_s: float = 300.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries}")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[_Key, _Entry[T]] = OrderedDict()
        self._by_line: dict[_LineKey, set[_Key]] = {}
        self._lock = threading.Lock()

    def get(self, version: str, language: str, mode: str, prefix: str, suffix: str) -> CacheHit[T] | None:
        """The choices for this exact request, else type-ahead choices from an earlier one, else None."""
        key = (version, language, mode, prefix, suffix)
        with self._lock:
            now = self._clock()
            entry = self._live(key, now)
            if entry is not None:
                self._entries.move_to_end(key)
                return CacheHit(list(entry.choices), typeahead=False)
            return self._typeahead(key, now)

    def put(
        self,
        version: str,
        language: str,
        mode: str,
        prefix: str,
        suffix: str,
        choices: Sequence[tuple[str, T]],
    ) -> None:
        key = (version, language, mode, prefix, suffix)
        with self._lock:
            self._remove(key)
            self._entries[key] = _Entry(list(choices), self._clock())
            self._by_line.setdefault(_line_key(key), set()).add(key)
            while len(self._entries) > self.max_entries:
                self._remove(next(iter(self._entries)))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._by_line.clear()

    def __len__(self) -> int:
        """Entries that can still hit (expired ones are dropped on the way)."""
        with self._lock:
            now = self._clock()
            for key in [k for k, e in self._entries.items() if self._expired(e, now)]:
                self._remove(key)
            return len(self._entries)

    def _typeahead(self, key: _Key, now: float) -> CacheHit[T] | None:
        prefix = key[3]
        earlier = [k for k in self._by_line.get(_line_key(key), ()) if len(k[3]) < len(prefix)]
        # The longest earlier prefix is the latest completion shown for this line.
        for source in sorted(earlier, key=lambda k: len(k[3]), reverse=True):
            entry = self._live(source, now)
            if entry is None or not prefix.startswith(source[3]):
                continue
            typed = prefix[len(source[3]) :]
            choices = [(text[len(typed) :], p) for text, p in entry.choices if text.startswith(typed)]
            choices = [(text, p) for text, p in choices if text]
            if choices:
                self._entries.move_to_end(source)
                return CacheHit(choices, typeahead=True)
        return None

    def _live(self, key: _Key, now: float) -> _Entry[T] | None:
        entry = self._entries.get(key)
        if entry is not None and self._expired(entry, now):
            self._remove(key)
            return None
        return entry

    def _expired(self, entry: _Entry[T], now: float) -> bool:
        return now - entry.stored_at >= self.ttl_s

    def _remove(self, key: _Key) -> None:
        if self._entries.pop(key, None) is None:
            return
        line_key = _line_key(key)
        same_line = self._by_line.get(line_key)
        if same_line is not None:
            same_line.discard(key)
            if not same_line:
                del self._by_line[line_key]


def _line_key(key: _Key) -> _LineKey:
    version, language, mode, prefix, suffix = key
    return (version, language, mode, suffix, prefix[: prefix.rfind("\n") + 1])
