"""Synthetic real shapes: Qwen2.5-Coder-0.5B's widths and 151,936-token vocabulary at 2 layers, through
the real export (f16, Q8_0, Q4_K_M with llama.cpp's per-tensor fallbacks), parity, registry and server."""

from pathlib import Path

import gguf
import httpx
import pytest
from transformers import AutoConfig, AutoTokenizer
from typer.testing import CliRunner

from editloop.cli import app
from editloop.errors import ModelError
from editloop.models.registry import ModelVersion, Registry
from editloop.models.synth import SHAPES, publish_synthetic, synth_checkpoint
from editloop.settings import Settings, load_settings
from tests.server_fixtures import auth, running_server

SHAPE = "qwen2.5-coder-0.5b"


@pytest.fixture(scope="module")
def synth_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return load_settings(home=tmp_path_factory.mktemp("synth-home"))


@pytest.fixture(scope="module")
def synth_version(synth_settings: Settings) -> ModelVersion:
    """Built, exported, verified and published once for the module (about a minute on 2 cores)."""
    return publish_synthetic(synth_settings, SHAPE, layers=2, activate=True)


def _field(reader: gguf.GGUFReader, key: str):
    value = reader.get_field(key)
    assert value is not None, key
    return value.parts[value.data[0]][0]


def test_the_checkpoint_has_the_family_config_and_a_padded_tokenizer(synth_version: ModelVersion) -> None:
    hf_dir = synth_version.hf_path()
    assert hf_dir is not None
    config = AutoConfig.from_pretrained(hf_dir)
    real = SHAPES[SHAPE].config
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"):
        assert getattr(config, key) == real[key], key
    assert config.vocab_size == 151_936 and config.tie_word_embeddings
    assert config.num_hidden_layers == 2 and config.model_type == "qwen2"
    assert config.rope_parameters["rope_theta"] == 1_000_000.0
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    assert len(tokenizer) == config.vocab_size
    fim_ids = tokenizer.convert_tokens_to_ids(["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"])
    assert len(set(fim_ids)) == 3 and tokenizer.unk_token_id not in fim_ids
    # Padding is never produced by text: ids of ordinary code stay within the trained merges.
    ids = tokenizer("def main(argv):\n    return 0\n", add_special_tokens=False)["input_ids"]
    assert max(ids) < 16_384


def test_export_carries_real_hparams_and_q4_k_m_falls_back_per_tensor(synth_version: ModelVersion) -> None:
    manifest = synth_version.manifest
    assert manifest.kind == "synthetic" and manifest.synthetic
    assert set(manifest.gguf) == {"f16", "q8_0", "q4_k_m"} and manifest.arch == "qwen2"
    assert manifest.fim.family == "qwen2.5-coder" and not manifest.fim.spm
    greedy = manifest.checks["greedy"]
    assert greedy["token_agreement"]["f16"] == 1.0 and greedy["token_agreement"]["q8_0"] >= 0.9
    assert manifest.checks["tokenizer"]["identical"] == manifest.checks["tokenizer"]["snippets"]
    # 896-wide rows are not multiples of 256: llama.cpp stores those matrices as q5_0/q8_0, and the
    # 4864-wide down projections as q4_K/q6_K.
    types = manifest.checks["quant_fallbacks"]["q4_k_m"]
    assert types.get("q5_0", 0) > 0 and types.get("q4_k", 0) + types.get("q6_k", 0) > 0
    reader = gguf.GGUFReader(synth_version.gguf_path("q4_k_m"))
    assert len(reader.get_field("tokenizer.ggml.tokens").data) == 151_936
    assert _field(reader, "qwen2.rope.freq_base") == pytest.approx(1_000_000.0)
    assert _field(reader, "qwen2.context_length") == 32_768
    assert _field(reader, "qwen2.attention.head_count_kv") == 2


def test_it_is_listed_as_synthetic_and_serves_a_completion(
    synth_settings: Settings, synth_version: ModelVersion, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDITLOOP_HOME", str(synth_settings.home))
    listed = CliRunner().invoke(app, ["models", "list"], terminal_width=200)
    assert listed.exit_code == 0 and "synthetic" in listed.stdout and synth_version.name in listed.stdout
    overrides = {"abstain_threshold": 0.0, "feedback_enabled": False, "trainer": False, "model_threads": 2}
    with running_server(synth_settings.home, **overrides) as (url, _settings, _app):
        body = {
            "prefix": "import os\n\ndef main(argv):\n    ",
            "suffix": "\n",
            "mode": "block",
            "max_tokens": 8,
        }
        reply = httpx.post(f"{url}/complete", json=body, headers=auth(), timeout=120)
    assert reply.status_code == 200, reply.text
    result = reply.json()
    assert result["model_version"] == synth_version.name
    assert result["prompt_tokens"] > 10 and result["candidates"][0]["finish_reason"] in ("length", "stop")
    assert Registry(synth_settings.models_dir).current_name() == synth_version.name


def test_out_of_range_layers_and_unknown_shapes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="--layers must be 1 to 24"):
        synth_checkpoint(SHAPE, tmp_path / "x", layers=25)
    with pytest.raises(ModelError, match="unknown shape"):
        synth_checkpoint("gpt-5", tmp_path / "y")
