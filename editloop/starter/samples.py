"""Training sequences for the starter model: plain code and FIM-transformed code.

Every sequence is a pure function of ``(seed, index)``, so a resumed run sees exactly the
batches an uninterrupted one would, with no sampler state to checkpoint.

FIM follows Bavarian et al. 2022 (character-level splits, PSM and SPM), with half of the
FIM samples aligned to lines — cursor somewhere in a line, middle running to the end of
it or a few lines on — because that is what an editor asks for.

With ``pack``, a sequence that ends short of ``seq_len`` (a FIM sample whose middle was
capped, a short file) is topped up with further samples, each after an EOS, instead of
padding: on the stdlib 15 % of a small starter's pre-training positions were padding.

``LINE_COMPLETION`` with ``middle_only`` is the last phase of the starter's training: every
sample is an editor's request (a line-aligned prompt, in the order the model will be served:
``spm_rate`` 0 or 1) and only the answer is learned.
"""

from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from editloop.corpus import SourceFile
from editloop.models.fim import QWEN, FimTemplate, fim_token_ids

IGNORE = -100


@dataclass(frozen=True)
class FimMix:
    fim_rate: float = 0.5  # share of samples FIM-transformed
    spm_rate: float = 0.5  # of those, share in suffix-prefix-middle order
    line_rate: float = 0.5  # of those, share whose middle is line-aligned


LINE_COMPLETION = FimMix(fim_rate=1.0, spm_rate=0.0, line_rate=1.0)


class SampleBuilder:
    """Turns a list of files into token sequences of at most ``seq_len`` tokens."""

    def __init__(
        self,
        files: list[SourceFile],
        tokenizer: Tokenizer,
        seq_len: int,
        seed: int,
        mix: FimMix = FimMix(),
        template: FimTemplate = QWEN,
        middle_only: bool = False,
        pack: bool = False,
    ) -> None:
        if pack and middle_only:
            raise ValueError("packing keeps whole-sequence labels; middle_only sequences are not packed")
        self.files = files
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.seed = seed
        self.mix = mix
        self.middle_only = middle_only
        self.pack = pack
        self.ids = {name: special_id(tokenizer, tok) for name, tok in _template_tokens(template).items()}
        sizes = np.array([len(f.text) for f in files], dtype=np.float64)
        self.cumulative = np.cumsum(sizes / sizes.sum())
        # Four characters a token is generous for code, so a window rarely underfills the sequence.
        self.window_chars = seq_len * 4

    def sample(self, index: int, part: int = 0) -> list[int]:
        """Sample ``index``; a packed row's further pieces are parts 1, 2, … of the same index."""
        rng = np.random.default_rng([self.seed, index] if part == 0 else [self.seed, index, part])
        file = self.files[min(int(np.searchsorted(self.cumulative, rng.random())), len(self.files) - 1)]
        text = _window(file.text, self.window_chars, rng)
        if rng.random() >= self.mix.fim_rate:
            return self._encode(text)[: self.seq_len]
        prefix, middle, suffix = _split(text, rng, line_aligned=rng.random() < self.mix.line_rate)
        return self.fim_tokens(prefix, middle, suffix, spm=rng.random() < self.mix.spm_rate)

    def fim_tokens(self, prefix: str, middle: str, suffix: str, spm: bool = False) -> list[int]:
        """One FIM sequence: the middle (capped, then EOS) follows a budgeted FIM prompt."""
        mid = [*self._encode(middle)[: self.seq_len // 4], self.ids["eos"]]
        specials = (self.ids["prefix"], self.ids["suffix"], self.ids["middle"])
        prompt = fim_token_ids(
            self._encode(prefix), self._encode(suffix), specials, self.seq_len - len(mid) - 3, spm
        )
        return prompt + mid

    def batch(self, step: int, batch_size: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
        """input_ids and labels for one optimizer step, right-padded; padding is not learned,
        nor, with ``middle_only``, a FIM prompt."""
        seqs = [self.row(step * batch_size + i) for i in range(batch_size)]
        input_ids = np.full((batch_size, self.seq_len), pad_id, dtype=np.int64)
        labels = np.full((batch_size, self.seq_len), IGNORE, dtype=np.int64)
        for row, seq in enumerate(seqs):
            input_ids[row, : len(seq)] = seq
            first = self._answer_start(seq) if self.middle_only else 0
            labels[row, first : len(seq)] = seq[first:]
        return input_ids, labels

    def row(self, index: int) -> list[int]:
        """One row of a batch: a sample, topped up to ``seq_len`` when packing."""
        seq, part = self.sample(index), 0
        while self.pack and len(seq) < self.seq_len:
            part += 1
            piece = self.sample(index, part)
            if not piece:
                break
            if seq[-1:] != [self.ids["eos"]]:
                seq.append(self.ids["eos"])
            seq.extend(piece)
        return seq[: self.seq_len]

    def _answer_start(self, seq: list[int]) -> int:
        """Index of the first middle token; a plain (non-FIM) sequence is learned whole."""
        middle = self.ids["middle"]
        return seq.index(middle) + 1 if middle in seq else 0

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids if text else []


def _template_tokens(template: FimTemplate) -> dict[str, str]:
    return {
        "prefix": template.prefix,
        "suffix": template.suffix,
        "middle": template.middle,
        "eos": template.eos[0],
    }


def _window(text: str, size: int, rng: np.random.Generator) -> str:
    if len(text) <= size:
        return text
    start = int(rng.integers(0, len(text) - size))
    # Start at a line boundary, as files and editor contexts do.
    newline = text.find("\n", start, start + size // 4)
    return text[newline + 1 if newline >= 0 else start :][:size]


def _split(text: str, rng: np.random.Generator, line_aligned: bool) -> tuple[str, str, str]:
    if not line_aligned:
        a, b = sorted(int(x) for x in rng.integers(0, len(text) + 1, size=2))
        return text[:a], text[a:b], text[b:]
    lines = text.splitlines(keepends=True)
    # Blank lines would teach "answer nothing" far more often than an editor needs it.
    filled = [i for i, line in enumerate(lines) if line.strip()] or [0]
    first = filled[int(rng.integers(0, len(filled)))]
    count = 1 if rng.random() < 0.7 else int(rng.integers(2, 5))
    line_start = sum(len(line) for line in lines[:first])
    line = lines[first]
    # The cursor sits after the indentation or inside the line, never in the middle of indentation.
    indent = len(line) - len(line.lstrip(" \t"))
    inside = rng.random() < 0.5
    cursor = (
        line_start + indent + (int(rng.integers(0, max(1, len(line.rstrip("\n")) - indent))) if inside else 0)
    )
    end = line_start + sum(len(x) for x in lines[first : first + count])
    end -= 1 if text[end - 1 : end] == "\n" else 0  # the newline stays in the suffix
    return text[:cursor], text[cursor:end], text[end:]


def special_id(tokenizer: Tokenizer, token: str) -> int:
    """The id of a special token the starter's tokenizer must have."""
    found = tokenizer.token_to_id(token)
    if found is None:
        raise ValueError(f"the tokenizer has no {token!r} token")
    return found
