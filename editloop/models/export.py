"""HF checkpoint (optionally + a LoRA adapter) → GGUF f16, Q8_0, Q4_K_M, verified before return.

Written with the ``gguf`` package rather than llama.cpp's converter script: the script is
not installable and refuses BPE pre-tokenizers it has not hashed. Quantization runs
in-process through llama-cpp-python. Verification is in :mod:`editloop.models.parity`.
"""

import ctypes
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from editloop.errors import ExportError, ModelError
from editloop.models.fim import SPM_CONFIG_KEY, SPM_GGUF_KEY, FimTemplate, detect_template

log = logging.getLogger(__name__)

# llama.cpp file types (enum llama_ftype) for the quantizations editloop publishes.
QUANT_FTYPES = {"q8_0": 7, "q4_k_m": 15}
K_QUANT_BLOCK = 256
QWEN2_PRETOKENIZER_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class ArchSpec:
    gguf_name: str
    permute_qk: bool  # llama.cpp's llama arch wants q/k rows in its interleaved rope layout
    layer_norm: bool = False  # LayerNorm with biases (eps in ``norm_epsilon``), else RMSNorm


ARCHS = {
    "LlamaForCausalLM": ArchSpec("llama", permute_qk=True),
    "Qwen2ForCausalLM": ArchSpec("qwen2", permute_qk=False),
    # StarCoder2: LayerNorm + biases everywhere, a GELU MLP (c_fc, c_proj), sliding-window attention.
    "Starcoder2ForCausalLM": ArchSpec("starcoder2", permute_qk=False, layer_norm=True),
}
# Rope variants llama.cpp applies from GGUF metadata alone; others (yarn, llama3, dynamic) are refused
# rather than exported with a rope the model was not trained with.
ROPE_SCALINGS = ("default", "linear")


@dataclass
class ExportResult:
    files: dict[str, Path]  # quant name → GGUF path
    arch: str
    fim: FimTemplate
    # quant name → tensors llama.cpp stored in another type than the quant's own, by type: K-quants
    # need rows of 256 values, and llama.cpp's quantize falls back per tensor (q4_K → q5_0, q6_K →
    # q8_0, f16 where even 32 does not divide) for narrower rows, e.g. all of Qwen2.5-0.5B's 896.
    fallbacks: dict[str, dict[str, int]] = field(default_factory=dict)


def load_hf(
    hf_dir: Path, adapter_dir: Path | None = None, adapter_scale: float = 1.0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model in fp32 with any LoRA adapter merged in, and its tokenizer.

    ``adapter_scale`` < 1 merges that share of the adapter's update: a blend of the fine-tuned model
    with the one it started from.
    """
    if not (hf_dir / "config.json").is_file():
        raise ModelError(f"{hf_dir} is not a transformers checkpoint (no config.json)")
    try:
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
        # An adapter saved with its own tokenizer (added tokens) wins over the base one.
        has_own = adapter_dir is not None and (adapter_dir / "tokenizer.json").is_file()
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir if has_own else hf_dir)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the checkpoint in {hf_dir}: {exc}") from exc
    if adapter_dir is not None:
        from peft import PeftModel

        peft = PeftModel.from_pretrained(model, adapter_dir)
        if adapter_scale != 1.0:
            for module in peft.modules():
                scaling = getattr(module, "scaling", None)
                if isinstance(scaling, dict):  # a LoRA layer: update = scaling[name] · B A
                    for name in scaling:
                        scaling[name] *= adapter_scale
        model = peft.merge_and_unload()
    return model.eval(), tokenizer


def checkpoint_dtype(hf_dir: Path) -> torch.dtype:
    """The dtype a checkpoint's weights are stored in (its config's), fp32 when it does not say."""
    config = json.loads((hf_dir / "config.json").read_text())
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    dtype = getattr(torch, str(name), None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def write_gguf(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: Path
) -> tuple[str, FimTemplate]:
    """Write ``model`` as an f16 GGUF with its tokenizer and FIM metadata."""
    import gguf

    arch_name = model.config.architectures[0] if model.config.architectures else type(model).__name__
    spec = ARCHS.get(arch_name)
    if spec is None:
        raise ExportError(f"cannot export {arch_name}: supported architectures are {', '.join(ARCHS)}")
    vocab = _vocab(tokenizer, model.config.vocab_size)
    spm = bool(getattr(model.config, SPM_CONFIG_KEY, False))
    template = detect_template(vocab.tokens, source=f"tokenizer of {arch_name}", spm=spm)
    writer = gguf.GGUFWriter(str(path), spec.gguf_name)
    _write_hparams(writer, model.config, spec)
    _write_tokenizer(writer, tokenizer, vocab, template)
    _write_tensors(writer, model, spec)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return spec.gguf_name, template


def quantize(src: Path, dst: Path, quant: str, threads: int) -> None:
    import llama_cpp

    # llama.cpp logs every tensor it converts; keep only its errors.
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_FTYPES[quant]
    params.nthread = threads
    status = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if status != 0 or not dst.is_file():
        raise ExportError(f"llama.cpp failed to quantize {src.name} to {quant} (status {status})")


def tensor_types(path: Path) -> dict[str, int]:
    """How many of a GGUF's matrices are stored in each type (norms and biases stay f32)."""
    import gguf

    counts: dict[str, int] = {}
    for tensor in gguf.GGUFReader(path).tensors:
        if len(tensor.shape) == 2:
            name = tensor.tensor_type.name.lower()
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def k_quant_fallbacks(model: PreTrainedModel) -> int:
    """Matrices whose rows are not a multiple of 256 values: K-quants fall back on these."""
    return sum(t.ndim == 2 and t.shape[1] % K_QUANT_BLOCK != 0 for t in model.state_dict().values())


def export_gguf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: Path,
    quants: tuple[str, ...] = ("f16", "q8_0", "q4_k_m"),
    threads: int = 2,
) -> ExportResult:
    """Write every requested quant into ``out_dir`` (f16 first; the others derive from it)."""
    f16 = out_dir / "model-f16.gguf"
    arch, template = write_gguf(model, tokenizer, f16)
    result = ExportResult(files={"f16": f16}, arch=arch, fim=template)
    for quant in quants:
        if quant == "f16":
            continue
        if quant not in QUANT_FTYPES:
            raise ExportError(f"unknown quantization {quant!r}; choose from f16, {', '.join(QUANT_FTYPES)}")
        dst = out_dir / f"model-{quant}.gguf"
        quantize(f16, dst, quant, threads)
        result.files[quant] = dst
        if quant.startswith("q4_k") and k_quant_fallbacks(model):
            result.fallbacks[quant] = tensor_types(dst)
    if "f16" not in quants:
        f16.unlink()
        del result.files["f16"]
    return result


@dataclass
class Vocab:
    tokens: list[str]
    types: list[int]
    special_ids: dict[str, int]


def _vocab(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> Vocab:
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {t.content: t.special for t in tokenizer.backend_tokenizer.get_added_tokens_decoder().values()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        token = by_id.get(i)
        if token is None:
            # Real checkpoints pad the embedding past the tokenizer (Qwen2.5: 151936 rows); mark those unused.
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[token] else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    return Vocab(tokens, types, {t: i for i, t in enumerate(tokens) if t in added})


def _pretokenizer_name(tokenizer: PreTrainedTokenizerBase) -> str:
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    if pre.get("type") == "Sequence":
        patterns = [
            p.get("pattern", {}).get("Regex") for p in pre.get("pretokenizers", []) if p["type"] == "Split"
        ]
        if patterns == [QWEN2_PRETOKENIZER_REGEX]:
            return "qwen2"
    raise ExportError(
        "the tokenizer's pre-tokenizer is neither GPT-2 byte-level nor Qwen2's; llama.cpp would split "
        "text differently from the model, so editloop will not export it"
    )


def _merges(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"].get("type") != "BPE":
        raise ExportError(f"only BPE tokenizers export to GGUF here, not {spec['model'].get('type')}")
    return [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]


def _write_tokenizer(writer, tokenizer, vocab: Vocab, template: FimTemplate) -> None:
    import gguf

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pretokenizer_name(tokenizer))
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(_merges(tokenizer))
    ids = vocab.special_ids
    eos = template.eos[0]
    writer.add_eos_token_id(ids[eos])
    writer.add_bos_token_id(ids[eos])
    writer.add_add_bos_token(False)
    writer.add_pad_token_id(ids[template.pad] if template.pad else ids[eos])
    # gguf has no add_fim_* helpers; llama.cpp reads these keys to find the FIM tokens.
    keys = gguf.Keys.Tokenizer
    fim = {
        keys.FIM_PRE_ID: template.prefix,
        keys.FIM_SUF_ID: template.suffix,
        keys.FIM_MID_ID: template.middle,
        keys.FIM_PAD_ID: template.pad,
        keys.FIM_REP_ID: template.repo_name,
        keys.FIM_SEP_ID: template.file_sep,
    }
    for key, token in fim.items():
        if token:
            writer.add_uint32(key, ids[token])
    if template.spm:
        writer.add_bool(SPM_GGUF_KEY, True)


def _write_hparams(writer, config, spec: ArchSpec) -> None:
    import gguf

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(context_length(config))
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    theta, scaling, factor = rope_settings(config)
    writer.add_rope_freq_base(theta)
    if scaling == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(factor)
    if spec.layer_norm:
        writer.add_layer_norm_eps(config.norm_epsilon)
    else:
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)


def context_length(config) -> int:
    """The context the GGUF declares. A sliding-window model's is capped at its window: llama.cpp's
    StarCoder2 attends to the whole context, which equals the model's windowed attention only up to
    the window (4096 tokens for StarCoder2), and servers size their context from this value."""
    window = getattr(config, "sliding_window", None)
    windowed = config.model_type == "starcoder2" and window
    return min(config.max_position_embeddings, window) if windowed else config.max_position_embeddings


def rope_settings(config) -> tuple[float, str, float]:
    """(base frequency, scaling type, factor), from transformers 5's ``rope_parameters`` or the
    older ``rope_theta``/``rope_scaling`` (read wrongly, a retrained Qwen2.5 exported with base 10000)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    legacy = getattr(config, "rope_scaling", None) or {}
    theta = params.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0
    scaling = params.get("rope_type") or legacy.get("rope_type") or legacy.get("type") or "default"
    if scaling not in ROPE_SCALINGS:
        supported = ", ".join(ROPE_SCALINGS)
        raise ExportError(f"cannot export rope scaling {scaling!r}; editloop exports: {supported}")
    return float(theta), scaling, float(params.get("factor") or legacy.get("factor") or 1.0)


def _write_tensors(writer, model: PreTrainedModel, spec: ArchSpec) -> None:
    import gguf

    config = model.config
    arch = gguf.MODEL_ARCH[spec.gguf_name.upper()]
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd when output.weight is absent
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"no GGUF name for tensor {hf_name}")
        data = tensor.detach().float().numpy()
        if spec.permute_qk and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.num_attention_heads if "q_proj" in hf_name else config.num_key_value_heads
            data = _permute_rope(data, heads)
        # Norms and biases stay f32 (llama.cpp expects that); matrices go to f16.
        writer.add_tensor(name, data.astype(np.float16 if data.ndim == 2 else np.float32))


def _permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    rows, cols = w.shape
    return w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)
