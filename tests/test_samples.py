"""Training sequences: pure functions of (seed, index), and the line-completion phase's labels."""

import numpy as np
import pytest
from tokenizers import Tokenizer

from editloop.models.corpus import load_corpus
from editloop.models.samples import IGNORE, LINE_COMPLETION, SampleBuilder

SEQ_LEN = 128


@pytest.fixture(scope="module")
def files():
    return load_corpus(["stdlib"], {"python"}, max_bytes=300_000, heldout_fraction=0.2).train


@pytest.fixture(scope="module")
def tokenizer(tiny_hf_dir) -> Tokenizer:
    return Tokenizer.from_file(str(tiny_hf_dir / "tokenizer.json"))


def test_a_batch_is_a_pure_function_of_seed_and_step(files, tokenizer) -> None:
    pad = tokenizer.token_to_id("<|fim_pad|>")
    a = SampleBuilder(files, tokenizer, SEQ_LEN, seed=3).batch(5, 4, pad)
    b = SampleBuilder(files, tokenizer, SEQ_LEN, seed=3).batch(5, 4, pad)
    c = SampleBuilder(files, tokenizer, SEQ_LEN, seed=3).batch(6, 4, pad)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_pre_training_learns_every_token_but_padding(files, tokenizer) -> None:
    pad = tokenizer.token_to_id("<|fim_pad|>")
    input_ids, labels = SampleBuilder(files, tokenizer, SEQ_LEN, seed=0).batch(0, 16, pad)
    assert np.array_equal(labels != IGNORE, input_ids != pad)


def test_line_completion_learns_only_the_answer_to_an_editor_request(files, tokenizer) -> None:
    ids = {t: tokenizer.token_to_id(t) for t in ("<|fim_prefix|>", "<|fim_middle|>", "<|endoftext|>")}
    pad = tokenizer.token_to_id("<|fim_pad|>")
    builder = SampleBuilder(files, tokenizer, SEQ_LEN, seed=0, mix=LINE_COMPLETION, middle_only=True)
    input_ids, labels = builder.batch(0, 32, pad)
    single_lines = 0
    for row, row_labels in zip(input_ids, labels, strict=True):
        assert row[0] == ids["<|fim_prefix|>"]  # prefix-suffix-middle, the order editors send
        middle_at = int(np.flatnonzero(row == ids["<|fim_middle|>"])[0])
        learned = np.flatnonzero(row_labels != IGNORE)
        assert learned[0] == middle_at + 1 and np.array_equal(
            learned, np.arange(middle_at + 1, learned[-1] + 1)
        )
        assert row_labels[learned[-1]] == ids["<|endoftext|>"]  # the answer ends where the line does
        answer = tokenizer.decode([int(t) for t in row_labels[learned[:-1]]])
        single_lines += "\n" not in answer
    # Mostly one line, sometimes a few: what an editor asks for at a fresh or partial line.
    assert 16 <= single_lines < 32
