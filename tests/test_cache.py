"""The completion cache: exact hits, type-ahead, LRU eviction, time to live, threads."""

import threading
import time
from collections.abc import Callable

import pytest

from editloop.completion.cache import CacheHit, CompletionCache

PREFIX = "def area(r):\n    return math.p"
SUFFIX = "\n\n\nprint(area(2))\n"
CHOICES = [("i * r ** 2", 0.9), ("i * r * r", 0.6), ("ow(r, 2) * 3.14", 0.3)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _cache(ttl_s: float = 300.0, clock: Callable[[], float] = time.monotonic) -> CompletionCache[float]:
    cache: CompletionCache[float] = CompletionCache(ttl_s=ttl_s, clock=clock)
    cache.put("v1", "python", "line", PREFIX, SUFFIX, CHOICES)
    return cache


def test_exact_hit() -> None:
    hit = _cache().get("v1", "python", "line", PREFIX, SUFFIX)
    assert hit == CacheHit(CHOICES, typeahead=False)


def test_hit_is_a_copy() -> None:
    cache = _cache()
    hit = cache.get("v1", "python", "line", PREFIX, SUFFIX)
    assert hit is not None
    hit.choices.clear()
    assert cache.get("v1", "python", "line", PREFIX, SUFFIX) == CacheHit(CHOICES, typeahead=False)


@pytest.mark.parametrize(
    ("key", "why"),
    [
        (("v2", "python", "line", PREFIX, SUFFIX), "another model version"),
        (("v1", "rust", "line", PREFIX, SUFFIX), "another language"),
        (("v1", "python", "block", PREFIX, SUFFIX), "another mode"),
        (("v1", "python", "line", PREFIX, SUFFIX + "x = 1\n"), "another suffix"),
        (("v1", "python", "line", PREFIX[:-1], SUFFIX), "text deleted"),
        (("v1", "python", "line", "import math\n" + PREFIX, SUFFIX), "another prefix"),
    ],
)
def test_miss(key: tuple[str, str, str, str, str], why: str) -> None:
    assert _cache().get(*key) is None, why


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("i", [(" * r ** 2", 0.9), (" * r * r", 0.6)]),
        ("i *", [(" r ** 2", 0.9), (" r * r", 0.6)]),
        ("i * r *", [("* 2", 0.9), (" r", 0.6)]),
        ("ow(", [("r, 2) * 3.14", 0.3)]),
    ],
)
def test_typeahead_hit(typed: str, expected: list[tuple[str, float]]) -> None:
    hit = _cache().get("v1", "python", "line", PREFIX + typed, SUFFIX)
    assert hit == CacheHit(expected, typeahead=True)


@pytest.mark.parametrize(
    ("typed", "why"),
    [
        ("x", "the typed text diverges from every choice"),
        ("i * r ** 2", "the whole completion was typed: nothing is left to show"),
        ("i\n", "a newline was typed"),
        ("i * r ** 2\n    ", "a newline was typed"),
    ],
)
def test_typeahead_miss(typed: str, why: str) -> None:
    assert _cache().get("v1", "python", "line", PREFIX + typed, SUFFIX) is None, why


def test_typeahead_needs_the_same_suffix() -> None:
    assert _cache().get("v1", "python", "line", PREFIX + "i", SUFFIX + "\n") is None


def test_typeahead_prefers_the_latest_completion_of_the_line() -> None:
    cache = _cache()
    cache.put("v1", "python", "line", PREFIX + "i *", SUFFIX, [(" 2 * r", 0.7)])
    hit = cache.get("v1", "python", "line", PREFIX + "i * 2", SUFFIX)
    assert hit == CacheHit([(" * r", 0.7)], typeahead=True)
    # an older, shorter prefix still serves text the newer entry does not have
    hit = cache.get("v1", "python", "line", PREFIX + "i * r", SUFFIX)
    assert hit == CacheHit([(" ** 2", 0.9), (" * r", 0.6)], typeahead=True)


def test_put_replaces() -> None:
    cache = _cache()
    cache.put("v1", "python", "line", PREFIX, SUFFIX, [("i", 0.5)])
    assert len(cache) == 1
    assert cache.get("v1", "python", "line", PREFIX, SUFFIX) == CacheHit([("i", 0.5)], typeahead=False)


def test_lru_eviction() -> None:
    cache: CompletionCache[float] = CompletionCache(max_entries=3)
    for i in range(3):
        cache.put("v1", "python", "line", f"x{i} = ", "\n", [(str(i), 0.5)])
    assert cache.get("v1", "python", "line", "x0 = ", "\n") is not None  # x0 is now the most recent
    cache.put("v1", "python", "line", "x3 = ", "\n", [("3", 0.5)])
    assert len(cache) == 3
    assert cache.get("v1", "python", "line", "x1 = ", "\n") is None  # least recently used
    for i in (0, 2, 3):
        assert cache.get("v1", "python", "line", f"x{i} = ", "\n") is not None


def test_typeahead_hit_counts_as_use() -> None:
    cache: CompletionCache[float] = CompletionCache(max_entries=2)
    cache.put("v1", "python", "line", "a = f", "\n", [("oo()", 0.5)])
    cache.put("v1", "python", "line", "b = ", "\n", [("1", 0.5)])
    assert cache.get("v1", "python", "line", "a = fo", "\n") is not None
    cache.put("v1", "python", "line", "c = ", "\n", [("2", 0.5)])
    assert cache.get("v1", "python", "line", "a = f", "\n") is not None
    assert cache.get("v1", "python", "line", "b = ", "\n") is None


def test_ttl() -> None:
    clock = FakeClock()
    cache = _cache(ttl_s=300.0, clock=clock)
    clock.now += 299.0
    assert cache.get("v1", "python", "line", PREFIX, SUFFIX) is not None
    assert cache.get("v1", "python", "line", PREFIX + "i", SUFFIX) is not None
    clock.now += 1.0
    assert cache.get("v1", "python", "line", PREFIX + "i", SUFFIX) is None
    assert cache.get("v1", "python", "line", PREFIX, SUFFIX) is None
    assert len(cache) == 0


def test_len_drops_expired_entries() -> None:
    clock = FakeClock()
    cache = _cache(ttl_s=10.0, clock=clock)
    clock.now += 5.0
    cache.put("v1", "python", "line", "y = ", "\n", [("2", 0.5)])
    assert len(cache) == 2
    clock.now += 5.0
    assert len(cache) == 1


def test_clear() -> None:
    cache = _cache()
    cache.clear()
    assert len(cache) == 0
    assert cache.get("v1", "python", "line", PREFIX, SUFFIX) is None
    assert cache.get("v1", "python", "line", PREFIX + "i", SUFFIX) is None


def test_max_entries_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        CompletionCache(max_entries=0)


def test_payload_may_be_any_object() -> None:
    cache: CompletionCache[dict[str, int]] = CompletionCache()
    cache.put("v1", "rust", "block", "fn f() {\n    ", "\n}", [("let x = 1;", {"id": 7})])
    assert cache.get("v1", "rust", "block", "fn f() {\n    let", "\n}") == CacheHit(
        [(" x = 1;", {"id": 7})], typeahead=True
    )


def test_threads_share_one_cache() -> None:
    cache: CompletionCache[float] = CompletionCache(max_entries=50)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(200):
                prefix = f"v{worker}_{i % 60} = comp"
                cache.put("v1", "python", "line", prefix, "\n", [("ute()", 0.5)])
                cache.get("v1", "python", "line", prefix + "u", "\n")
                len(cache)
        except BaseException as exc:  # surfaced below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(cache) <= 50
