"""Fill-in-the-middle prompt templates, named after the model families that define them.

The starter model uses Qwen2.5-Coder's token names, so llama.cpp detects its FIM tokens and a
real Qwen2.5-Coder model is a drop-in replacement.

>>> QWEN.format("def f():\\n    ", "\\n")
'<|fim_prefix|>def f():\\n    <|fim_suffix|>\\n<|fim_middle|>'

A model trained to read the suffix first (``spm``, as llama.cpp's ``--spm-infill``) gets the
same tokens in suffix-prefix-middle order, so the code just before the cursor sits right
before the answer:

>>> QWEN.model_copy(update={"spm": True}).format("def f():\\n    ", "\\n")
'<|fim_suffix|>\\n<|fim_prefix|>def f():\\n    <|fim_middle|>'
"""

from collections.abc import Iterable
from typing import TypeVar

from pydantic import BaseModel

from editloop.errors import NoFimTokensError

# Where a model says it is prompted suffix first: a key of its HF config.json and of its GGUF
# metadata. FIM token names cannot tell, and a model prompted in the other order answers worse.
SPM_CONFIG_KEY = "fim_spm"
SPM_GGUF_KEY = "editloop.fim_spm"

T = TypeVar("T")


class FimTemplate(BaseModel, frozen=True):
    """The special tokens that frame a FIM prompt, and the order the model reads them in."""

    family: str
    prefix: str
    suffix: str
    middle: str
    eos: tuple[str, ...] = ()
    file_sep: str | None = None
    repo_name: str | None = None
    pad: str | None = None
    spm: bool = False  # suffix-prefix-middle order, else prefix-suffix-middle

    def format(self, prefix: str, suffix: str) -> str:
        return "".join(ordered([prefix], [suffix], (self.prefix, self.suffix, self.middle), self.spm))

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


def detect_template(tokens: Iterable[str], source: str = "model", spm: bool = False) -> FimTemplate:
    """The template whose prefix, suffix and middle tokens are all in ``tokens``, in the order
    ``spm`` says (the model's :data:`SPM_CONFIG_KEY` or :data:`SPM_GGUF_KEY`).

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
                    "spm": spm,
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

    ``special_ids`` are the (prefix, suffix, middle) token ids. ``spm`` puts the suffix first.
    """
    suffix_ids = suffix_ids[: max(0, budget) // 3]
    room = max(0, budget - len(suffix_ids))
    prefix_ids = prefix_ids[len(prefix_ids) - room :] if room else []
    return ordered(prefix_ids, suffix_ids, special_ids, spm)


def ordered(prefix_ids: list[T], suffix_ids: list[T], special_ids: tuple[T, T, T], spm: bool) -> list[T]:
    """The prompt's pieces (ids, or text) in PSM or SPM order, ending at the middle token the
    answer follows; ``special_ids`` are the (prefix, suffix, middle) tokens."""
    p, s, m = special_ids
    if spm:
        return [s, *suffix_ids, p, *prefix_ids, m]
    return [p, *prefix_ids, s, *suffix_ids, m]
