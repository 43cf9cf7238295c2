"""Training sequences: pure functions of (seed, index), and the line-completion phase's labels."""

from dataclasses import replace

import numpy as np
import pytest
from tokenizers import Tokenizer

from editloop.corpus import load_corpus
from editloop.starter.samples import IGNORE, LINE_COMPLETION, SampleBuilder

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


@pytest.mark.parametrize("spm", [False, True], ids=["psm", "spm"])
def test_line_completion_learns_only_the_answer_to_an_editor_request(files, tokenizer, spm) -> None:
    names = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|endoftext|>")
    ids = {t: tokenizer.token_to_id(t) for t in names}
    pad = tokenizer.token_to_id("<|fim_pad|>")
    mix = replace(LINE_COMPLETION, spm_rate=float(spm))
    builder = SampleBuilder(files, tokenizer, SEQ_LEN, seed=0, mix=mix, middle_only=True)
    input_ids, labels = builder.batch(0, 32, pad)
    single_lines = 0
    for row, row_labels in zip(input_ids, labels, strict=True):
        # Every row in the order the model is served: prefix first, or suffix first (SPM).
        assert row[0] == ids["<|fim_suffix|>" if spm else "<|fim_prefix|>"]
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


def test_packing_tops_short_rows_up_with_whole_samples_after_an_eos(files, tokenizer) -> None:
    pad, eos = tokenizer.token_to_id("<|fim_pad|>"), tokenizer.token_to_id("<|endoftext|>")
    plain = SampleBuilder(files, tokenizer, SEQ_LEN, seed=0)
    packed = SampleBuilder(files, tokenizer, SEQ_LEN, seed=0, pack=True)
    plain_ids, _ = plain.batch(0, 32, pad)
    packed_ids, packed_labels = packed.batch(0, 32, pad)
    assert (plain_ids == pad).any()  # the unpacked batch has padding to fill
    assert not (packed_ids == pad).any() and not (packed_labels == IGNORE).any()
    for index, (short, full) in enumerate(zip(plain_ids, packed_ids, strict=True)):
        n = int((short != pad).sum())
        assert np.array_equal(full[:n], short[:n])  # the row's own sample comes first, unchanged
        if n < SEQ_LEN:
            after = n if short[n - 1] == eos else n + 1
            assert short[n - 1] == eos or full[n] == eos
            piece = packed.sample(index, part=1)
            assert list(full[after : after + len(piece)]) == piece[: SEQ_LEN - after]
    again, _ = SampleBuilder(files, tokenizer, SEQ_LEN, seed=0, pack=True).batch(0, 32, pad)
    assert np.array_equal(again, packed_ids)


def test_answer_only_labels_are_not_packed(files, tokenizer) -> None:
    with pytest.raises(ValueError, match="not packed"):
        SampleBuilder(files, tokenizer, SEQ_LEN, seed=0, mix=LINE_COMPLETION, middle_only=True, pack=True)
