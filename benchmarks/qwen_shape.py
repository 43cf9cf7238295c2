"""A Qwen2.5-Coder-0.5B-shaped model with seeded random weights, to time serving at a real size.

A stand-in until ``editloop models synth`` (issue 23) builds these: the family's real widths
(qwen2, hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate 4864, vocabulary 151,936, tied
embeddings, rope θ 1e6) exported by editloop's own :func:`~editloop.models.export.export_gguf`, with
the starter's tokenizer (the rows past it are padding, as real checkpoints pad theirs). Random
weights cost what trained ones cost to run, but they copy nothing and agree with nothing, so
speculation and candidates sharing a sequence cannot gain on this model.
"""

from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from editloop.models.export import export_gguf
from editloop.models.registry import ModelVersion, Registry

NAME = "qwen2.5-coder-0.5b-shape"
CONFIG = dict(
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    vocab_size=151_936,
    tie_word_embeddings=True,
    rope_theta=1_000_000.0,
    max_position_embeddings=32_768,
    rms_norm_eps=1e-6,
)


def qwen_shape_gguf(tokenizer_dir: Path, cache_dir: Path, seed: int = 0) -> Path:
    """The Q8_0 GGUF, built once into ``cache_dir`` (about 20 s and 0.5 GB)."""
    gguf = cache_dir / NAME / "model-q8_0.gguf"
    if gguf.is_file():
        return gguf
    gguf.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = Qwen2Config(**CONFIG, architectures=["Qwen2ForCausalLM"])
    model = Qwen2ForCausalLM(config).eval()
    export_gguf(model, AutoTokenizer.from_pretrained(tokenizer_dir), gguf.parent, quants=("q8_0",))
    return gguf


def qwen_shape_version(tokenizer_dir: Path, cache_dir: Path, registry: Registry) -> ModelVersion:
    """The shape published and activated in ``registry``."""
    version = registry.import_gguf(qwen_shape_gguf(tokenizer_dir, cache_dir))
    return registry.activate(version.name)
