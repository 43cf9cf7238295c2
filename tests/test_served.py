"""Each version serves with its own rankers and thresholds, loaded, leased and swapped as one unit."""

import time

import httpx

from editloop.completion.value import FEATURES, ValueModel
from editloop.feedback.events import CompletionEvent
from editloop.feedback.log import open_feedback
from editloop.models.registry import Registry
from tests.server_fixtures import ADMIN, auth, copy_home, running_server

PREFIX = "import os\n\n\ndef load(path):\n    with open(path) as f:\n        "
BODY = {"prefix": PREFIX, "suffix": "\n    return data\n", "language": "python", "n": 6, "temperature": 1.2}


def _inverse_logprob_model() -> ValueModel:
    """A value model that prefers what the model itself found least likely: a known, visible taste."""
    weights = [0.0] * len(FEATURES)
    weights[FEATURES.index("mean_logprob")] = -0.5
    return ValueModel(weights, 0.0, [0.0] * len(FEATURES), [1.0] * len(FEATURES))


def _publish_with_value_model(registry: Registry, thresholds: dict[str, float] | None = None) -> str:
    """v1's files again, plus a value model: a retrain whose only change is how it ranks."""
    return registry.republish("v1", add=_inverse_logprob_model().save, abstain_thresholds=thresholds).name


def _complete(client: httpx.Client, **extra: object) -> dict:
    reply = client.post("/complete", json={**BODY, **extra}, headers=auth())
    assert reply.status_code == 200, reply.text
    return reply.json()


def _wait_for(client: httpx.Client, version: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        # Another prefix: the completion cache must not answer the test's own requests.
        if _complete(client, prefix="x = ", n=1)["model_version"] == version:
            return
        time.sleep(0.2)
    raise AssertionError(f"the server never served {version}")


def _seed_with_choices(client: httpx.Client, count: int = 2) -> int:
    """A seed at which the tiny model gives ``count`` distinct candidates. Its weights differ a little
    from one CPU to another, and at some seeds every sample comes out the same or is dropped."""
    for seed in range(5, 45):
        reply = _complete(client, seed=seed)
        kept = [c for c in reply["candidates"] if c["dropped"] is None]
        if len({c["text"] for c in kept}) >= count:
            return seed
    raise AssertionError("the tiny model gave one distinct candidate at every seed: nothing to compare")


def test_value_model_ranks_live_and_rollback_switches_it_with_the_model(
    tiny_settings, tiny_version, tmp_path
) -> None:
    home = copy_home(tiny_settings, tmp_path)
    registry = Registry(home / "models")
    v2 = _publish_with_value_model(registry)
    registry.activate(v2)
    with (
        running_server(home, abstain_threshold=0.0, cache_entries=0) as (url, settings, _app),
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        _wait_for(client, v2)
        seed = _seed_with_choices(client)
        by_value = _complete(client, seed=seed)
        by_logprob = _complete(client, seed=seed, ranker="logprob")
        assert (by_value["ranker"], by_logprob["ranker"]) == ("value", "logprob")
        value_order = [c["text"] for c in by_value["choices"]]
        logprob_order = [c["text"] for c in by_logprob["choices"]]
        assert len(set(value_order)) >= 2, "the tiny model gave one distinct candidate: no order to test"
        # Same candidates (same seed), opposite tastes: the value model puts last what log-prob puts first.
        assert sorted(value_order) == sorted(logprob_order)
        assert value_order == logprob_order[::-1]
        metrics = client.get("/metrics").text
        assert 'editloop_completions_total{ranker="value"}' in metrics
        assert 'editloop_completions_total{ranker="logprob"}' in metrics

        rolled = client.post("/admin/rollback", headers=auth(ADMIN))
        assert rolled.status_code == 200, rolled.text
        _wait_for(client, "v1")
        after = _complete(client, seed=seed)
        assert (after["model_version"], after["ranker"]) == ("v1", "logprob")
        assert [c["text"] for c in after["choices"]] == logprob_order  # v1 ranks by log-prob alone
        ids = {by_value["id"]: "value", after["id"]: "logprob"}
    with open_feedback(settings, replay=False) as feedback:
        recorded = {
            e.event.completion_id: e.event.ranker
            for e in feedback.store.events(settings.feedback_default_project)
            if isinstance(e.event, CompletionEvent)
        }
    assert {cid: recorded.get(cid) for cid in ids} == ids  # completion events name the ranker


def test_the_version_threshold_decides_unless_the_operator_overrides_it(
    tiny_settings, tiny_version, tmp_path
) -> None:
    home = copy_home(tiny_settings, tmp_path)
    registry = Registry(home / "models")
    registry.activate(_publish_with_value_model(registry, thresholds={"value": 0.999, "logprob": 0.999}))
    with running_server(home) as (url, _, _), httpx.Client(base_url=url, timeout=60) as client:
        strict = _complete(client)
        assert strict["abstained"] and strict["choices"] == []  # nothing scores 0.999
    with (
        running_server(home, abstain_threshold=0.0) as (url, _, _),
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        assert not _complete(client)["abstained"]


def test_a_value_model_that_reads_hidden_states_gets_them_from_the_decode(
    tiny_settings, tiny_version, tmp_path
) -> None:
    """Its named weights are zero and the hidden states' mean is zero: every candidate would score
    exactly 0.5 if serving did not hand it each candidate's own hidden state."""
    import llama_cpp
    import numpy as np

    home = copy_home(tiny_settings, tmp_path)
    registry = Registry(home / "models")
    model = llama_cpp.llama_model_load_from_file(
        str(tiny_version.gguf_path()).encode(), llama_cpp.llama_model_default_params()
    )
    width = llama_cpp.llama_model_n_embd(model)
    llama_cpp.llama_model_free(model)
    direction = np.random.default_rng(0).normal(size=width)
    named = len(FEATURES)
    hidden = ValueModel(
        [0.0] * named + list(direction / np.linalg.norm(direction)),
        0.0,
        [0.0] * (named + width),
        [1.0] * (named + width),
        hidden_width=width,
    )
    version = registry.republish("v1", add=hidden.save).name
    registry.activate(version)
    with (
        running_server(home, abstain_threshold=0.0, cache_entries=0) as (url, _settings, _app),
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        _wait_for(client, version)
        reply = _complete(client, seed=_seed_with_choices(client))
        assert reply["ranker"] == "value"
        scores = [c["score"] for c in reply["candidates"] if c["dropped"] is None]
        assert len(scores) >= 2, "the tiny model gave one candidate: nothing to compare"
        assert len({round(s, 6) for s in scores}) >= 2 and 0.5 not in scores
