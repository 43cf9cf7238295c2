"""A byte-level BPE tokenizer with Qwen2.5-Coder's special tokens, trained on the corpus.

GPT-2's pre-tokenizer regex and byte alphabet, so llama.cpp's ``gpt-2`` pre-tokenizer
reproduces it exactly and any UTF-8 text round-trips.
"""

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from editloop.models.fim import QWEN, FimTemplate

# At most this much text trains the tokenizer: merges stop improving long before 31 MB.
TOKENIZER_TRAIN_CHARS = 8_000_000


def train_tokenizer(texts: Iterable[str], vocab_size: int, template: FimTemplate = QWEN) -> Tokenizer:
    """Train BPE merges on ``texts``; special tokens take the first ids, eos first of all."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=template.special_tokens(),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_capped(texts, TOKENIZER_TRAIN_CHARS), trainer=trainer)
    return tokenizer


def _capped(texts: Iterable[str], budget: int) -> Iterable[str]:
    for text in texts:
        if budget <= 0:
            return
        yield text[:budget]
        budget -= len(text)


def save_hf_tokenizer(
    tokenizer: Tokenizer, out_dir: Path, template: FimTemplate = QWEN, max_length: int = 0
) -> None:
    """Write tokenizer.json plus the tokenizer_config.json transformers and TRL read."""
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=template.eos[0],
        pad_token=template.pad or template.eos[0],
        additional_special_tokens=[
            t for t in template.special_tokens() if t not in (template.eos[0], template.pad)
        ],
        model_max_length=max_length or int(1e9),
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(out_dir)
