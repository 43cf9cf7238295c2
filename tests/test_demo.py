"""`editloop demo` end to end on the tiny model and a small real package."""

import sysconfig
from pathlib import Path

from rich.console import Console

from editloop.demo import DemoOptions, _rankers, plot, run_demo, table
from editloop.settings import load_settings
from editloop.training.cycle import CycleState
from tests.server_fixtures import copy_home


def test_demo_measures_the_held_out_split_before_and_after_a_cycle(
    tiny_settings, tiny_version, tmp_path
) -> None:
    home = copy_home(tiny_settings, tmp_path / "home")
    settings = load_settings(
        home=home,
        abstain_threshold=0.0,
        retrain_sft_steps=150,
        retrain_learning_rate=5e-3,
        retrain_general_mix=0.0,  # too much for the tiny model in 150 steps; the small model rehearses
        retrain_grpo_steps=2,
        retrain_general_samples=10,
        retrain_min_samples=10,
        retrain_device="cpu",
        retrain_checkpoints=2,
        retrain_blends=[],
    )
    repo = Path(sysconfig.get_paths()["stdlib"]) / "json"
    result = run_demo(
        settings, DemoOptions(repo, cycles=1, requests_per_file=30), Console(file=None, quiet=True)
    )
    (cycle,) = result["cycles"]
    assert cycle["status"] == "published", cycle["message"]
    before, after, *by_value = result["rows"]  # after the cycle: ranked by log-prob, then by value
    assert before["model_version"] == tiny_version.name and after["model_version"] == cycle["version"]
    assert after["ranker"] == "logprob"
    value_published = cycle["reports"]["value"]["published"]
    assert [r["ranker"] for r in by_value] == (["value"] if value_published else [])
    assert before["split"] == after["split"] == "heldout"
    assert before["requests"] == after["requests"] > 0
    # The feedback of the held-out replays went to their own project, never to the training data.
    assert cycle["reports"]["snapshot"]["read"] > 0
    png = plot(result, tmp_path / "demo.png")
    assert png.stat().st_size > 5000
    assert cycle["version"] in str(table(result).columns[0]._cells)


def test_the_demo_compares_the_value_ranker_whichever_value_model_the_cycle_shipped() -> None:
    def state(**reports: dict) -> CycleState:
        return CycleState("c", reports=reports)

    assert _rankers(state(value={"published": True})) == ["logprob", "value"]
    # The plain model lost to log-prob, the one reading hidden states did not: a ranker version has it.
    assert _rankers(state(value={"published": False}, value_hidden={"chosen": True})) == ["logprob", "value"]
    assert _rankers(state(value={"published": False}, value_hidden={"chosen": False})) == ["logprob"]
    assert _rankers(state()) == ["logprob"]
