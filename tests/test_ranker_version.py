"""A cycle whose weights the gate refuses still publishes a value model that beats log-prob: the
current weights with it, as a "ranker" version, released like any other."""

import os
from pathlib import Path

import llama_cpp

from editloop.completion.served import load_served
from editloop.completion.value import ValueModel
from editloop.models.llama import LlamaBackend
from editloop.models.registry import LINK_BYTES, Registry, _link_or_copy
from editloop.settings import load_settings
from editloop.training.cycle import Cycle, CycleConfig, hidden_ranker, weights_of
from editloop.training.dataset import Dataset
from editloop.training.selection import Checkpoint, WarmStarts
from editloop.training.value import train_value_model
from tests.server_fixtures import copy_home
from tests.test_value_model import _rows


def test_refused_weights_still_ship_a_better_ranker(tiny_settings, tiny_version, tmp_path: Path) -> None:
    settings = load_settings(home=copy_home(tiny_settings, tmp_path / "home"))
    registry = Registry(settings.models_dir)
    current = registry.current()
    assert current is not None
    # A refused cycle left its best checkpoint for the next one to continue.
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    warm_starts = WarmStarts(settings.home / "training" / "warm_start")
    warm_starts.save(current.name, Checkpoint("sft 80", adapter), "c1")
    model = train_value_model(_rows(200, 0))
    cycle = Cycle(settings, CycleConfig(canary_share=0.0, device="cpu"))
    state = cycle._publish_ranker(current, model, {"value": 0.3}, "refused: learned no more than noise", None)

    assert state.status == "published" and state.version is not None
    assert "refused: learned no more than noise" in state.message and "beats log-prob" in state.message
    ranker = registry.get(state.version)
    assert registry.current_name() == ranker.name  # no canary here: activated at once
    assert ranker.manifest.kind == "ranker" and ranker.manifest.parent == current.name
    assert ranker.manifest.abstain_thresholds == {"value": 0.3}
    # The same weights; the source version is untouched.
    assert ranker.gguf_path().read_bytes() == current.gguf_path().read_bytes()
    assert registry.verify(current.name).name == current.name
    loaded = ValueModel.load(ranker.path)
    assert loaded is not None and loaded.weights == model.weights
    # Serving loads it as every version is loaded: the value model ranks, at its calibrated threshold.
    served = load_served(ranker, LlamaBackend.from_version(ranker, n_threads=1))
    try:
        name, chosen, threshold = served.pick(None)
        assert name == chosen.name == "value" and threshold == 0.3
        value = served.value_model()
        assert value is not None and value.weights == model.weights
    finally:
        served.close()
    assert ValueModel.load(current.path) is None or ValueModel.load(current.path) != loaded
    # The warm start belongs to the weights, so the next cycle from the ranker version continues it.
    assert weights_of(ranker) == current.name
    warm = warm_starts.load(weights_of(ranker))
    assert warm is not None and warm.label.startswith("sft 80")


def test_republish_links_weights_and_copies_what_it_may_rewrite(tmp_path: Path) -> None:
    weights, manifest = tmp_path / "model.gguf", tmp_path / "value_model.json"
    weights.write_bytes(b"w" * LINK_BYTES)
    manifest.write_text("{}")
    _link_or_copy(weights, tmp_path / "linked.gguf")
    _link_or_copy(manifest, tmp_path / "copied.json")
    assert (tmp_path / "linked.gguf").stat().st_ino == weights.stat().st_ino  # a 1 GB GGUF is not copied
    assert (tmp_path / "copied.json").stat().st_ino != manifest.stat().st_ino
    # Saving a value model replaces the file rather than writing into it, so a version sharing
    # the file by a link keeps its own.
    os.link(manifest, tmp_path / "shared.json")
    ValueModel([0.5], 0.0, [0.0], [1.0]).save(tmp_path)
    assert manifest.read_text() != "{}"
    assert (tmp_path / "shared.json").read_text() == "{}"


def test_refused_weights_may_ship_a_value_model_that_reads_their_hidden_states(
    tiny_settings, tiny_version, tmp_path: Path
) -> None:
    """The hidden states are read with the current weights (the ones the ranker version keeps): a
    model reading them is trained and judged like the plain one, and chosen only when it earns more."""
    settings = load_settings(home=copy_home(tiny_settings, tmp_path / "home"))
    current = Registry(settings.models_dir).current()
    assert current is not None
    data = Dataset(value_train=_rows(200, 0), value_heldout=_rows(120, 1))
    backend = LlamaBackend.from_version(current, n_threads=1, max_candidates=1)
    try:
        model, thresholds, report = hidden_ranker(data, backend, 0.05, max_new_tokens=16)
        n_embd = llama_cpp.llama_model_n_embd(backend._native.model)
    finally:
        backend.close()
    # The two candidate texts read as two hidden states, and ")" is never taken: it beats log-prob.
    assert report["published"] and model is not None and model.hidden_width == n_embd
    assert report["hidden_seconds"] >= 0 and set(thresholds) == {"logprob", "value"}
    cycle = Cycle(settings, CycleConfig(canary_share=0.0, device="cpu"))
    plain = train_value_model(_rows(200, 0))
    plain.metrics = {"ab": {"value": {"reward_per_request": -1.0}}}  # far below anything: the hidden one wins
    chosen = cycle._ranker_for(current, data, plain, {"value": 0.3})
    assert chosen is not None and chosen[0].hidden_width == n_embd
    assert cycle.state.reports["value_hidden"]["chosen"] is True
    plain.metrics = {"ab": {"value": {"reward_per_request": 1.0}}}  # more than any: the plain one stays
    assert cycle._ranker_for(current, data, plain, {"value": 0.3}) == (plain, {"value": 0.3})
    remote = Cycle(
        settings.model_copy(update={"backend": "remote"}), CycleConfig(canary_share=0.0, device="cpu")
    )
    assert remote._ranker_for(current, data, None, {}) is None  # no hidden states, and no plain model
