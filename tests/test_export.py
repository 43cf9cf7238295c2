"""GGUF export: parity with the HF model, both architectures, LoRA merge, and refusal on failure."""

from pathlib import Path

import pytest
import torch
from llama_cpp import Llama
from peft import LoraConfig, get_peft_model
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from editloop.errors import ExportError
from editloop.models import export as export_module
from editloop.models.export import load_hf
from editloop.models.publish import export_verified, publish_checkpoint
from editloop.models.registry import ModelVersion, Registry
from editloop.settings import Settings, load_settings
from editloop.training.prompts import HfPromptTokenizer


def test_starter_export_parity_figures(tiny_version: ModelVersion) -> None:
    checks = tiny_version.manifest.checks
    assert checks["tokenizer"]["snippets"] >= 50
    assert checks["tokenizer"]["identical"] == checks["tokenizer"]["snippets"]
    greedy = checks["greedy"]
    assert greedy["prompts"] >= 20
    assert greedy["token_agreement"]["f16"] == 1.0
    assert greedy["token_agreement"]["q8_0"] >= 0.9


def test_a_suffix_first_model_says_so_in_its_gguf(tiny_hf_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = load_hf(tiny_hf_dir)
    model.config.fim_spm = True  # what small's config.json says
    exported, _ = export_verified(model, tokenizer, tmp_path, quants=("f16",))
    assert exported.fim.spm
    imported = Registry(tmp_path / "models").import_gguf(exported.files["f16"])
    assert imported.manifest.fim == exported.fim
    # Training rows read the order from config.json, so they are prompted as the server prompts.
    model.save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    assert HfPromptTokenizer.load(tmp_path / "hf").fim == exported.fim


def test_qwen2_architecture_exports_and_verifies(tiny_hf_dir: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        initializer_range=0.3,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    exported, checks = export_verified(model, tokenizer, tmp_path, quants=("f16", "q8_0"))
    assert exported.arch == "qwen2"
    assert not exported.fim.spm  # no fim_spm in its config: prefix first, as Qwen2.5-Coder
    assert checks["greedy"]["token_agreement"]["f16"] == 1.0
    llm = Llama(str(exported.files["q8_0"]), vocab_only=True, verbose=False)
    try:
        assert llm.tokenize(b"<|fim_middle|>", add_bos=False, special=True) == [
            tokenizer.convert_tokens_to_ids("<|fim_middle|>")
        ]
    finally:
        llm.close()


def _lora_adapter(hf_dir: Path, out: Path) -> Path:
    model, _ = load_hf(hf_dir)
    config = LoraConfig(
        r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )  # random B: the adapter really changes the model
    torch.manual_seed(1)
    get_peft_model(model, config).save_pretrained(out)
    return out


def test_lora_adapter_is_merged_into_the_published_gguf(
    tiny_hf_dir: Path, tiny_version: ModelVersion, tmp_path: Path
) -> None:
    settings = load_settings(home=tmp_path / "home")
    adapter = _lora_adapter(tiny_hf_dir, tmp_path / "adapter")
    version = publish_checkpoint(settings, tiny_hf_dir, adapter_dir=adapter)
    assert version.manifest.kind == "export" and version.manifest.adapter_dir == "adapter"
    assert version.manifest.checks["greedy"]["token_agreement"]["f16"] == 1.0
    merged = version.manifest.files[version.manifest.gguf["f16"]]
    base = tiny_version.manifest.files[tiny_version.manifest.gguf["f16"]]
    assert merged != base


def _assert_nothing_published(settings: Settings) -> None:
    registry = Registry(settings.models_dir)
    assert registry.versions() == []
    staging = settings.models_dir / ".staging"
    assert not staging.exists() or not any(staging.iterdir())


def test_wrong_rope_layout_fails_greedy_check_and_publishes_nothing(
    tiny_hf_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(home=tmp_path / "home")
    # A real export bug (q/k left in HF's rope layout) that only the parity check can see.
    monkeypatch.setattr(export_module, "_permute_rope", lambda w, n_head: w)
    with pytest.raises(ExportError, match="greedy parity check failed for f16"):
        publish_checkpoint(settings, tiny_hf_dir)
    _assert_nothing_published(settings)


def test_wrong_pretokenizer_fails_tokenizer_check(
    tiny_hf_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(home=tmp_path / "home")
    monkeypatch.setattr(export_module, "_pretokenizer_name", lambda tokenizer: "qwen2")
    with pytest.raises(ExportError, match="tokenizer parity check failed"):
        publish_checkpoint(settings, tiny_hf_dir)
    _assert_nothing_published(settings)


def test_unsupported_architecture_is_refused(tiny_hf_dir: Path, tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(ExportError, match="supported architectures are"):
        export_verified(model, tokenizer, tmp_path)


def _small(tiny_hf_dir: Path, model_type: str, **fields) -> tuple:
    """A small model of ``model_type`` with synthetic weights (every layer matters) and tiny's tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from editloop.models.synth import init_weights

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        **fields,
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    init_weights(model, seed=0)
    return model, tokenizer


def _gguf_value(path: Path, key: str):
    import gguf

    field = gguf.GGUFReader(path).get_field(key)
    return None if field is None else field.parts[field.data[0]][0]


def test_starcoder2_exports_with_layer_norm_biases_and_its_window_as_context(
    tiny_hf_dir: Path, tmp_path: Path
) -> None:
    model, tokenizer = _small(
        tiny_hf_dir,
        "starcoder2",
        num_key_value_heads=2,
        use_bias=True,
        norm_epsilon=1e-5,
        sliding_window=256,
        hidden_act="gelu_pytorch_tanh",
    )
    exported, checks = export_verified(model, tokenizer, tmp_path, quants=("f16", "q8_0"))
    assert exported.arch == "starcoder2"
    assert checks["greedy"]["token_agreement"]["f16"] == 1.0
    # llama.cpp's StarCoder2 has no sliding window: the GGUF promises no more context than the window.
    assert _gguf_value(exported.files["f16"], "starcoder2.context_length") == 256
    assert _gguf_value(exported.files["f16"], "starcoder2.attention.layer_norm_epsilon") == pytest.approx(
        1e-5
    )


def test_linear_rope_scaling_is_exported_and_checked(tiny_hf_dir: Path, tmp_path: Path) -> None:
    # DeepSeek-Coder's: llama, rope base 1e5 scaled linearly by 4.
    model, tokenizer = _small(
        tiny_hf_dir,
        "llama",
        num_key_value_heads=4,
        rope_theta=1e5,
        rope_scaling={"type": "linear", "factor": 4.0},
    )
    (tmp_path / "ok").mkdir()
    exported, checks = export_verified(model, tokenizer, tmp_path / "ok", quants=("f16",))
    assert checks["greedy"]["token_agreement"]["f16"] == 1.0
    f16 = exported.files["f16"]
    assert _gguf_value(f16, "llama.rope.scaling.factor") == pytest.approx(4.0)
    assert _gguf_value(f16, "llama.rope.freq_base") == pytest.approx(1e5)
    model.config.rope_parameters = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e5}
    with pytest.raises(ExportError, match="cannot export rope scaling 'yarn'"):
        export_verified(model, tokenizer, tmp_path / "yarn", quants=("f16",))


def test_rope_base_is_read_from_transformers_5_rope_parameters(tiny_hf_dir: Path, tmp_path: Path) -> None:
    model, tokenizer = _small(tiny_hf_dir, "qwen2", num_key_value_heads=2, rope_theta=1e6)
    assert not hasattr(model.config, "rope_theta")  # transformers 5 moved it into rope_parameters
    exported, _ = export_verified(model, tokenizer, tmp_path, quants=("f16",))
    assert _gguf_value(exported.files["f16"], "qwen2.rope.freq_base") == pytest.approx(1e6)
