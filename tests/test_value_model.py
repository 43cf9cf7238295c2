"""The value model: learns what the log-prob score misses, saves and loads, ranks in the engine."""

import math
import random

import pytest

from editloop.completion.ranker import RankContext, RankInput
from editloop.completion.value import ValueInput, ValueModel, ValueRanker
from editloop.errors import ModelError
from editloop.training.value import ValueRow, auc, evaluate, train_value_model


def test_auc_matches_hand_computed_values() -> None:
    assert auc([0.9, 0.8, 0.1], [1, 1, 0]) == 1.0
    assert auc([0.1, 0.9], [1, 0]) == 0.0
    assert auc([0.5, 0.5], [1, 0]) == 0.5
    assert auc([0.3, 0.2, 0.4, 0.1], [1, 0, 0, 1]) == 0.25
    assert auc([0.3], [1]) is None


def _rows(n: int, seed: int) -> list[ValueRow]:
    """Developers here reject one-symbol candidates however confident the model is: a rule logprobs miss."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        confident = rng.random()
        symbol_only = rng.random() < 0.4
        text = ")" if symbol_only else "value = compute(x)"
        logprobs = [math.log(0.05 + 0.9 * confident)] * 3
        accepted = (not symbol_only) and rng.random() < 0.3 + 0.6 * confident
        rows.append(ValueRow(ValueInput("    ", "\n", text, logprobs, True), accepted))
    return rows


def test_learns_beyond_the_logprob_baseline_on_held_out_rows(tmp_path) -> None:
    model = train_value_model(_rows(400, 0))
    report = evaluate(model, _rows(200, 1))
    assert report["auc"] > report["baseline_auc"] + 0.05
    assert report["auc"] > 0.8
    model.save(tmp_path)
    loaded = ValueModel.load(tmp_path)
    assert loaded is not None
    probe = ValueInput("    ", "\n", "value = compute(x)", [-0.1], True)
    assert loaded.predict(probe) == pytest.approx(model.predict(probe))
    ranker = ValueRanker(loaded)
    context = RankContext("    ", "\n", "python", "line")
    good, bad = ranker.score(
        context, [RankInput("value = compute(x)", [-0.1], True), RankInput(")", [-0.1], True)]
    )
    assert good > bad


def test_refuses_one_class_and_foreign_files(tmp_path) -> None:
    with pytest.raises(ModelError, match="both"):
        train_value_model([ValueRow(ValueInput("", "", "x"), True)] * 3)
    (tmp_path / "value_model.json").write_text("{not json")
    with pytest.raises(ModelError):
        ValueModel.load(tmp_path)
    assert ValueModel.load(tmp_path / "missing") is None
