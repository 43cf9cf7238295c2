"""Fill-in-the-middle prompt templates, named after the model families that define them.

The starter model uses Qwen2.5-Coder's token names, so llama.cpp detects its FIM tokens and a
real Qwen2.5-Coder model is a drop-in replacement.

>>> QWEN.format("def f():\\n    ", "\\n")
'<|fim_prefix|>def f():\\n    <|fim_suffix|>\\n<|fim_middle|>'
"""

from collections.abc import Iterable

from pydantic import BaseModel

from editloop.errors import NoFimTokensError


class FimTemplate(BaseModel, frozen=True):
    """The special tokens that frame a FIM prompt, in prefix-suffix-middle order."""

    family: str
    prefix: str
    suffix: str
    middle: str
    eos: tuple[str, ...] = ()
    file_sep: str | None = None
    repo_name: str | None = None
    pad: str | None = None

    def format(self, prefix: str, suffix: str) -> str:
        return f"{self.prefix}{prefix}{self.suffix}{suffix}{self.middle}"

    def special_tokens(self) -> list[str]:
        extra = [t for t in (self.pad, self.file_sep, self.repo_name) if t]
        return [*self.eos, self.prefix, self.middle, self.suffix, *extra]


QWEN = FimTemplate(
    family="qwen2.5-coder",
    prefix="<|fim_prefix|>",
    suffix="<|fim_suffix|>",
    middle="<|fim_middle|>",
    eos=("<|endoftext|>",),
    file_sep="<|file_sep|>",
    repo_name="<|repo_name|>",
    pad="<|fim_pad|>",
)
DEEPSEEK = FimTemplate(
    family="deepseek-coder",
    prefix="<｜fim▁begin｜>",
    suffix="<｜fim▁hole｜>",
    middle="<｜fim▁end｜>",
    eos=("<｜end▁of▁sentence｜>", "<|EOT|>"),
)
STARCODER = FimTemplate(
    family="starcoder",
    prefix="<fim_prefix>",
    suffix="<fim_suffix>",
    middle="<fim_middle>",
    eos=("<|endoftext|>",),
    file_sep="<file_sep>",
    repo_name="<repo_name>",
    pad="<fim_pad>",
)
CODELLAMA = FimTemplate(
    family="codellama",
    prefix="▁<PRE>",
    suffix="▁<SUF>",
    middle="▁<MID>",
    eos=("▁<EOT>", "</s>"),
)
KNOWN_TEMPLATES = (QWEN, DEEPSEEK, STARCODER, CODELLAMA)


def detect_template(tokens: Iterable[str], source: str = "model") -> FimTemplate:
    """The template whose prefix, suffix and middle tokens are all in ``tokens``.

    Optional tokens (file separator, repo name, pad, eos) the vocabulary lacks are dropped.
    """
    vocab = set(tokens)
    for template in KNOWN_TEMPLATES:
        if {template.prefix, template.suffix, template.middle} <= vocab:
            return template.model_copy(
                update={
                    "eos": tuple(t for t in template.eos if t in vocab),
                    "file_sep": template.file_sep if template.file_sep in vocab else None,
                    "repo_name": template.repo_name if template.repo_name in vocab else None,
                    "pad": template.pad if template.pad in vocab else None,
                }
            )
    names = ", ".join(f"{t.family} ({t.prefix} {t.suffix} {t.middle})" for t in KNOWN_TEMPLATES)
    raise NoFimTokensError(
        f"{source} has no fill-in-the-middle tokens, so it cannot complete between a prefix and "
        f"a suffix; editloop knows these FIM token sets: {names}. Use a code model trained for FIM."
    )


def fim_token_ids(
    prefix_ids: list[int],
    suffix_ids: list[int],
    special_ids: tuple[int, int, int],
    budget: int,
    spm: bool = False,
) -> list[int]:
    """A FIM prompt within ``budget`` content tokens: the suffix gets at most a third, and
    the prefix loses its start (the code farthest from the cursor) first.

    ``special_ids`` are the (prefix, suffix, middle) token ids. ``spm`` puts the suffix first,
    a variant the starter model also trains on.
    """
    p, s, m = special_ids
    suffix_ids = suffix_ids[: max(0, budget) // 3]
    room = max(0, budget - len(suffix_ids))
    prefix_ids = prefix_ids[len(prefix_ids) - room :] if room else []
    if spm:
        return [s, *suffix_ids, p, *prefix_ids, m]
    return [p, *prefix_ids, s, *suffix_ids, m]
