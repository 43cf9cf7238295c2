"""Tokenizing only what is new: a text that extends or edits a recent one gets exactly the tokens
llama.cpp gives the whole text, on the tiny model's real vocabulary."""

import random
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from editloop.models.llama import LlamaBackend
from editloop.models.registry import ModelVersion
from editloop.models.tokens import LEAST_BYTES, RecentTokens, splits_at_line_starts

STDLIB = Path(sysconfig.get_paths()["stdlib"])
FILES = [STDLIB / "email" / "feedparser.py", STDLIB / "json" / "decoder.py", STDLIB / "textwrap.py"]


@pytest.fixture(scope="module")
def backend(tiny_version: ModelVersion) -> Iterator[LlamaBackend]:
    b = LlamaBackend.from_version(tiny_version, max_candidates=1)
    yield b
    b.close()


def _native(backend: LlamaBackend, data: bytes) -> list[int]:
    return backend._tokenize_native(data, False)


def _edits(text: str, rng: random.Random) -> Iterator[str]:
    """What an editor sends as the text before the cursor while a developer works in ``text``:
    typing on, deleting back, editing a line further up, and jumping elsewhere."""
    end = len(text) // 2
    current = text[:end]
    for _ in range(150):
        move = rng.random()
        if move < 0.6:  # type a few characters of the file on
            step = rng.randint(1, 12)
            current, end = current + text[end : end + step], end + step
        elif move < 0.75:  # delete back
            current = current[: -rng.randint(1, 20)]
        elif move < 0.9:  # change a line further up
            at = current.rfind("\n", 0, max(0, len(current) - rng.randint(50, 800)))
            current = current[: at + 1] + "    changed = 1\n" + current[at + 1 :]
        else:  # the window moves: the kept text starts at another line
            current = current[current.find("\n", rng.randint(1, 400)) + 1 :]
        yield current[-rng.randint(LEAST_BYTES, 4 * LEAST_BYTES) :] if rng.random() < 0.2 else current


def test_an_edited_text_gets_the_tokens_of_the_whole_text(backend: LlamaBackend) -> None:
    recent = backend._recent
    assert recent is not None  # the tiny model's byte-level BPE splits at line starts
    before = recent.reused_bytes
    rng = random.Random(7)
    checked = 0
    streams = [_edits(f.read_text(encoding="utf-8"), rng) for f in FILES]
    for texts in zip(*streams, strict=True):  # documents edited in turn share the kept texts
        for text in texts:
            data = text.encode("utf-8")
            assert recent(data) == _native(backend, data), f"differs after {checked} texts"
            checked += 1
    assert recent.reused_bytes - before > 100_000  # and most bytes were not tokenized again


def test_the_backend_tokenizes_through_it(backend: LlamaBackend) -> None:
    text = FILES[0].read_text(encoding="utf-8")[:3000]
    before = backend._recent.reused_bytes if backend._recent else 0
    first, second = backend.tokenize(text), backend.tokenize(text + "    def more(self):\n        re")
    assert second == _native(backend, (text + "    def more(self):\n        re").encode())
    assert first == _native(backend, text.encode())
    assert backend._recent is not None and backend._recent.reused_bytes > before


def test_a_tokenizer_that_adds_a_space_before_a_text_is_not_trusted(backend: LlamaBackend) -> None:
    """SentencePiece-style vocabularies put a space before a text's first word, so the tokens of a
    text's tail alone are not those it has within the whole; no such GGUF is at hand, so a space is
    added before every text here."""

    def piece_length(token: int) -> int:
        return len(backend._piece(token))

    assert splits_at_line_starts(lambda data: _native(backend, data), piece_length)
    assert not splits_at_line_starts(lambda data: _native(backend, b" " + data), piece_length)


def test_texts_of_other_vocabularies_fall_back_to_whole_tokenizing(backend: LlamaBackend) -> None:
    """A token whose bytes are not its text (here every token reads one byte short) keeps nothing to
    extend, and every text is tokenized whole, correctly."""
    calls: list[int] = []

    def tokenize(data: bytes) -> list[int]:
        calls.append(len(data))
        return _native(backend, data)

    recent = RecentTokens(tokenize, lambda token: len(backend._piece(token)) - 1)
    text = FILES[1].read_text(encoding="utf-8")
    for end in range(2000, 2400, 40):
        data = text[:end].encode()
        assert recent(data) == _native(backend, data)
    assert recent.reused_bytes == 0 and calls == list(range(2000, 2400, 40))


def test_a_line_whose_word_was_replaced_by_a_blank_is_tokenized_from_an_earlier_line(
    backend: LlamaBackend,
) -> None:
    """The indented word's split point lies one byte before the word, but where it falls depends
    on the word's first byte: a text that agrees up to the space and has a newline there instead
    must not reuse the tokens up to it."""
    head = FILES[0].read_text(encoding="utf-8")[:2000]
    recent = RecentTokens(lambda data: _native(backend, data), lambda token: len(backend._piece(token)))
    for kept, edited in [("\n    foo = 1\n", "\n    \n    bar"), ("\n    \n\n    x", "\n    foo = 1\n")]:
        for text in (head + kept, head + edited):
            assert recent(text.encode()) == _native(backend, text.encode())
