"""Training rows and their FIM prompts, built by the serving prompt builder from an HF tokenizer.

The model learns on exactly the token ids the server will show it: :func:`build_prompt` (the
serving code) runs over :class:`HfPromptTokenizer`, whose ids equal llama.cpp's (export verifies
that on every published version). The completion is the text the user kept, then EOS.

>>> tokens = HfPromptTokenizer.load(hf_dir)  # doctest: +SKIP
>>> example = FimExample(prefix="def add(a, b):\\n    return ", suffix="\\n", reference="a + b")
>>> ids = fim_prompt_ids(tokens, example, max_new_tokens=32)  # doctest: +SKIP
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from editloop.completion.prompt import build_prompt
from editloop.completion.syntax import language_for_path
from editloop.completion.types import Snippet
from editloop.errors import ModelError, TrainingDataError
from editloop.models.fim import SPM_CONFIG_KEY, FimTemplate, detect_template


@dataclass(frozen=True)
class FimExample:
    """One training row: the buffer around the cursor and the text the user kept there."""

    prefix: str
    suffix: str
    reference: str  # the kept text: SFT's target, and what match rewards compare with
    language: str = ""
    filepath: str | None = None
    tests: str | None = None  # code that exercises the file (a test module, a check() call)
    extra: tuple[Snippet, ...] = field(default=())  # other files' snippets, as the request sent them

    @classmethod
    def coerce(cls, row: "FimExample | Mapping[str, Any]") -> "FimExample":
        """A row from a dataclass or a dict (unknown keys ignored); the language falls back on the path."""
        if isinstance(row, FimExample):
            example = row
        else:
            missing = [k for k in ("prefix", "suffix", "reference") if not isinstance(row.get(k), str)]
            if missing:
                raise TrainingDataError(f"training row lacks text field(s) {missing}: {_preview(row)}")
            known = {f.name for f in fields(cls)}
            values = {k: v for k, v in row.items() if k in known and v is not None}
            values["extra"] = tuple(Snippet.model_validate(s) for s in values.get("extra", ()))
            example = cls(**values)
        if not example.language and example.filepath:
            language = language_for_path(example.filepath)
            if language:
                return replace(example, language=language)
        return example

    def columns(self) -> dict[str, Any]:
        """The row as reward-function columns (TRL passes every dataset column as a keyword)."""
        return {
            "prefix": self.prefix,
            "suffix": self.suffix,
            "reference": self.reference,
            "language": self.language,
            "filepath": self.filepath or "",
            "tests": self.tests,
        }


def _preview(row: Mapping[str, Any]) -> str:
    return repr({k: (v[:40] + "…" if isinstance(v, str) and len(v) > 40 else v) for k, v in row.items()})


@dataclass
class HfPromptTokenizer:
    """What :func:`build_prompt` asks of a backend, answered by an HF tokenizer instead of llama.cpp."""

    tokenizer: PreTrainedTokenizerBase
    fim: FimTemplate
    n_ctx: int
    version: str = "training"
    # get_vocab() builds a new dict on every call (150k entries for Qwen): read it once.
    _vocab: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._vocab = self.tokenizer.get_vocab()

    @classmethod
    def load(cls, hf_dir: Path, max_context: int | None = None) -> "HfPromptTokenizer":
        """The checkpoint's tokenizer and FIM template; the context is the model's (capped when asked)."""
        try:
            tokenizer = AutoTokenizer.from_pretrained(hf_dir)
            config = json.loads((hf_dir / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the tokenizer of {hf_dir}: {exc}") from exc
        spm = bool(config.get(SPM_CONFIG_KEY, False))
        fim = detect_template(tokenizer.get_vocab(), source=f"tokenizer in {hf_dir}", spm=spm)
        n_ctx = int(config.get("max_position_embeddings") or 2048)
        return cls(tokenizer, fim, min(n_ctx, max_context) if max_context else n_ctx, hf_dir.name)

    def tokenize(self, text: str) -> list[int]:
        # split_special_tokens: "<|fim_prefix|>" inside user code stays text, as llama.cpp's special=False.
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def special_id(self, token: str) -> int | None:
        return self._vocab.get(token)

    @property
    def eos_id(self) -> int:
        eos = self.special_id(self.fim.eos[0]) if self.fim.eos else self.tokenizer.eos_token_id
        if eos is None:
            raise ModelError(f"tokenizer of {self.version} has no end-of-sequence token")
        return eos


def fim_prompt_ids(tokens: HfPromptTokenizer, example: FimExample, max_new_tokens: int) -> list[int]:
    """The prompt ids the server would build for this cursor, leaving room for ``max_new_tokens``."""
    return build_prompt(
        tokens, example.prefix, example.suffix, list(example.extra), example.filepath, max_new_tokens
    ).ids


def completion_ids(tokens: HfPromptTokenizer, example: FimExample) -> list[int]:
    """The kept text's ids followed by EOS: what the model should say, and that it should stop."""
    return [*tokens.tokenize(example.reference), tokens.eos_id]
