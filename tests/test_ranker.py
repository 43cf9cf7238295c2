"""The log-probability ranker and the abstain rule."""

import math

import pytest

from editloop.completion.ranker import (
    LogprobRanker,
    RankContext,
    Ranker,
    RankInput,
    mean_token_probability,
    should_abstain,
)

CONTEXT = RankContext(prefix="def area(r):\n    return ", suffix="\n", language="python", mode="line")


def _candidate(probabilities: list[float], parse_valid: bool | None = True, text: str = "x") -> RankInput:
    return RankInput(text, [math.log(p) for p in probabilities], parse_valid)


@pytest.mark.parametrize(
    ("logprobs", "expected"),
    [
        ([], 0.0),
        ([0.0], 1.0),
        ([math.log(0.5)], 0.5),
        ([math.log(0.5), math.log(0.5), math.log(0.5)], 0.5),
        ([math.log(0.9), math.log(0.1)], math.sqrt(0.9 * 0.1)),  # geometric, not arithmetic, mean
        ([-math.inf, 0.0], 0.0),
        ([math.nan], 0.0),
        ([1e-7], 1.0),  # rounded log-probabilities slightly above 0 stay a probability
        ([1000.0], 1.0),
    ],
)
def test_mean_token_probability(logprobs: list[float], expected: float) -> None:
    assert mean_token_probability(logprobs) == pytest.approx(expected)


def test_scores_order_candidates_by_mean_token_probability() -> None:
    candidates = [
        _candidate([0.5, 0.5], text="r * r"),
        _candidate([0.9, 0.95, 0.99], text="math.pi * r ** 2"),
        _candidate([0.1], text="0"),
    ]
    scores = LogprobRanker().score(CONTEXT, candidates)
    assert len(scores) == 3
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert sorted(range(3), key=lambda i: -scores[i]) == [1, 0, 2]


def test_length_does_not_decide_by_itself() -> None:
    short = _candidate([0.6])
    long = _candidate([0.6] * 40)
    assert LogprobRanker().score(CONTEXT, [short, long]) == pytest.approx([0.6, 0.6])


@pytest.mark.parametrize(
    ("parse_valid", "penalty", "expected"),
    [
        (True, 0.5, 0.8),
        (None, 0.5, 0.8),  # unknown: no grammar, no penalty
        (False, 0.5, 0.4),
        (False, 0.0, 0.0),
        (False, 1.0, 0.8),
    ],
)
def test_parse_invalid_penalty(parse_valid: bool | None, penalty: float, expected: float) -> None:
    ranker = LogprobRanker(parse_invalid_penalty=penalty)
    assert ranker.score(CONTEXT, [_candidate([0.8], parse_valid)]) == [pytest.approx(expected)]


def test_penalty_can_reorder_candidates() -> None:
    broken = _candidate([0.9], parse_valid=False)
    valid = _candidate([0.6], parse_valid=True)
    scores = LogprobRanker().score(CONTEXT, [broken, valid])
    assert scores[1] > scores[0]


def test_no_candidates_no_scores() -> None:
    assert LogprobRanker().score(CONTEXT, []) == []


@pytest.mark.parametrize("penalty", [-0.1, 1.5])
def test_penalty_must_be_a_factor(penalty: float) -> None:
    with pytest.raises(ValueError, match="parse_invalid_penalty"):
        LogprobRanker(parse_invalid_penalty=penalty)


def test_logprob_ranker_is_a_ranker() -> None:
    ranker: Ranker = LogprobRanker()
    assert ranker.score(CONTEXT, [_candidate([0.7])]) == [pytest.approx(0.7)]


@pytest.mark.parametrize(
    ("best", "threshold", "expected"),
    [
        (None, 0.1, True),
        (0.05, 0.1, True),
        (0.1, 0.1, False),
        (0.9, 0.1, False),
        (0.0, 0.0, False),
        (math.nan, 0.1, True),
    ],
)
def test_should_abstain(best: float | None, threshold: float, expected: bool) -> None:
    assert should_abstain(best, threshold) is expected
