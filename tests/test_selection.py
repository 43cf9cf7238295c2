"""Choosing the checkpoint: the best passing point of a cycle's path, not just its last step."""

import math
from pathlib import Path

from editloop.training.gate import GateConfig, Scores, judge
from editloop.training.selection import Checkpoint, Trajectory, _point, choose, refusal, warm_start

CONFIG = GateConfig(bootstrap=300, general_tolerance=0.02)
N = 80


def _scores(version: str, feedback_mean: float, general_mean: float, seed: int) -> Scores:
    """Per-item scores with a given mean (a fixed spread, so the intervals are real ones)."""
    feedback = [min(1.0, max(0.0, feedback_mean + 0.1 * math.sin(i + seed))) for i in range(N)]
    general = [min(1.0, max(0.0, general_mean + 0.1 * math.cos(i))) for i in range(N)]
    return Scores(version, N, {"edit_similarity": feedback}, {"fim_single_line_edit_similarity": general})


def _path(points: list[tuple[str, float, float]]) -> tuple[Trajectory, list[Checkpoint]]:
    current = _scores("v1", 0.30, 0.40, 0)
    path, checkpoints = Trajectory(), []
    for number, (label, feedback, general) in enumerate(points, 1):
        report = judge(current, _scores(label, feedback, general, number), CONFIG)
        checkpoint = Checkpoint(label, Path(label))
        checkpoints.append(checkpoint)
        path.reports.append(report)
        path.points.append(_point(checkpoint, report, 1.0))
    path.chosen = choose(path.points)
    return path, checkpoints


def test_a_path_whose_last_checkpoint_forgets_publishes_an_earlier_one() -> None:
    path, checkpoints = _path(
        [
            ("sft 80/320", 0.31, 0.40),  # learned too little to be sure of
            ("sft 160/320", 0.38, 0.395),  # learned, general within tolerance
            ("sft 240/320", 0.41, 0.39),  # learned more, still within tolerance: the one to publish
            ("sft 320/320", 0.45, 0.33),  # learned most, forgot general code
        ]
    )
    passed = [p["passed"] for p in path.points]
    assert passed == [False, True, True, False]
    assert path.chosen == 2 and checkpoints[path.chosen].label == "sft 240/320"
    assert path.points[3]["general_drop"]["fim_single_line_edit_similarity"] > CONFIG.general_tolerance


def test_a_refused_path_says_why_and_keeps_what_learned() -> None:
    path, checkpoints = _path([("sft 160/320", 0.36, 0.35), ("sft 320/320", 0.42, 0.31)])
    assert path.chosen is None
    message = refusal(path, CONFIG.general_tolerance)
    assert message.startswith("refused: learned your code (best sft 320/320")
    assert "general code fell" in message and "tried 2 checkpoints" in message
    kept = warm_start(path, checkpoints)
    assert kept is not None and kept.label == "sft 320/320"
    # A path that learned nothing leaves nothing to continue.
    flat, flat_points = _path([("sft 320/320", 0.29, 0.40)])
    assert warm_start(flat, flat_points) is None
    assert "learned no more than noise" in refusal(flat, CONFIG.general_tolerance)


def test_ties_go_to_the_earlier_point() -> None:
    path, _ = _path([("a", 0.40, 0.40), ("b", 0.40, 0.40)])
    assert path.chosen == 0
