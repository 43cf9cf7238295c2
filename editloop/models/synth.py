"""Real model shapes with seeded random weights: what a real FIM model costs, without its weights.

No weights can be downloaded here, but a model's cost to serve, train and export depends only on its
shape: architecture, widths, layers, heads, vocabulary. ``synth_checkpoint`` writes an HF checkpoint
with a family's published ``config.json`` values (checked against the configs on the Hub, see
:data:`SHAPES`), seeded random weights and a byte-level BPE tokenizer carrying the family's FIM tokens,
its vocabulary padded to the model's. ``--layers K`` keeps the real widths and vocabulary with fewer
layers, for tests.

The weights are chosen so the export's parity check means something: Kaiming-scale matrices make
every layer change the residual stream (HF's 0.02 init leaves a random model repeating its input, so
a rope or layout mistake would go unseen), norm weights and biases are jittered so a swapped tensor
shows, and every value is a bfloat16 in float16's normal range, so the f16 GGUF holds exactly the
HF weights. The config carries ``editloop_synthetic``: every version published from it, retrains
included, is marked ``synthetic`` in the registry, so nobody mistakes it for a trained model.

>>> hf_dir = synth_checkpoint("qwen2.5-coder-0.5b", Path("/tmp/q05"), layers=2)  # doctest: +SKIP
"""

import hashlib
import json
import logging
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from editloop.errors import ModelError
from editloop.models.export import QWEN2_PRETOKENIZER_REGEX
from editloop.models.fim import DEEPSEEK, QWEN, STARCODER, FimTemplate

log = logging.getLogger(__name__)

SYNTHETIC_CONFIG_KEY = "editloop_synthetic"
BPE_MERGES_VOCAB = 16_384  # trained merges; the rest of the vocabulary is padding no text reaches
TOKENIZER_TEXT_CHARS = 3_000_000  # of standard-library code: enough for 16k merges, seconds to train
EMBED_STD = 0.2  # logits of std ~ 0.2 * sqrt(hidden): clear argmaxes, and sampling still varies
JITTER_STD = 0.1  # norm weights 1 ± this, biases of this std
F16_MIN_NORMAL = 2.0**-14  # smaller values would be f16 subnormals, which lose bf16's bits
INIT_VERSION = 2  # in the recipe stamp: a checkpoint built by another init is rebuilt, not reused


@dataclass(frozen=True)
class Shape:
    """A family's published architecture (``config`` holds its config.json values)."""

    name: str
    model_type: str
    config: dict
    template: FimTemplate
    qwen2_pretokenizer: bool  # Qwen2's split regex; the others use GPT-2's byte-level one here
    source: str  # the config.json these values were checked against


# Checked against the published config.json files (via mirrors and fine-tunes naming them as base,
# where the Hub itself was not reachable): the values below are theirs, field for field.
SHAPES = {
    "qwen2.5-coder-0.5b": Shape(
        "qwen2.5-coder-0.5b",
        "qwen2",
        dict(
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            vocab_size=151_936,
            max_position_embeddings=32_768,
            rms_norm_eps=1e-6,
            rope_theta=1_000_000.0,
            tie_word_embeddings=True,
            hidden_act="silu",
            use_sliding_window=False,
        ),
        QWEN,
        qwen2_pretokenizer=True,
        source="Qwen/Qwen2.5-Coder-0.5B config.json",
    ),
    "qwen2.5-coder-1.5b": Shape(
        "qwen2.5-coder-1.5b",
        "qwen2",
        dict(
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            vocab_size=151_936,
            max_position_embeddings=32_768,
            rms_norm_eps=1e-6,
            rope_theta=1_000_000.0,
            tie_word_embeddings=True,
            hidden_act="silu",
            use_sliding_window=False,
        ),
        QWEN,
        qwen2_pretokenizer=True,
        source="Qwen/Qwen2.5-Coder-1.5B config.json",
    ),
    "deepseek-coder-1.3b": Shape(
        "deepseek-coder-1.3b",
        "llama",
        dict(
            hidden_size=2048,
            intermediate_size=5504,
            num_hidden_layers=24,
            num_attention_heads=16,
            num_key_value_heads=16,
            vocab_size=32_256,
            max_position_embeddings=16_384,
            rms_norm_eps=1e-6,
            rope_theta=100_000.0,
            rope_scaling={"type": "linear", "factor": 4.0},
            tie_word_embeddings=False,
            hidden_act="silu",
            attention_bias=False,
        ),
        DEEPSEEK,
        qwen2_pretokenizer=False,
        source="deepseek-ai/deepseek-coder-1.3b-base config.json",
    ),
    "starcoder2-3b": Shape(
        "starcoder2-3b",
        "starcoder2",
        dict(
            hidden_size=3072,
            intermediate_size=12_288,
            num_hidden_layers=30,
            num_attention_heads=24,
            num_key_value_heads=2,
            vocab_size=49_152,
            max_position_embeddings=16_384,
            norm_epsilon=1e-5,
            rope_theta=999_999.4420358813,
            sliding_window=4096,
            use_bias=True,
            hidden_act="gelu_pytorch_tanh",
            tie_word_embeddings=True,
        ),
        STARCODER,
        qwen2_pretokenizer=False,
        source="bigcode/starcoder2-3b config.json",
    ),
}


def shape(name: str) -> Shape:
    try:
        return SHAPES[name]
    except KeyError:
        raise ModelError(f"unknown shape {name!r}; choose from {', '.join(SHAPES)}") from None


def synth_checkpoint(name: str, out_dir: Path, layers: int | None = None, seed: int = 0) -> Path:
    """Write the shape's HF checkpoint (config, bf16 weights, tokenizer) into ``out_dir``; reuse it
    when ``out_dir`` already holds the same recipe."""
    spec = shape(name)
    n_layers = layers or spec.config["num_hidden_layers"]
    if not 1 <= n_layers <= spec.config["num_hidden_layers"]:
        raise ModelError(f"--layers must be 1 to {spec.config['num_hidden_layers']} for {name}, not {layers}")
    recipe = {"shape": name, "layers": n_layers, "seed": seed, "source": spec.source, "init": INIT_VERSION}
    stamp = out_dir / "synthetic.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == recipe:
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    tokenizer = build_tokenizer(spec)
    config = AutoConfig.for_model(
        spec.model_type,
        **{**spec.config, "num_hidden_layers": n_layers},
        **_token_ids(tokenizer, spec.template),
        **{SYNTHETIC_CONFIG_KEY: recipe},
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    init_weights(model, seed)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    stamp.write_text(json.dumps(recipe))
    log.info("synthetic %s (%d layers) written to %s", name, n_layers, out_dir)
    return out_dir


def build_tokenizer(spec: Shape) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on standard-library code with the family's special tokens first,
    padded with unreachable tokens up to the model's vocabulary size."""
    specials = spec.template.special_tokens()
    tokenizer = Tokenizer(models.BPE())
    if spec.qwen2_pretokenizer:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZER_REGEX), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_MERGES_VOCAB,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_stdlib_text(TOKENIZER_TEXT_CHARS), trainer=trainer)
    padded = _pad_vocab(tokenizer, spec.config["vocab_size"])
    return PreTrainedTokenizerFast(
        tokenizer_object=padded,
        eos_token=spec.template.eos[0],
        pad_token=spec.template.pad or spec.template.eos[0],
        additional_special_tokens=[t for t in specials if t not in (spec.template.eos[0], spec.template.pad)],
        model_max_length=spec.config["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )


def _pad_vocab(tokenizer: Tokenizer, size: int) -> Tokenizer:
    """The tokenizer with filler tokens up to ``size`` ids; no merge produces them, so text never
    tokenizes to one (as the unused rows real checkpoints pad their embeddings with)."""
    spec = json.loads(tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    if len(vocab) > size:
        raise ModelError(f"the trained vocabulary ({len(vocab)}) exceeds the model's ({size})")
    for i in range(len(vocab), size):
        vocab[f"<synthetic_pad_{i}>"] = i
    return Tokenizer.from_str(json.dumps(spec))


def _stdlib_text(budget: int):
    """Standard-library Python in a fixed order (email excluded: the demo replays it)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        if budget <= 0:
            return
        if "email" in path.relative_to(root).parts or "site-packages" in path.parts:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        yield text[:budget]
        budget -= len(text)


def _token_ids(tokenizer: PreTrainedTokenizerFast, template: FimTemplate) -> dict[str, int]:
    eos = _one_id(tokenizer, template.eos[0])
    pad = _one_id(tokenizer, template.pad) if template.pad else eos
    return {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": pad}


def _one_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    found = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(found, int):
        raise ValueError(f"{token!r} is not one token of the tokenizer")
    return found


def _input_embeddings(model: PreTrainedModel) -> torch.Tensor:
    embeddings = model.get_input_embeddings()
    weight = embeddings.weight if isinstance(embeddings, torch.nn.Embedding) else None
    if weight is None:
        raise ValueError(f"{type(model).__name__} has no embedding matrix")
    return weight


@torch.no_grad()
def init_weights(model: PreTrainedModel, seed: int) -> None:
    """Seeded weights, each tensor from its own name's seed (so ``--layers 2`` is the full model's
    first two layers), rounded to bf16 values that f16 holds exactly."""
    for name, param in model.named_parameters():
        generator = torch.Generator().manual_seed(_tensor_seed(seed, name))
        values = torch.randn(param.shape, generator=generator, dtype=torch.float32)
        if name.endswith("bias"):
            values *= JITTER_STD
        elif param.ndim == 1:  # norm weights
            values = 1.0 + JITTER_STD * values
        elif name.startswith("lm_head"):
            # An untied head starts as the embeddings plus noise: logits then favour tokens of the
            # context, as a trained model's do, instead of a random projection whose near-ties any
            # quantization flips (DeepSeek's shape agreed on 89.6% of Q8_0 argmaxes that way).
            values = _input_embeddings(model).float() + JITTER_STD * EMBED_STD * values
        elif "embed" in name:
            values *= EMBED_STD
        else:  # projections: output as large as input, so every layer moves the residual stream
            values /= param.shape[1] ** 0.5
        values[values.abs() < F16_MIN_NORMAL] = 0.0
        param.copy_(values.to(param.dtype))


def _tensor_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "big")


def is_synthetic(config) -> bool:
    """Whether an HF config (a checkpoint's, or one trained from it) came from :func:`synth_checkpoint`."""
    return bool(getattr(config, SYNTHETIC_CONFIG_KEY, None))


# Parity on a synthetic model checks layout, rope and tokenizer, not what training did: a few short
# prompts find those (each prompt in both orders, 16 tokens each), and at 1.5B the cycle's 20 prompts
# of 512 tokens cost minutes of CPU that say nothing more.
PARITY_PROMPTS, PARITY_PROMPT_TOKENS = 6, 256


def publish_synthetic(
    settings, name: str, layers: int | None = None, seed: int = 0, activate: bool = False, threads: int = 2
):
    """Build (or reuse) the checkpoint under ``home/synth/``, export it to f16, Q8_0 and Q4_K_M,
    verify parity and publish it as a ``synthetic`` version."""
    from editloop.models.parity import default_inputs
    from editloop.models.publish import publish_checkpoint

    spec = shape(name)
    n_layers = layers or spec.config["num_hidden_layers"]
    hf_dir = synth_checkpoint(name, synth_dir(settings, name, n_layers, seed), n_layers, seed)
    return publish_checkpoint(
        settings,
        hf_dir,
        activate=activate,
        threads=threads,
        kind="synthetic",
        training_data={SYNTHETIC_CONFIG_KEY: json.loads((hf_dir / "synthetic.json").read_text())},
        inputs=default_inputs(n_prompts=PARITY_PROMPTS, max_prompt_tokens=PARITY_PROMPT_TOKENS),
    )


def synth_dir(settings, name: str, layers: int, seed: int) -> Path:
    return settings.home / "synth" / f"{name}-{layers}l-seed{seed}"
