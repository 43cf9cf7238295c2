"""FIM templates: detection from a vocabulary and prompt budgeting."""

import pytest

from editloop.errors import NoFimTokensError
from editloop.models.fim import (
    CODELLAMA,
    DEEPSEEK,
    KNOWN_TEMPLATES,
    QWEN,
    STARCODER,
    detect_template,
    fim_token_ids,
)


@pytest.mark.parametrize("template", KNOWN_TEMPLATES, ids=lambda t: t.family)
def test_each_family_is_detected_from_its_tokens(template) -> None:
    vocab = ["a", "b", *template.special_tokens()]
    assert detect_template(vocab) == template


def test_optional_tokens_missing_from_the_vocabulary_are_dropped() -> None:
    detected = detect_template(["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|endoftext|>"])
    assert detected.family == QWEN.family and detected.file_sep is None and detected.pad is None


def test_vocabulary_without_fim_tokens_is_refused_with_the_reason() -> None:
    with pytest.raises(NoFimTokensError, match="no fill-in-the-middle tokens"):
        detect_template(["<s>", "</s>", "def"], source="plain.gguf")


def test_templates_format_psm_prompts() -> None:
    assert STARCODER.format("a", "b") == "<fim_prefix>a<fim_suffix>b<fim_middle>"
    assert DEEPSEEK.format("a", "b") == "<｜fim▁begin｜>a<｜fim▁hole｜>b<｜fim▁end｜>"
    assert CODELLAMA.format("a", "b") == "▁<PRE>a▁<SUF>b▁<MID>"


def test_budget_keeps_the_code_nearest_the_cursor() -> None:
    prefix, suffix = list(range(100, 200)), list(range(300, 400))
    ids = fim_token_ids(prefix, suffix, (1, 2, 3), budget=30)
    assert ids[0] == 1 and ids[-1] == 3
    cut = ids.index(2)
    assert ids[1:cut] == prefix[-20:]  # prefix keeps its end
    assert ids[cut + 1 : -1] == suffix[:10]  # suffix keeps its start, at most a third
    assert len(ids) == 33


def test_spm_order_puts_the_suffix_first() -> None:
    assert fim_token_ids([7], [8], (1, 2, 3), budget=10, spm=True) == [2, 8, 1, 7, 3]
    spm = detect_template(QWEN.special_tokens(), spm=True)
    assert spm.spm and not detect_template(QWEN.special_tokens()).spm
    assert spm.format("a", "b") == "<|fim_suffix|>b<|fim_prefix|>a<|fim_middle|>"
