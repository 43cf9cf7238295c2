"""KV reuse across requests: the plan, one cache per document, and KV-shifted chunks on the tiny GGUF."""

import dataclasses
from collections.abc import Iterator

import pytest

from editloop.completion.engine import CompletionEngine, EngineConfig
from editloop.completion.served import load_served
from editloop.completion.types import CompletionRequest
from editloop.models.backend import GenerationParams
from editloop.models.kvcache import Chunk, LruSlots, plan_reuse, staleness
from editloop.models.llama import LlamaBackend
from editloop.models.manager import ModelManager
from editloop.models.registry import ModelVersion, Registry

FILE_A = "import os\n\n\ndef load(path):\n    with open(path) as f:\n        data = f.read()\n    return "
FILE_B = (
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        "
)
SUFFIX = "\n\n\ndef main():\n    print(load('x'))\n    return 0\n"


def test_plan_keeps_the_common_prefix_and_evaluates_the_rest() -> None:
    plan = plan_reuse([1, 2, 3, 4], [1, 2, 3, 4, 5, 6])
    assert (plan.prefix, plan.chunks, plan.evaluate, plan.kept) == (4, [], [4, 5], 4)
    same = plan_reuse([1, 2, 3], [1, 2, 3])
    assert same.prefix == 2 and same.evaluate == [2]  # the last token is evaluated again for its logits
    assert plan_reuse([], [7, 8]).evaluate == [0, 1]


def test_plan_moves_runs_after_an_insertion_and_a_slid_window() -> None:
    cached = [1, *range(10, 30), 2, *range(50, 60), 3]
    # Typing inserted 90 91 before the suffix; the suffix (2 50..59 3) moves two places on.
    typed = [1, *range(10, 30), 90, 91, 2, *range(50, 60), 3]
    plan = plan_reuse(cached, typed, min_chunk=4)
    assert plan.prefix == 21
    assert plan.chunks == [Chunk(start=21, end=32, to=23)]
    assert plan.evaluate == [21, 22, 34]  # the inserted tokens, and the last one for its logits
    # The window slid: five prefix tokens fell off the front.
    slid = [1, *range(15, 30), 2, *range(50, 60), 3]
    plan = plan_reuse(cached, slid, min_chunk=4)
    assert plan.prefix == 1 and plan.chunks == [Chunk(start=6, end=32, to=1)]
    assert plan.evaluate == [27] and plan.kept == 27
    # Runs shorter than min_chunk are evaluated instead; without min_chunk only the prefix counts.
    assert plan_reuse(cached, slid, min_chunk=40).chunks == []
    assert plan_reuse(cached, typed).chunks == []


def test_runs_moved_too_far_since_evaluated_are_evaluated_afresh() -> None:
    cached = [1, *range(10, 30), 2, *range(50, 60), 3]
    typed = [1, *range(10, 30), 90, 91, 2, *range(50, 60), 3]
    fresh = plan_reuse(cached, typed, min_chunk=4, stale=[0] * len(cached), max_stale=8)
    assert fresh.chunks and staleness(fresh, [0] * len(cached), len(typed))[23:34] == [2] * 11
    worn = [0] * 21 + [7] * 12  # the suffix has moved 7 places already: 2 more passes 8
    again = plan_reuse(cached, typed, min_chunk=4, stale=worn, max_stale=8)
    assert again.chunks == [] and again.evaluate == list(range(21, len(typed)))
    assert staleness(again, worn, len(typed)) == [0] * len(typed)


def test_lru_slots_evict_the_least_recent() -> None:
    slots: LruSlots[str, int] = LruSlots(2)
    slots.put("a", 1)
    slots.put("b", 2)
    slots.put("c", 3)
    assert slots.take("a") is None and slots.take("b") == 2 and len(slots) == 1
    none: LruSlots[str, int] = LruSlots(0)
    none.put("a", 1)
    assert len(none) == 0


def _prompt(backend: LlamaBackend, prefix: str, suffix: str) -> list[int]:
    p, s, m = (backend.special_id(t) for t in (backend.fim.prefix, backend.fim.suffix, backend.fim.middle))
    return [p, *backend.tokenize(prefix), s, *backend.tokenize(suffix), m]  # type: ignore[list-item]


@pytest.fixture
def cold(tiny_version: ModelVersion) -> Iterator[LlamaBackend]:
    """A backend that reuses nothing: its cache holds one document and is cleared before each use."""
    b = LlamaBackend.from_version(tiny_version, n_threads=2, cache_documents=1)
    yield b
    b.close()


def _cold(backend: LlamaBackend, prompt: list[int], params: GenerationParams):
    backend._forget_cache()
    result = backend.generate(prompt, params)
    assert result.cached_tokens == 0
    return result


def test_documents_edited_in_turn_keep_their_cache(tiny_version: ModelVersion, cold: LlamaBackend) -> None:
    warm = LlamaBackend.from_version(tiny_version, n_threads=2, cache_documents=2)
    single = LlamaBackend.from_version(tiny_version, n_threads=2, cache_documents=1)
    try:
        a1, b1 = _prompt(warm, FILE_A, SUFFIX), _prompt(warm, FILE_B, SUFFIX)
        a2 = _prompt(warm, FILE_A + "data", SUFFIX)
        params = GenerationParams(n=3, max_tokens=12, temperature=0.8, seed=4)
        for backend in (warm, single):
            backend.generate(a1, GenerationParams(max_tokens=4, document="a.py"))
            backend.generate(b1, GenerationParams(max_tokens=4, document="b.py"))
        again = warm.generate(a2, dataclasses.replace(params, document="a.py"))
        evicted = single.generate(a2, dataclasses.replace(params, document="a.py"))
        assert again.extra["document_switched"]
        prefix_len = len(_prompt(warm, FILE_A, "")) - 2  # a1's tokens up to the typed text
        assert again.cached_tokens >= prefix_len
        assert evicted.cached_tokens < prefix_len  # b.py's prompt took the only slot
        # Reuse on or off, the same candidates.
        assert again.generations == evicted.generations == _cold(cold, a2, params).generations
        # b.py's cache is parked now; switching back restores it exactly.
        b_again = warm.generate(b1, GenerationParams(max_tokens=12, document="b.py"))
        assert b_again.cached_tokens == len(b1) - 1
        assert b_again.generations == _cold(cold, b1, GenerationParams(max_tokens=12)).generations
    finally:
        warm.close()
        single.close()


def test_kv_shift_reuses_the_suffix_after_typing(tiny_version: ModelVersion, cold: LlamaBackend) -> None:
    shifting = LlamaBackend.from_version(tiny_version, n_threads=2, cache_reuse=8)
    try:
        prompts = [_prompt(shifting, FILE_A[:cut], SUFFIX) for cut in range(60, len(FILE_A) + 1, 6)]
        params = GenerationParams(max_tokens=16, document="a.py")
        evaluated = shifted = same = 0
        for prompt in prompts:
            reused = shifting.generate(prompt, params)
            evaluated += len(prompt) - reused.cached_tokens
            shifted += reused.extra["shifted_tokens"]
            # A moved chunk's KV was computed beside other tokens, so equality is not guaranteed
            # (llama.cpp's --cache-reuse is approximate too): the tiny model, whose weights differ a
            # little from one CPU to another, may flip a near tie (end here or go on) on one prompt.
            # Broken position bookkeeping would change nearly every one.
            baseline = _cold(cold, prompt, GenerationParams(max_tokens=16))
            if reused.generations[0].text == baseline.generations[0].text:
                same += 1
                assert reused.generations[0].logprobs == pytest.approx(
                    baseline.generations[0].logprobs, abs=0.5
                )
        assert same >= len(prompts) - 1, f"{same} of {len(prompts)} greedy texts unchanged"
        assert shifted >= (len(prompts) - 1) * 10  # the suffix (with its FIM markers) moved each time
        assert evaluated < sum(len(p) for p in prompts) / 3
    finally:
        shifting.close()


def test_requests_carry_their_file_to_the_backend_cache(tiny_registry: Registry) -> None:
    models = ModelManager(
        tiny_registry, lambda v: load_served(v, LlamaBackend.from_version(v, cache_documents=3))
    )
    assert models.reload()
    engine = CompletionEngine(models, EngineConfig(abstain_threshold=0.0))
    try:
        with models.lease() as served:
            typed_before = (
                len(served.backend.tokenize(FILE_A)) - 1
            )  # the last token may merge with what follows
        engine.complete(CompletionRequest(prefix=FILE_A, suffix=SUFFIX, filepath="a.py", mode="line"))
        other = engine.complete(CompletionRequest(prefix=FILE_B, suffix=SUFFIX, filepath="b.py", mode="line"))
        back = engine.complete(
            CompletionRequest(prefix=FILE_A + "da", suffix=SUFFIX, filepath="a.py", mode="line")
        )
        assert other.cached_tokens <= 1  # b.py shares only the first FIM marker with a.py
        assert back.cached_tokens >= typed_before
    finally:
        models.close()
