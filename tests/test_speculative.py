"""Prompt-lookup speculative decoding: drafts, the policy that sizes them, and exactness on the tiny GGUF."""

from collections.abc import Iterator

import pytest

from editloop.models.backend import GenerationParams, alternative_limit
from editloop.models.llama import LlamaBackend, _Branch, _Decoder
from editloop.models.registry import ModelVersion
from editloop.models.speculative import DraftPolicy, copy_rounds, draft

# Copy-heavy: the lines to write repeat ones above the cursor.
PROMPTS = [
    (
        "    def __init__(self, a, b):\n        self.a = a\n        self.b = b\n\n"
        "    def copy(self):\n        ",
        "\n",
    ),
    ("import os\nimport sys\nimport re\n\n\ndef main():\n    import os\n    import ", "\n"),
    ("for i in range(10):\n    print(i)\nfor j in range(10):\n    ", "\n"),
    ("x = compute(alpha, beta, gamma)\ny = compute(alpha, beta, gamma)\nz = ", "\nprint(x, y, z)\n"),
]


def test_draft_copies_what_followed_the_latest_longest_match() -> None:
    assert draft([1, 2, 3, 4, 9, 1, 2, 3, 5, 6, 0, 2, 3], max_tokens=3) == [5, 6, 0]  # latest "2 3"
    assert draft([1, 2, 3, 4, 9, 7, 7, 2, 3, 5, 1, 2, 3], max_tokens=2) == [4, 9]  # "1 2 3" beats "2 3"
    assert draft([1, 2, 3, 4, 5], max_tokens=4) == []  # no earlier match
    assert draft([5, 6, 5, 6], max_tokens=8) == [5, 6]  # stops at the end of the context
    assert draft([1, 2, 1, 2], max_tokens=0) == []
    assert draft([7], max_tokens=3) == []


def test_copy_rounds_count_a_copied_run_as_one_round() -> None:
    context = [7, 1, 2, 3, 9, 8, 6]
    assert copy_rounds(context, [4, 5, 0]) == 3  # nothing to copy: a round a token
    assert copy_rounds(context, [5, 1, 2, 3, 9, 8, 6]) == 4  # 5; 1; 2; then 3 9 8 6 copied
    assert copy_rounds(context, [5, 1, 2, 3, 9, 8, 6], max_draft=2) == 5  # 3 9 8; 6
    assert copy_rounds(context, [5, 1, 2, 3, 9, 8, 6], max_draft=0) == 7
    assert copy_rounds(context, []) == 0


def test_policy_drafts_only_where_it_pays() -> None:
    cheap = DraftPolicy(limit=8)
    assert cheap.length() == 0  # a plain step is measured first
    cheap.record_step(1, 1.0)
    cheap.record_step(9, 1.2)  # extra tokens nearly free: the tiny model
    assert cheap.length() >= 4
    costly = DraftPolicy(limit=8)
    costly.record_step(1, 50.0)
    costly.record_step(2, 135.0)  # one more token costs more than a step: a 0.5B model on a CPU
    assert costly.length() == 0
    middling = DraftPolicy(limit=8)
    middling.record_step(1, 50.0)
    middling.record_step(9, 50.0 + 8 * 20.0)
    before = middling.length()
    for _ in range(20):
        middling.record_draft(4, 4)  # drafts kept: longer ones pay
    assert middling.length() > before
    for _ in range(40):
        middling.record_draft(4, 0)
    assert middling.length() == 0


@pytest.fixture(scope="module")
def backends(tiny_version: ModelVersion) -> Iterator[tuple[LlamaBackend, LlamaBackend]]:
    on = LlamaBackend.from_version(tiny_version, n_threads=2, draft_max=8)
    off = LlamaBackend.from_version(tiny_version, n_threads=2, draft_max=0)
    # Draft the most every step whatever the machine's timings: the tests check exactness, not pay.
    on._drafts = DraftPolicy(limit=8, step_ms=1.0, token_ms=0.0)
    on._drafts.record_step = lambda tokens, ms: None  # type: ignore[method-assign]
    yield on, off
    on.close()
    off.close()


def _prompt(backend: LlamaBackend, prefix: str, suffix: str) -> list[int]:
    p, s, m = (backend.special_id(t) for t in (backend.fim.prefix, backend.fim.suffix, backend.fim.middle))
    return [p, *backend.tokenize(prefix), s, *backend.tokenize(suffix), m]  # type: ignore[list-item]


@pytest.mark.parametrize(
    "n, temperature, stretch, stop", [(1, 0.0, 0.0, ()), (5, 0.8, 0.0, ()), (5, 0.8, 1.0, ("\n",))]
)
def test_drafting_never_changes_the_output(
    backends, n: int, temperature: float, stretch: float, stop: tuple[str, ...]
) -> None:
    on, off = backends
    drafted = accepted = bounded = 0
    for prefix, suffix in PROMPTS:
        prompt = _prompt(on, prefix, suffix)
        params = GenerationParams(
            n=n, max_tokens=40, temperature=temperature, seed=11, stretch=stretch, stop=stop
        )
        with_drafts, without = on.generate(prompt, params), off.generate(prompt, params)
        assert [g.token_ids for g in with_drafts.generations] == [g.token_ids for g in without.generations]
        assert [g.text for g in with_drafts.generations] == [g.text for g in without.generations]
        assert [g.finish_reason for g in with_drafts.generations] == [
            g.finish_reason for g in without.generations
        ]
        # Tokens and texts are the claim; a batch of draft rows sums in another order than one row,
        # so log-probs drift a little with position (0.0015 at token 39 on one CPU).
        for a, b in zip(with_drafts.generations, without.generations, strict=True):
            assert a.logprobs == pytest.approx(b.logprobs, rel=1e-3, abs=1e-3)
        bounded += sum(g.finish_reason == "length" and len(g.token_ids) < 40 for g in without.generations)
        drafted += with_drafts.extra["drafted"]
        accepted += with_drafts.extra["accepted"]
        assert without.extra["drafted"] == 0
    # The path under test ran: drafts were made, and some were kept and some not.
    assert 0 < accepted < drafted
    assert bounded > 0 if stretch else bounded == 0  # sampled lines held to the greedy one's stretch


def test_sampled_lines_get_as_many_rounds_as_the_greedy_one_copies_in(backends) -> None:
    on, _ = backends
    copied = 0
    for prefix, suffix in PROMPTS:
        prompt = _prompt(on, prefix, suffix)
        params = GenerationParams(n=5, max_tokens=40, temperature=0.8, seed=5, stretch=1.0, stop=("\n",))
        result = on.generate(prompt, params)
        greedy = result.generations[0].token_ids
        # Its rounds count the token that carried its "\n" too: cut off the text, but decoded.
        again = GenerationParams(n=1, max_tokens=len(greedy) + 1)
        decoded = on.generate(prompt, again).generations[0].token_ids
        rounds = copy_rounds(on._draft_base(prompt), decoded)
        copied += rounds < len(decoded)
        limit = alternative_limit(rounds, params)
        assert all(len(g.token_ids) <= limit for g in result.generations[1:])
        # So the request takes about as many decode steps as the greedy line alone.
        assert result.extra["steps"] <= limit
    assert copied  # some greedy line copied a run: the limit is tighter than its token count


def test_only_the_greedy_sequence_drafts(backends) -> None:
    on, _ = backends
    prompt = _prompt(on, *PROMPTS[0])
    decoder = _Decoder(on, prompt, GenerationParams(n=2, max_tokens=40, temperature=0.8), count=2)
    try:
        greedy, sampled = decoder.candidates
        context = list(decoder.base)
        for c in decoder.candidates:
            c.tokens = context[-6:-3]  # a run the prompt holds, so a draft would find its sequel
        assert decoder._draft(_Branch(0, [greedy, sampled], [], len(prompt) - 1, [])) != []
        assert decoder._draft(_Branch(1, [sampled], [], len(prompt) - 1, [])) == []
    finally:
        decoder.close()


def test_drafting_takes_fewer_decode_steps_on_copy_heavy_code(backends) -> None:
    on, off = backends
    prompt = _prompt(on, *PROMPTS[0])
    params = GenerationParams(max_tokens=48)
    fast, slow = on.generate(prompt, params), off.generate(prompt, params)
    assert fast.generations[0].token_ids == slow.generations[0].token_ids
    assert fast.extra["steps"] < slow.extra["steps"]
