"""The value model: learns what the log-prob score misses, saves and loads, ranks in the engine."""

import dataclasses
import math
import random

import numpy as np
import pytest

from editloop.completion.ranker import RankContext, RankInput
from editloop.completion.value import CursorText, ValueInput, ValueModel, ValueRanker, context_overlap
from editloop.errors import ModelError
from editloop.training.value import ValueRow, auc, evaluate, train_blended_model, train_value_model


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


def test_context_overlap_reads_the_names_and_lines_around_the_cursor() -> None:
    here = CursorText.around("total = compute(items, rate)\nprint(total)\n", "")
    assert context_overlap("compute(items, rate)", here) == [1.0, 1.0]  # a copy of known names
    assert context_overlap("compute(items, ratio)", here) == [2 / 3, 0.0]  # `ratio` is new
    assert context_overlap(")", here) == [1.0, 0.0]  # no names; too short to count as a copy
    assert context_overlap("rate", CursorText.around("x = 1\n", "rate = 2\n")) == [1.0, 1.0]  # the suffix
    assert context_overlap("rate", CursorText.around("rate\n" + "#" * 4000, "")) == [0.0, 0.0]  # too far


def test_learns_that_copies_of_the_context_are_taken() -> None:
    """Here developers take candidates that repeat a line near the cursor and reject made-up ones
    of the same confidence: the context features carry what the log-probs do not."""
    rng = random.Random(3)
    prefix = "def area(width, height):\n    return width * height\n\n"
    rows = []
    for i in range(300):
        copy = rng.random() < 0.5
        text = "return width * height" if copy else f"return wdth_{i} * hieght_{i}"
        accepted = rng.random() < (0.7 if copy else 0.1)
        rows.append(ValueRow(ValueInput(prefix, "\n", text, [-0.4] * 5, True), accepted, file=f"f{i}.py"))
    model = train_value_model(rows[:200])
    report = evaluate(model, rows[200:])
    assert report["auc"] > report["baseline_auc"] + 0.2


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


def _agreeing_rows(n: int, seed: int) -> list[ValueRow]:
    """A candidate most samples agree on is taken far more often, at the same log-probabilities."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        agreed = rng.random() < 0.5
        text = "total = price * count"
        others = (text, text, "total = 0") if agreed else ("count += 1", "return None", "pass")
        accepted = rng.random() < (0.7 if agreed else 0.15)
        rows.append(
            ValueRow(ValueInput("    ", "\n", text, [math.log(0.5)] * 4, True, others=others), accepted)
        )
    return rows


def test_agreement_among_samples_is_learned() -> None:
    model = train_value_model(_agreeing_rows(400, 0))
    report = evaluate(model, _agreeing_rows(200, 1))
    assert report["baseline_auc"] == 0.5  # log-prob cannot tell the rows apart
    assert report["auc"] > 0.7
    context = RankContext("    ", "\n", "python", "line", samples=("a = 1", "a = 1", "a = 1", "b"))
    ranker = ValueRanker(model)
    agreed, alone = ranker.score(context, [RankInput("a = 1", [-0.7], True), RankInput("b", [-0.7], True)])
    assert agreed > alone


def test_the_cycle_publishes_a_value_model_only_when_it_beats_log_prob() -> None:
    from editloop.training.cycle import train_value
    from editloop.training.dataset import Dataset

    helpful = Dataset([], [], _agreeing_rows(300, 0), _agreeing_rows(150, 1), {})
    model, report = train_value(helpful, 0.05)
    assert model is not None and report["published"] and "beats" in report["reason"]
    ab = report["ab"]
    assert ab["value"]["reward_per_request"] > ab["logprob"]["reward_per_request"]
    assert report["rank_p50_ms"] is not None and report["rank_p50_ms"] < 50
    # Rows where log-prob alone decides: nothing for the value model to add, so it is not published.
    rng = random.Random(2)
    plain = [
        ValueRow(ValueInput("", "\n", "x = 10", [math.log(p)] * 3, True), rng.random() < p)
        for p in (rng.random() for _ in range(450))
    ]
    model, report = train_value(Dataset([], [], plain[:300], plain[300:], {}), 0.05)
    assert model is None and not report["published"] and "does not beat" in report["reason"]


def _short_or_long(n: int, seed: int) -> list[ValueRow]:
    """Per request, a short line taken whole 4 times in 10, and a long one log-prob favours that is
    never taken whole but whose first 20 characters are always kept."""
    rng = random.Random(seed)
    rows = []
    for r in range(n):
        short = ValueInput("    ", "\n", "x = a.b", [math.log(0.3)] * 3, True)
        long = ValueInput("    ", "\n", "x = a.compute(items, rate, total)", [math.log(0.8)] * 9, True)
        taken = rng.random() < 0.4
        rows.append(ValueRow(short, taken, request=f"r{r}", shown=False, kept_chars=7 if taken else 0))
        rows.append(ValueRow(long, False, request=f"r{r}", shown=True, kept_chars=20))
    return rows


def test_a_value_model_that_keeps_fewer_characters_than_log_prob_is_not_published() -> None:
    """Whole takes alone would favour the short line; the developer keeps more of the long one."""
    from editloop.training.cycle import judge_value
    from editloop.training.dataset import Dataset

    data = Dataset([], [], _short_or_long(300, 0), _short_or_long(150, 1), {})
    model, report = judge_value(train_value_model(data.value_train), data, 0.05)
    value, logprob = report["ab"]["value"], report["ab"]["logprob"]
    assert report["auc"] > report["baseline_auc"]
    assert value["reward_per_request"] > logprob["reward_per_request"]
    assert value["chars_kept"] < logprob["chars_kept"]
    assert model is None and not report["published"]
    assert f"{value['chars_kept']} characters kept against {logprob['chars_kept']}" in report["reason"]


def test_threshold_maximises_the_expected_show_reward() -> None:
    from editloop.training.value import calibrate_threshold, expected_show_reward

    # Candidates scored 0.9 are taken 3 times in 4 (worth +0.5 each on average), those at 0.2 once in 5
    # (worth -0.05): show the first kind only.
    scores = [0.9] * 4 + [0.2] * 5
    labels = [1, 1, 1, 0, 1, 0, 0, 0, 0]
    result = calibrate_threshold(scores, labels, default=0.05)
    assert result["threshold"] == 0.9
    assert result["expected_reward"] == round((3 * 0.75 - 0.25) / 9, 4)
    assert result["default_reward"] == round(expected_show_reward(scores, labels, 0.05), 4)
    assert result["expected_reward"] > result["default_reward"]
    # Never so high that nothing is shown (no feedback would come back): at least min_show_rate.
    hopeless = calibrate_threshold([0.1, 0.2, 0.3, 0.4], [0, 0, 0, 0], default=0.05, min_show_rate=0.25)
    assert hopeless["threshold"] == 0.4 and hopeless["show_rate"] == 0.25


def _requests(n: int, seed: int) -> list[ValueRow]:
    """Three candidates per request; the one most samples agree on is the one typed, whatever its log-prob."""
    rng = random.Random(seed)
    rows = []
    for r in range(n):
        agreed = f"total = price * {r}"
        texts = [agreed, f"count += {r}", f"return {r}"]
        others = (agreed, agreed)
        confident = rng.randrange(3)  # the candidate the log-probs happen to favour
        for i, text in enumerate(texts):
            logprobs = [math.log(0.8 if i == confident else 0.3)] * 3
            peers = others if text == agreed else ("x",)
            taken = text == agreed and rng.random() < 0.8
            value_input = ValueInput("    ", "\n", text, logprobs, True, others=peers)
            rows.append(ValueRow(value_input, taken, request=f"r{r}", shown=i == confident))
    return rows


def test_the_ranker_ab_replays_what_each_ranker_would_have_shown() -> None:
    from editloop.training.value import ranker_ab, show_outcome, top_choices

    rows = _requests(200, 1)
    model = train_value_model(_requests(300, 0))
    scores = {
        "logprob": [math.exp(r.input.logprobs[0]) for r in rows],
        "value": model.predict_many([r.input for r in rows]),
    }
    ids, choices = top_choices(rows, scores["value"])
    assert len(ids) == 200 and all(
        c.chars == len("total = price * ") + len(k[1:]) for k, c in zip(ids, choices, strict=True)
    )
    everything = show_outcome(choices, 0.0)
    assert everything["shown"] == 200 and everything["full_accepts"] == sum(r.label for r in rows)
    ab = ranker_ab(rows, scores, default=0.05)
    assert ab["value"]["requests"] == ab["logprob"]["requests"] == 200
    # Log-prob puts the typed candidate first in a third of the requests; the value model in all.
    assert ab["value"]["full_accepts"] > 2 * ab["logprob"]["full_accepts"]
    assert ab["value"]["reward_per_request"] > ab["logprob"]["reward_per_request"]


def test_a_tiny_suggestion_taken_whole_is_not_worth_showing() -> None:
    """ ")" is a prefix of nearly anything typed next: counted as taken, a ranker learns to show it."""
    short = ValueRow(ValueInput("f(x", "\n", ")", [-0.1], True), accepted=True)
    useful = ValueRow(ValueInput("f(x", "\n", ") + 10", [-0.1], True), accepted=True)
    assert (short.label, useful.label) == (0, 1)


def test_the_value_model_starts_from_the_log_prob_score() -> None:
    from editloop.completion.value import FEATURES, logprob_ranker_scores

    untrained = ValueModel(
        [0.0] * len(FEATURES), 0.0, [0.0] * len(FEATURES), [1.0] * len(FEATURES), offset=True
    )
    for text, logprobs, valid in [
        ("x = 1", [-0.2, -0.4], True),
        ("x = (", [-0.1], False),
        ("y", [-3.0], True),
    ]:
        value = ValueInput("", "\n", text, logprobs, valid)
        assert untrained.predict(value) == pytest.approx(logprob_ranker_scores([value])[0], rel=1e-6)
    # A copy from the codebase has no log-probs: its share of the codebase is its log-prob score.
    assert untrained.predict(
        ValueInput("", "\n", "z", None, True, score=0.3, source="codebase")
    ) == pytest.approx(0.3)


def test_regularisation_is_chosen_by_cross_validation() -> None:
    from editloop.training.value import L2_GRID

    def plain(n: int, seed: int) -> list[ValueRow]:
        """Labels follow the log-probs alone; the other features vary at random."""
        rng = random.Random(seed)
        texts = ["x = 1", ")", "f(a, b)", "return None"]
        return [
            ValueRow(
                ValueInput("", "\n", rng.choice(texts), [math.log(p)] * 2, True),
                rng.random() < p,
                request=f"r{i}",
            )
            for i, p in enumerate(rng.random() for _ in range(n))
        ]

    # Nothing to correct: the model ranks held-out rows as log-prob does, not worse.
    report = evaluate(train_value_model(plain(400, 5)), plain(300, 6))
    assert report["auc"] >= report["baseline_auc"] - 0.01
    # Something to learn: the chosen strength keeps it, where the grid's strongest shrinks it away.
    chosen = train_value_model(_agreeing_rows(400, 0))
    assert chosen.l2 in L2_GRID and chosen.l2 < L2_GRID[-1]
    held = _agreeing_rows(200, 1)
    shrunk = train_value_model(_agreeing_rows(400, 0), l2=L2_GRID[-1])
    assert _log_loss(chosen, held) < _log_loss(shrunk, held)


def _log_loss(model: ValueModel, rows: list[ValueRow]) -> float:
    predictions = model.predict_many([r.input for r in rows])
    return -sum(math.log(p if r.label else 1 - p) for p, r in zip(predictions, rows, strict=True)) / len(rows)


def _hidden_rows(n: int, seed: int, with_hidden: bool = True) -> list[ValueRow]:
    """Candidates the text and log-probs cannot tell apart; the model's hidden state can (its
    first number is what the developer will do)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        taken = bool(rng.random() < 0.3)
        hidden = rng.normal(size=8)
        hidden[0] += 2.0 if taken else -2.0
        value = ValueInput(
            "x = ", "\n", "compute(x)", [-0.5] * 3, True, hidden=hidden if with_hidden else None
        )
        rows.append(ValueRow(value, taken, file=f"f{i}.py", request=f"r{seed}-{i}"))
    return rows


def test_the_hidden_state_is_learned_saved_and_read_by_the_ranker(tmp_path) -> None:
    model = train_value_model(_hidden_rows(300, 0))
    assert model.hidden_width == 8 and model.wants_hidden
    report = evaluate(model, _hidden_rows(200, 1))
    assert report["auc"] > 0.9 and report["baseline_auc"] == 0.5
    model.save(tmp_path)
    loaded = ValueModel.load(tmp_path)
    assert loaded is not None and loaded.hidden_width == 8
    rows = _hidden_rows(20, 2)
    assert loaded.predict_many([r.input for r in rows]) == pytest.approx(
        model.predict_many([r.input for r in rows])
    )
    # A candidate without a hidden state (a codebase copy, a remote backend) reads as the average one.
    blind = {
        round(p, 6) for p in loaded.predict_many([r.input for r in _hidden_rows(20, 3, with_hidden=False)])
    }
    assert len(blind) == 1
    ranker = ValueRanker(loaded)
    assert ranker.wants_hidden
    sure, unsure = np.zeros(8), np.zeros(8)
    sure[0], unsure[0] = 2.0, -2.0
    scores = ranker.score(
        RankContext("x = ", "\n", "python", "line"),
        [RankInput("compute(x)", [-0.5] * 3, True, hidden=h) for h in (unsure, sure)],
    )
    assert scores[1] > scores[0] + 0.5
    # Rows of which some lack the state train a model that reads none.
    assert train_value_model(_hidden_rows(100, 4) + _hidden_rows(100, 5, with_hidden=False)).hidden_width == 0
    assert not ValueRanker(train_value_model(_rows(200, 0))).wants_hidden


def _typed(n: int, seed: int) -> list[ValueRow]:
    """:func:`_requests` with the characters kept: all of the typed line when it was taken whole,
    its first 16 when not (the developer types on after a partial take), none of the others."""
    return [
        dataclasses.replace(
            r, kept_chars=len(r.input.candidate) if r.accepted else 16 * r.input.candidate.startswith("total")
        )
        for r in _requests(n, seed)
    ]


def _trade_offs(n: int, seed: int) -> list[ValueRow]:
    """Per request a long line kept most (24.5 characters on average), a mid one taken whole and
    useful most often (1 in 2), a short one taken whole most often (7 in 10, too short to be
    useful); the log-probs favour one at random. No head alone is best at everything."""
    rng = random.Random(seed)
    kinds = [  # text, chance taken whole, characters kept when not
        ("total = compute(price, count, rate)", 0.3, 20),
        ("total = price", 0.5, 5),
        ("x)", 0.7, 0),
    ]
    rows = []
    for r in range(n):
        favoured = rng.randrange(3)
        for i, (text, chance, partial) in enumerate(kinds):
            taken = rng.random() < chance
            logprobs = [math.log(0.8 if i == favoured else 0.4)] * 3
            value_input = ValueInput("    ", "\n", text, logprobs, True)
            kept = len(text) if taken else partial
            rows.append(ValueRow(value_input, taken, request=f"r{r}", shown=i == favoured, kept_chars=kept))
    return rows


def _ratio(ab: dict, base: dict) -> float:
    return min(ab["whole_take_rate"] / base["whole_take_rate"], ab["chars_kept"] / base["chars_kept"])


def test_the_blend_is_the_one_that_replays_best_against_log_prob() -> None:
    """Among the blends that earn log-prob's show reward, the chosen one has the best worse ratio of
    full-accept rate and characters kept to log-prob's; each head alone is one of the blends."""
    from editloop.completion.value import blended
    from editloop.training.value import choose_blend, ranker_ab

    rows = _trade_offs(400, 0)
    model = train_blended_model(rows, 0.05)
    scores = model.head_scores([r.input for r in rows])
    scores.pop("score")
    chosen = choose_blend(rows, scores, 0.05)
    assert chosen and set(chosen) <= set(scores) and all(e > 0 for e in chosen.values())
    alone = {name: list(s) for name, s in scores.items()}
    ab = ranker_ab(rows, alone | {"chosen": list(blended(scores, chosen))}, 0.05)
    base = ab["logprob"]
    assert ab["chosen"]["reward_per_request"] >= base["reward_per_request"]
    for name in alone:
        if ab[name]["reward_per_request"] >= base["reward_per_request"]:
            assert _ratio(ab["chosen"], base) >= _ratio(ab[name], base) - 1e-9


def test_a_blended_model_is_published_saved_and_loaded_whole(tmp_path) -> None:
    from editloop.training.cycle import train_value
    from editloop.training.dataset import Dataset

    model, report = train_value(Dataset([], [], _typed(300, 0), _typed(150, 1), {}), 0.05)
    assert model is not None and report["published"], report["reason"]
    assert set(model.heads) == {"whole", "kept"} and report["blend"] == model.blend
    value, logprob = report["ab"]["value"], report["ab"]["logprob"]
    assert value["whole_take_rate"] >= logprob["whole_take_rate"]
    assert value["chars_kept"] >= logprob["chars_kept"]
    assert f"{value['whole_take_rate']:.1%} of its suggestions taken whole" in report["reason"]
    model.save(tmp_path)
    loaded = ValueModel.load(tmp_path)
    assert loaded is not None and loaded.blend == model.blend and set(loaded.heads) == set(model.heads)
    inputs = [r.input for r in _typed(20, 2)]
    assert loaded.predict_many(inputs) == pytest.approx(model.predict_many(inputs))
    # The blend is what it ranks by: not the label's head alone.
    useful = loaded.head_scores(inputs)["useful"]
    assert not np.allclose(loaded.predict_many(inputs), useful)


def test_without_characters_kept_the_label_head_ranks_alone() -> None:
    """Rows whose events never said what was kept cannot fit the kept head: no blend, no heads."""
    model = train_blended_model(_agreeing_rows(300, 0), 0.05)
    assert model.heads == {} and model.blend == {}
    inputs = [r.input for r in _agreeing_rows(20, 1)]
    assert model.predict_many(inputs) == pytest.approx(list(model.head_scores(inputs)["useful"]))
