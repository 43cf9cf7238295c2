"""The engine on the real tiny model: prompts within budget, ranking, abstaining, cache, latest-wins."""

import itertools
import threading
import time

import pytest

from editloop.completion.cache import CompletionCache
from editloop.completion.engine import CompletionEngine, EngineConfig
from editloop.completion.prompt import CHARS_PER_TOKEN_MAX, RecentCuts, build_prompt
from editloop.completion.served import load_served
from editloop.completion.types import CompletionRequest, Snippet
from editloop.models.kvcache import common_prefix
from editloop.models.llama import LlamaBackend
from editloop.models.manager import ModelManager

PREFIX = "import os\n\n\ndef load(path):\n    with open(path) as f:\n        "
SUFFIX = "\n    return data\n"


@pytest.fixture(scope="module")
def manager(tiny_registry):
    models = ModelManager(
        tiny_registry, lambda v: load_served(v, LlamaBackend.from_version(v, max_candidates=8))
    )
    assert models.reload()
    yield models
    models.close()


@pytest.fixture(scope="module", params=[False, True], ids=["psm", "spm"])
def backend(request, tiny_version):
    """tiny's real GGUF and tokenizer, prompted in either order (tiny itself is served PSM)."""
    fim = tiny_version.manifest.fim.model_copy(update={"spm": request.param})
    backend = LlamaBackend(tiny_version.gguf_path(), fim, tiny_version.name, max_candidates=1)
    yield backend
    backend.close()


def engine(manager, **config) -> CompletionEngine:
    return CompletionEngine(manager, EngineConfig(**config), CompletionCache(100, 300))


def test_prompt_fits_the_budget_and_keeps_the_cursor_side(backend) -> None:
    long_prefix = "x = 1\n" * 2000
    prompt = build_prompt(backend, long_prefix + "y = ", "\nprint(y)\n" * 500, [], "a.py", 32)
    assert len(prompt.ids) <= backend.n_ctx - 32
    assert prompt.truncated
    fim = backend.fim
    suffix_id, middle_id = backend.special_id(fim.suffix), backend.special_id(fim.middle)
    assert prompt.ids[-1] == middle_id
    # The prefix keeps its end: the tokens right before the cursor side's closing special token
    # (<|fim_middle|> suffix first, <|fim_suffix|> prefix first) spell the text at the cursor.
    cut = len(prompt.ids) - 1 if fim.spm else prompt.ids.index(suffix_id)
    assert prompt.ids[cut - len(backend.tokenize("y = ")) : cut] == backend.tokenize("y = ")
    # The suffix keeps its start, right after <|fim_suffix|>.
    head = backend.tokenize("\nprint(y)\n")
    start = prompt.ids.index(suffix_id) + 1
    assert prompt.ids[start : start + len(head)] == head


def test_typing_leaves_the_prefix_cut_in_place(backend) -> None:
    """The window slides in steps, not per keystroke: consecutive prompts share their beginning."""
    text = "def area(w, h):\n    return w * h\n\n\nx = area(3, 4)\n" * 300
    prompts = [build_prompt(backend, text[:n], "\nprint(x)\n", [], None, 32) for n in range(6000, 6600, 5)]
    assert all(p.truncated and len(p.ids) <= backend.n_ctx - 32 for p in prompts)

    # Consecutive prompts agree up to the last few prefix tokens (retokenized as typing goes on).
    def kept_start(a, b) -> bool:
        cursor = len(a.ids) - 1 if backend.fim.spm else len(a.ids) - a.suffix_tokens - 2
        return common_prefix(a.ids, b.ids) >= cursor - 4

    kept = [kept_start(a, b) for a, b in itertools.pairwise(prompts)]
    assert sum(kept) >= 0.9 * len(kept)
    assert not all(kept)  # the cut did move, a step at a time
    assert min(p.prefix_tokens for p in prompts) > 0.6 * max(p.prefix_tokens for p in prompts)


class _Counting:
    """The real backend, counting the characters it is asked to tokenize."""

    def __init__(self, backend) -> None:
        self.backend, self.chars, self.calls = backend, 0, 0
        self.version, self.fim, self.n_ctx = backend.version, backend.fim, backend.n_ctx

    def tokenize(self, text: str) -> list[int]:
        self.chars += len(text)
        self.calls += 1
        return self.backend.tokenize(text)

    def special_id(self, token: str) -> int | None:
        return self.backend.special_id(token)


def test_a_wrong_guess_of_the_cut_is_mended_in_a_jump(backend) -> None:
    """Prose after the cursor has more characters per token than dense code before it, so the cut
    guessed from the suffix keeps too much prefix: the next try jumps by the surplus it measured,
    not a grid step a try, and a cut found past one that did not fit is kept without measuring
    again (stepping, it took six tokenizations)."""
    text = "    if (a[i] > b[j]) { c[k] = d[l]; }\n" * 500
    suffix = "\n" + "# an explanation of everything that follows, in considerable detail\n" * 200
    counting = _Counting(backend)
    prompt = build_prompt(counting, text, suffix, [], None, 32)
    assert prompt.truncated and len(prompt.ids) <= backend.n_ctx - 32
    assert counting.calls <= 3  # the suffix, the guessed cut, the jump
    room = backend.n_ctx - 32 - 8 - prompt.suffix_tokens
    assert prompt.prefix_tokens >= 0.6 * room  # a grid step is about a third of tiny's room


def test_typing_keeps_the_last_cut_and_tokenizes_the_prefix_once(backend) -> None:
    """While a developer types, the text before the last cut stays the same: with RecentCuts the
    cut is tried there first and fits, one tokenization of the prefix per keystroke where guessing
    took two (dense code before the cursor, prose after it); the prompt's start stays in place."""
    text = "    if (a[i] > b[j]) { c[k] = d[l]; }\n" * 500
    suffix = "\n" + "# an explanation of everything that follows, in considerable detail\n" * 200
    cuts, counting, plain = RecentCuts(), _Counting(backend), _Counting(backend)
    sticky, guessed = [], []
    for n in range(15000, 15200):
        sticky.append(build_prompt(counting, text[:n], suffix, [], None, 32, cuts))
        guessed.append(build_prompt(plain, text[:n], suffix, [], None, 32))
    assert counting.calls <= 2 * len(sticky) + 12  # the suffix and the kept prefix; a few new cuts
    assert plain.calls >= 2.5 * len(guessed)  # the suffix, the guessed cut and its jump
    room = backend.n_ctx - 32 - 8 - sticky[0].suffix_tokens
    for prompt in sticky:
        assert prompt.truncated and len(prompt.ids) <= backend.n_ctx - 32
        assert prompt.prefix_tokens >= 0.6 * room  # a grid step is about a third of tiny's room
    # As much of the prefix as guessing each cut anew keeps.
    assert sum(p.prefix_tokens for p in sticky) >= 0.98 * sum(p.prefix_tokens for p in guessed)
    starts = [p.ids[: p.ids.index(backend.special_id(backend.fim.prefix)) + 8] for p in sticky]
    assert sum(a == b for a, b in itertools.pairwise(starts)) >= 0.9 * (len(starts) - 1)
    # Another document's text is not cut where this one was.
    other = "x = compute(y)  # a comment\n" * 800
    alone = build_prompt(backend, other, suffix, [], None, 32)
    assert build_prompt(backend, other, suffix, [], None, 32, cuts).ids == alone.ids


def test_a_long_prefix_is_tokenized_about_once(backend) -> None:
    """The cut is guessed from the suffix's characters per token: the kept text is tokenized once,
    not a 12,000-character window first; and the prefix still fills most of its share."""
    text = "def area(w, h):\n    return w * h\n\n\nx = area(3, 4)\n" * 300
    suffix = "\nprint(x)\n" + text[:3000]
    counting = _Counting(backend)
    prompt = build_prompt(counting, text, suffix, [], None, 32)
    suffix_chars = min(len(suffix), prompt.suffix_tokens * 8)
    kept_chars = counting.chars - suffix_chars
    assert prompt.truncated and len(prompt.ids) <= backend.n_ctx - 32
    room = backend.n_ctx - 32 - 8 - prompt.suffix_tokens
    assert prompt.prefix_tokens >= 0.8 * room
    measured = build_prompt(backend, text, "", [], None, 32)  # no suffix to measure: the careful way
    assert measured.truncated and measured.prefix_tokens >= 0.8 * (backend.n_ctx - 32 - 8)
    # One pass over the kept text, not first over room × CHARS_PER_TOKEN_MAX characters to find the cut.
    assert kept_chars < 0.6 * room * CHARS_PER_TOKEN_MAX


def test_extra_context_uses_the_repo_layout(backend) -> None:
    extra = [Snippet(filepath="util.py", text="def helper():\n    return 42\n")]
    prompt = build_prompt(backend, "x = ", "\n", extra, "main.py", 16)
    sep = backend.special_id(backend.fim.file_sep)
    assert prompt.ids[0] == sep and prompt.ids.count(sep) == 2 and prompt.extra_tokens > 0
    # The current file's FIM prompt follows the other files, in the order the model reads it.
    first = backend.fim.suffix if backend.fim.spm else backend.fim.prefix
    assert prompt.ids[prompt.extra_tokens] == backend.special_id(first)


def test_candidates_are_reported_and_choices_ranked(manager) -> None:
    result = engine(manager, abstain_threshold=0.0).complete(
        CompletionRequest(
            prefix=PREFIX, suffix=SUFFIX, language="python", mode="line", n=6, temperature=1.0, seed=1
        )
    )
    assert len(result.candidates) == 6 and result.model_version == "v1" and result.mode == "line"
    kept = [c for c in result.candidates if c.dropped is None]
    assert len(result.choices) == len(kept) <= 6
    assert [c.score for c in result.choices] == sorted((c.score for c in result.choices), reverse=True)
    assert all("\n" not in c.text for c in result.choices)
    for report in result.candidates:
        assert report.dropped is not None or report.score is not None


def test_threshold_one_always_abstains(manager) -> None:
    result = engine(manager, abstain_threshold=1.0).complete(
        CompletionRequest(prefix=PREFIX, suffix=SUFFIX, language="python", n=3)
    )
    assert result.abstained and result.choices == []


def test_typeahead_is_served_from_cache(manager) -> None:
    eng = engine(manager, abstain_threshold=0.0)
    for seed in range(6):  # the tiny model sometimes has nothing to say; find a request where it does
        request = CompletionRequest(
            prefix=PREFIX, suffix=SUFFIX, language="python", n=4, temperature=1.0, seed=seed
        )
        first = eng.complete(request)
        if first.choices and len(first.choices[0].text) >= 3:
            break
    else:
        pytest.skip("the tiny model produced no completion of 3+ characters")
    shown = first.choices[0].text
    typed = eng.complete(request.model_copy(update={"prefix": PREFIX + shown[:2]}))
    assert typed.cached and typed.choices[0].text == shown[2:]


def test_newer_request_for_the_same_document_cancels_the_older(manager) -> None:
    eng = engine(manager, abstain_threshold=0.0)
    slow = CompletionRequest(
        prefix=PREFIX,
        suffix=SUFFIX,
        language="python",
        mode="block",
        n=8,
        max_tokens=180,
        temperature=1.0,
        document_id="doc-1",
    )
    results = {}
    worker = threading.Thread(target=lambda: results.setdefault("old", eng.complete(slow)))
    worker.start()
    time.sleep(0.02)
    results["new"] = eng.complete(slow.model_copy(update={"max_tokens": 4, "seed": 5}))
    worker.join()
    old = results["old"]
    finished = {c.finish_reason for c in old.candidates}
    # Either the old request was already done (fast machine) or it stopped as cancelled.
    assert finished <= {"stop", "length"} or "cancelled" in finished
    assert results["new"].model_version == "v1"


def test_cancel_event_stops_decoding(manager) -> None:
    eng = engine(manager, abstain_threshold=0.0)
    cancel = threading.Event()
    cancel.set()
    result = eng.complete(CompletionRequest(prefix=PREFIX, suffix=SUFFIX, n=4, max_tokens=100), cancel)
    assert {c.finish_reason for c in result.candidates} == {"cancelled"}
