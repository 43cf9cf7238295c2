"""LlamaBackend against the real tiny GGUF: parity with llama-cpp-python, batching, KV reuse,
speculative decoding, sampling in llama.cpp, stops."""

import ctypes
import dataclasses
import threading
import time
from collections.abc import Iterator

import llama_cpp
import numpy as np
import pytest
from llama_cpp import Llama

from editloop.errors import ModelError
from editloop.models.backend import Generation, GenerationParams, alternative_limit
from editloop.models.llama import TOP_K, LlamaBackend, _Candidate, _sampler
from editloop.models.registry import ModelVersion
from editloop.models.speculative import copy_rounds

SNIPPETS = [
    ("import os\n\n\ndef main(args):\n    ", "\n    return 0\n"),
    ("class Stack:\n    def __init__(self):\n        self.items = ", "\n\n    def pop(self):\n"),
    ("for i in range(10):\n    if i % 2 == 0:\n        ", "\n    else:\n        continue\n"),
]


@pytest.fixture(scope="module")
def backend(tiny_version: ModelVersion) -> Iterator[LlamaBackend]:
    b = LlamaBackend.from_version(tiny_version, n_threads=2)
    yield b
    b.close()


@pytest.fixture(scope="module")
def reference(tiny_version: ModelVersion) -> Iterator[Llama]:
    llm = Llama(str(tiny_version.gguf_path()), n_ctx=0, n_threads=2, verbose=False)
    yield llm
    llm.close()


def fim_prompt(backend: LlamaBackend, prefix: str, suffix: str) -> list[int]:
    fim = backend.fim
    ids = [backend.special_id(t) for t in (fim.prefix, fim.suffix, fim.middle)]
    assert None not in ids
    p, s, m = ids
    return [p, *backend.tokenize(prefix), s, *backend.tokenize(suffix), m]  # type: ignore[list-item]


@pytest.fixture
def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Batch sizes of every llama_decode call, recorded by a spy that still decodes."""
    sizes: list[int] = []
    real = llama_cpp.llama_decode

    def spy(ctx, batch):  # type: ignore[no-untyped-def]
        sizes.append(batch.n_tokens)
        return real(ctx, batch)

    monkeypatch.setattr(llama_cpp, "llama_decode", spy)
    return sizes


def test_tokenize_and_special_ids(backend: LlamaBackend) -> None:
    assert backend.n_ctx == 256
    prefix_id = backend.special_id("<|fim_prefix|>")
    assert prefix_id is not None
    assert backend.tokenize("<|fim_prefix|>") != [prefix_id]  # user code stays plain text
    assert backend.special_id("def") is None
    assert backend.special_id("<|no_such_token|>") is None
    assert backend.special_id(backend.fim.eos[0]) is not None


@pytest.mark.parametrize("prefix, suffix", SNIPPETS)
def test_greedy_equals_llama_cpp_python(
    backend: LlamaBackend, reference: Llama, prefix: str, suffix: str
) -> None:
    prompt = fim_prompt(backend, prefix, suffix)
    result = backend.generate(prompt, GenerationParams(n=1, max_tokens=24))
    [greedy] = result.generations
    expected = reference.create_completion(prompt, max_tokens=24, temperature=0.0)["choices"][0]
    assert greedy.text == expected["text"]
    assert greedy.finish_reason == expected["finish_reason"]
    reference.reset()
    expected_ids = []
    for token in reference.generate(prompt, temp=0.0, reset=True):
        if llama_cpp.llama_vocab_is_eog(reference._model.vocab, token) or len(expected_ids) == 24:
            break
        expected_ids.append(token)
    assert greedy.token_ids == expected_ids


def test_logprobs_are_the_models_unscaled_log_softmax(
    backend: LlamaBackend, tiny_version: ModelVersion
) -> None:
    prompt = fim_prompt(backend, *SNIPPETS[0])
    [greedy] = backend.generate(prompt, GenerationParams(max_tokens=12)).generations
    assert len(greedy.logprobs) == len(greedy.token_ids) == 12
    assert all(lp <= 0 for lp in greedy.logprobs)
    # Teacher-forced check against llama-cpp-python's own logits for the same tokens.
    llm = Llama(str(tiny_version.gguf_path()), n_ctx=0, logits_all=True, verbose=False)
    try:
        llm.eval(prompt + greedy.token_ids)
        scores = llm.scores[len(prompt) - 1 : len(prompt) - 1 + len(greedy.token_ids)].astype(np.float64)
    finally:
        llm.close()
    log_softmax = scores - scores.max(1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
    expected = log_softmax[np.arange(len(greedy.token_ids)), greedy.token_ids]
    np.testing.assert_allclose(greedy.logprobs, expected, atol=1e-4)


def test_candidates_sample_deterministically_around_a_greedy_first(backend: LlamaBackend) -> None:
    prompt = fim_prompt(backend, *SNIPPETS[1])
    [greedy] = backend.generate(prompt, GenerationParams(n=1, max_tokens=16)).generations
    params = GenerationParams(n=5, max_tokens=16, temperature=1.0, top_p=0.95, seed=7)
    first = backend.generate(prompt, params)
    again = backend.generate(prompt, params)
    assert len(first.generations) == 5
    assert first.extra["sequences"] == 5
    assert first.generations[0] == greedy
    assert [g.token_ids for g in again.generations] == [g.token_ids for g in first.generations]
    assert len({g.text for g in first.generations}) >= 2
    for g in first.generations:
        assert len(g.logprobs) == len(g.token_ids) <= 16
        assert all(lp <= 0 for lp in g.logprobs)
    other_seed = backend.generate(prompt, GenerationParams(n=5, max_tokens=16, temperature=1.0, seed=8))
    assert other_seed.generations[0] == greedy
    assert [g.token_ids for g in other_seed.generations[1:]] != [g.token_ids for g in first.generations[1:]]


def _decoded_greedy(backend: LlamaBackend, prompt: list[int], greedy: Generation) -> list[int]:
    """The tokens the greedy candidate decoded: the one carrying its stop string too, which is cut
    off its text and tokens but took its decode round."""
    again = GenerationParams(n=1, max_tokens=len(greedy.token_ids) + 1)
    return backend.generate(prompt, again).generations[0].token_ids


def test_sampled_candidates_stop_at_the_stretch_of_the_greedy_one(backend: LlamaBackend) -> None:
    prompt = fim_prompt(backend, *SNIPPETS[1])
    free = GenerationParams(n=6, max_tokens=40, temperature=1.0, seed=3, stop=("\n",))
    bounded = dataclasses.replace(free, stretch=1.0)
    long, short = backend.generate(prompt, free), backend.generate(prompt, bounded)
    assert short.generations[0] == long.generations[0]  # the greedy candidate is never bounded
    rounds = copy_rounds(backend._draft_base(prompt), _decoded_greedy(backend, prompt, long.generations[0]))
    limit = alternative_limit(rounds, bounded)
    cut = 0
    for a, b in zip(long.generations[1:], short.generations[1:], strict=True):
        if len(a.token_ids) <= limit and not (len(a.token_ids) == limit and a.finish_reason == "length"):
            assert b == a  # ended within the limit: untouched
            continue
        # Bounded: the same sample, held to the limit and ended for length.
        cut += 1
        assert b.token_ids == a.token_ids[:limit] and b.logprobs == a.logprobs[:limit]
        assert a.text.startswith(b.text) and b.finish_reason == "length"
    assert cut >= 1  # the prompt makes some sampled line outrun the greedy one
    assert short.extra["steps"] < long.extra["steps"]


def test_candidates_that_would_overflow_the_kv_cache_are_dropped(tiny_version: ModelVersion) -> None:
    # 512 + 2 × 256 cells: two candidates of 400 tokens fit beside a short prompt, three do not.
    b = LlamaBackend.from_version(tiny_version, n_ctx=512, max_candidates=3, n_threads=2)
    try:
        prompt = fim_prompt(b, *SNIPPETS[0])
        result = b.generate(prompt, GenerationParams(n=3, max_tokens=400, temperature=1.0))
        assert result.extra["sequences"] == len(result.generations) == 2
        assert all(g.finish_reason in ("stop", "length") for g in result.generations)
    finally:
        b.close()


def test_temperature_zero_decodes_one_sequence(backend: LlamaBackend, count_decodes: list[int]) -> None:
    prompt = fim_prompt(backend, *SNIPPETS[2])
    result = backend.generate(prompt, GenerationParams(n=3, max_tokens=8, temperature=0.0))
    assert result.extra["sequences"] == result.extra["branches"] == 1
    assert len(result.generations) == 3
    assert result.generations[0] == result.generations[1] == result.generations[2]
    # Each step decodes the one sequence's last token and at most draft_max drafted ones.
    assert max(count_decodes) <= len(prompt)
    assert all(1 <= size <= 1 + backend.draft_max for size in count_decodes[1:])


def test_n_candidates_share_one_decode_pass(tiny_version: ModelVersion, count_decodes: list[int]) -> None:
    k = 10
    b = LlamaBackend.from_version(tiny_version, n_threads=2, draft_max=0)
    try:
        prompt = fim_prompt(b, "def fresh_prompt_for_decode_count(x):\n    ", "\n")
        result = b.generate(prompt, GenerationParams(n=8, max_tokens=k, temperature=1.0, seed=1))
    finally:
        b.close()
    generated = sum(len(g.token_ids) for g in result.generations)
    # One call for the prompt, then one per step for every live sequence together: not 8 × k.
    assert count_decodes[0] == len(prompt) - result.cached_tokens
    assert len(count_decodes) <= 1 + k
    # The first step feeds one sequence per distinct first token of the candidates it did not end.
    firsts = {g.token_ids[0] for g in result.generations if g.token_ids}
    assert count_decodes[1] == len(firsts) >= 2
    assert generated > sum(count_decodes[1:])  # candidates that agree share their decode


def test_stop_strings_cut_the_text(backend: LlamaBackend) -> None:
    # A sampled candidate: the tiny model's greedy text is too repetitive to place a stop in.
    prompt = fim_prompt(backend, *SNIPPETS[1])
    sampled = GenerationParams(n=2, max_tokens=32, temperature=1.0, seed=7)
    full = backend.generate(prompt, sampled).generations[1]
    assert len(set(full.text)) >= 6, full.text
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 2]
    cut = full.text.find(stop)
    params = dataclasses.replace(sampled, stop=("never-there", "", stop))
    stopped = backend.generate(prompt, params).generations[1]
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[:cut] and cut > 0
    # The kept tokens are those that spell the text: a prefix of the full run.
    assert stopped.token_ids == full.token_ids[: len(stopped.token_ids)]
    assert stopped.logprobs == full.logprobs[: len(stopped.token_ids)]
    pieces = [backend._piece(t) for t in stopped.token_ids]
    assert b"".join(pieces).decode(errors="ignore").startswith(stopped.text)
    assert len(b"".join(pieces[:-1]).decode(errors="ignore")) < len(stopped.text)


def test_split_utf8_characters_decode_once_complete() -> None:
    params = GenerationParams(max_tokens=8, stop=("é!",))
    candidate = _Candidate(0, None, params.max_tokens)
    for token, piece in enumerate([b"caf", b"\xc3", b"\xa9", b"!", b"x"]):
        candidate.add(token, -1.0, piece, params)
        if candidate.finish:
            break
    assert candidate.ends == [3, 3, 4, 5]
    result = candidate.result()
    assert (result.text, result.token_ids, result.finish_reason) == ("caf", [0], "stop")


def test_kv_cache_is_reused_for_an_extended_prompt(backend: LlamaBackend, tiny_version: ModelVersion) -> None:
    first = fim_prompt(backend, "import sys\n\n\ndef run(argv):\n    ", "\n")
    extended = first[:-1] + backend.tokenize("    x = 1\n") + first[-1:]
    diverged = [*extended[:5], *backend.tokenize("zzz"), *extended[5:]]
    warm = LlamaBackend.from_version(tiny_version, n_threads=2)
    fresh = LlamaBackend.from_version(tiny_version, n_threads=2)
    try:
        assert warm.generate(first, GenerationParams(max_tokens=8)).cached_tokens == 0
        params = GenerationParams(n=3, max_tokens=12, temperature=0.8, seed=2)
        reused = warm.generate(extended, params)
        cold = fresh.generate(extended, params)
        assert reused.cached_tokens >= len(first) - 1
        assert cold.cached_tokens == 0
        assert reused.generations == cold.generations
        same = warm.generate(extended, GenerationParams(max_tokens=12))
        assert same.cached_tokens == len(extended) - 1  # the last token is evaluated again for logits
        assert same.generations[0] == cold.generations[0]
        assert warm.generate(diverged, GenerationParams(max_tokens=4)).cached_tokens == 5
    finally:
        warm.close()
        fresh.close()


def test_cancel_from_another_thread_stops_early(
    backend: LlamaBackend, count_decodes: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    cancel = threading.Event()
    spy = llama_cpp.llama_decode

    def cancel_on_third_call(ctx, batch):  # type: ignore[no-untyped-def]
        if len(count_decodes) == 2:
            setter = threading.Thread(target=cancel.set)
            setter.start()
            setter.join()
        return spy(ctx, batch)

    monkeypatch.setattr(llama_cpp, "llama_decode", cancel_on_third_call)
    prompt = fim_prompt(backend, *SNIPPETS[0])
    params = GenerationParams(n=3, max_tokens=64, temperature=1.0, cancel=cancel)
    result = backend.generate(prompt, params)
    assert [g.finish_reason for g in result.generations] == ["cancelled"] * 3
    assert all(0 < len(g.token_ids) <= 3 for g in result.generations)
    # The backend stays usable and its cache consistent.
    after = backend.generate(prompt, GenerationParams(max_tokens=8))
    assert after.generations[0].finish_reason in ("length", "stop")


def test_past_deadline_returns_at_once(backend: LlamaBackend, count_decodes: list[int]) -> None:
    prompt = fim_prompt(backend, "def deadline_case():\n    ", "\n")
    started = time.monotonic()
    params = GenerationParams(n=4, max_tokens=64, deadline=time.monotonic() - 1)
    result = backend.generate(prompt, params)
    assert time.monotonic() - started < 0.5
    assert count_decodes == []
    assert [g.finish_reason for g in result.generations] == ["deadline"] * 4
    assert all(g.text == "" and g.token_ids == [] for g in result.generations)


def test_prompts_that_do_not_fit_are_refused(backend: LlamaBackend) -> None:
    with pytest.raises(ModelError, match="exceeds the context"):
        backend.generate([backend.special_id("<|fim_prefix|>")] * 250, GenerationParams(max_tokens=8))  # type: ignore[list-item]
    with pytest.raises(ModelError, match="empty"):
        backend.generate([], GenerationParams())
    with pytest.raises(ModelError, match="outside the vocabulary"):
        backend.generate([10_000], GenerationParams(max_tokens=4))


def test_concurrent_requests_are_serialised(backend: LlamaBackend) -> None:
    prompts = [fim_prompt(backend, *s) for s in SNIPPETS]
    params = GenerationParams(n=2, max_tokens=8, temperature=0.7, seed=3)
    expected = [backend.generate(p, params).generations for p in prompts]
    results: dict[int, list] = {}

    def run(i: int) -> None:
        results[i] = backend.generate(prompts[i % 3], params).generations

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i] == expected[i % 3] for i in range(6))


def test_closed_backend_refuses_work(tiny_version: ModelVersion) -> None:
    b = LlamaBackend.from_version(tiny_version, max_candidates=2)
    prompt = fim_prompt(b, *SNIPPETS[0])
    b.close()
    b.close()
    with pytest.raises(ModelError, match="closed"):
        b.generate(prompt, GenerationParams())
    with pytest.raises(ModelError, match="closed"):
        b.tokenize("x = 1")


def test_sampler_chain_draws_from_the_top_p_nucleus_at_temperature() -> None:
    """Candidates' llama.cpp chain: the top 64, at temperature, then their top-p nucleus; seeded."""
    logits = (np.random.default_rng(3).standard_normal(300) * 2).astype(np.float32)
    temperature, top_p = 0.7, 0.9
    order = np.argsort(-logits)[:TOP_K]
    probs = np.exp(logits[order].astype(np.float64) / temperature)
    probs /= probs.sum()
    size = int(np.searchsorted(np.cumsum(probs), top_p)) + 1
    expected = np.zeros(len(logits))
    expected[order[:size]] = probs[:size] / probs[:size].sum()
    params = GenerationParams(n=2, temperature=temperature, top_p=top_p, seed=5)
    draws, again = _draw(params, logits, 20_000), _draw(params, logits, 50)
    frequencies = np.bincount(draws, minlength=len(logits)) / len(draws)
    assert frequencies[expected == 0].sum() == 0
    np.testing.assert_allclose(frequencies, expected, atol=0.01)
    assert draws[:50] == again  # seeded: the same candidate draws the same tokens
    assert _draw(dataclasses.replace(params, seed=6), logits, 50) != again


def _draw(params: GenerationParams, logits: np.ndarray, count: int) -> list[int]:
    """Tokens candidate 1's sampler chain picks from ``logits``, ``count`` times in a row."""
    chain = _sampler(params, 1)
    try:
        out = []
        for _ in range(count):
            data = (llama_cpp.llama_token_data * len(logits))(
                *(llama_cpp.llama_token_data(i, float(v), 0.0) for i, v in enumerate(logits))
            )
            array = llama_cpp.llama_token_data_array(data, len(logits), -1, False)
            llama_cpp.llama_sampler_apply(chain, ctypes.byref(array))
            out.append(int(array.data[array.selected].id))
        return out
    finally:
        llama_cpp.llama_sampler_free(chain)


def test_hidden_states_read_a_candidate_as_one_pass_would(backend: LlamaBackend) -> None:
    prompt = fim_prompt(backend, *SNIPPETS[0])
    greedy = backend.generate(prompt, GenerationParams(max_tokens=8)).generations[0]
    one, two = backend.tokenize("value = 1"), backend.tokenize("print(args)")
    first, second = backend.hidden_states(prompt, [one, two])
    width = llama_cpp.llama_model_n_embd(backend._native.model)
    assert first.shape == second.shape == (width,) and np.isfinite(first).all()
    assert not np.allclose(first, second)
    # The same text read as part of the prompt, its last token as the continuation: the same state.
    (again,) = backend.hidden_states(prompt + one[:-1], [one[-1:]])
    np.testing.assert_allclose(again, first, rtol=1e-3, atol=1e-3)
    # The prompt's cache is left as generate leaves it: the next request answers the same.
    assert backend.generate(prompt, GenerationParams(max_tokens=8)).generations[0] == greedy
    with pytest.raises(ModelError, match="without tokens"):
        backend.hidden_states(prompt, [[]])
    # A prompt that fills the context leaves no room for a continuation: refused, not misread.
    with pytest.raises(ModelError, match="exceeds the context"):
        backend.hidden_states(prompt * (backend.n_ctx // len(prompt) + 1), [one])
    # A continuation past the context is read up to its end.
    long = backend.hidden_states(prompt, [one * backend.n_ctx])
    assert long[0].shape == first.shape and np.isfinite(long[0]).all()


def test_generate_reads_each_candidates_hidden_state_without_changing_its_text(backend: LlamaBackend) -> None:
    prompt = fim_prompt(backend, *SNIPPETS[1])
    params = GenerationParams(n=3, max_tokens=24, temperature=0.8, seed=5, stop=("\n",))
    plain = backend.generate(prompt, params).generations
    read = backend.generate(prompt, dataclasses.replace(params, hidden=True)).generations
    assert [g.text for g in read] == [g.text for g in plain]
    assert all(g.hidden is None for g in plain)
    width = llama_cpp.llama_model_n_embd(backend._native.model)
    assert all(g.hidden is not None and g.hidden.shape == (width,) for g in read)
    # The state of the row each candidate's last token (its stop) was drawn from: the model after
    # the text it kept, as a cycle reads it offline.
    for g in read:
        if g.finish_reason == "stop" and g.token_ids and backend.tokenize(g.text) == g.token_ids:
            (offline,) = backend.hidden_states(prompt, [g.token_ids])
            np.testing.assert_allclose(g.hidden, offline, rtol=1e-3, atol=1e-3)
            break
    else:
        pytest.fail("no candidate ended at its stop to compare with")
