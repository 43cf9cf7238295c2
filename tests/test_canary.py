"""A version on trial: the arm map all replicas share, the sequential rule, and live decisions end to end."""

import random
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmarks.canary import republish, run_canary, scrambled
from editloop.feedback.canary import CanaryRule, decide
from editloop.models.registry import Registry, in_canary
from editloop.server.auth import caller_id
from editloop.settings import load_settings
from editloop.starter.bootstrap import BootstrapOptions, bootstrap
from tests.server_fixtures import USER, auth, copy_home, running_server


def _arm(seen: int, full: int) -> dict:
    return {"seen": seen, "full_accepted": full}


def test_the_rule_waits_then_rolls_back_the_worse_and_promotes_the_not_worse() -> None:
    rule = CanaryRule(min_shown=100, margin=0.05, alpha=0.05, max_minutes=60)
    assert decide(_arm(500, 150), _arm(50, 0), rule, 10).action == "wait"  # too few on one arm
    assert decide(_arm(600, 180), _arm(600, 60), rule, 10).action == "rollback"  # 30 % vs 10 %
    assert decide(_arm(600, 180), _arm(600, 240), rule, 10).action == "promote"  # 30 % vs 40 %
    assert decide(_arm(120, 36), _arm(120, 34), rule, 10).action == "wait"  # too close to call yet
    # At the time limit the estimate decides: within the margin promotes, beyond it rolls back.
    assert decide(_arm(120, 36), _arm(120, 34), rule, 3600).action == "promote"
    assert decide(_arm(120, 36), _arm(120, 26), rule, 3600).action == "rollback"


def test_checking_after_every_batch_keeps_the_false_rollback_rate_below_alpha() -> None:
    """Two arms of the same model, checked 40 times each: an always-valid rule still errs < alpha."""
    rng = np.random.default_rng(0)
    rule = CanaryRule(min_shown=50, margin=0.02, alpha=0.05, max_minutes=1e9)
    sims, batches, batch, rate = 400, 40, 50, 0.3
    stable = rng.binomial(batch, rate, size=(sims, batches)).cumsum(axis=1)
    canary = rng.binomial(batch, rate, size=(sims, batches)).cumsum(axis=1)
    false_rollbacks = 0
    for s in range(sims):
        for b in range(batches):
            seen = batch * (b + 1)
            action = decide(_arm(seen, int(stable[s, b])), _arm(seen, int(canary[s, b])), rule, 0).action
            if action != "wait":
                false_rollbacks += action == "rollback"
                break
    assert false_rollbacks / sims <= rule.alpha


def test_a_key_keeps_its_arm_and_the_share_holds() -> None:
    keys = [f"user-{i}\x00doc-{i % 37}.py" for i in range(4000)]
    first = [in_canary(k, 0.2) for k in keys]
    assert first == [in_canary(k, 0.2) for k in keys]
    assert 0.17 < sum(first) / len(keys) < 0.23
    assert not any(in_canary(k, 0.0) for k in keys)


def _team_code(root: Path, modules: int, seed: int) -> Path:
    """A team's code: the same few conventions across many small modules."""
    rng = random.Random(seed)
    names = ["price", "count", "total", "items", "user", "order", "path", "value"]
    root.mkdir(parents=True)
    for i in range(modules):
        a, b = rng.sample(names, 2)
        (root / f"mod_{seed}_{i}.py").write_text(
            "import logging\n\nlog = logging.getLogger(__name__)\n\n\n"
            f"def load_{a}(path):\n    with open(path) as f:\n        return f.read()\n\n\n"
            f"def compute_{b}({a}, {b}):\n    total = {a} * {b}\n"
            '    log.info("total %s", total)\n    return total\n'
        )
    return root


@pytest.fixture(scope="module")
def team_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained on the team's code: it completes that code well enough to be judged.

    (The session's tiny model, trained for seconds on the standard library, takes next to nothing
    whole; a canary comparing two such models would have nothing to decide on.)
    """
    root = tmp_path_factory.mktemp("team")
    corpus = _team_code(root / "corpus", 300, seed=1)
    settings = load_settings(home=root / "home")
    bootstrap(settings, BootstrapOptions(size="tiny", sources=(str(corpus),), exclude=(), eval_tasks=10))
    return root


def test_two_replicas_send_a_user_and_document_to_the_same_arm(tiny_settings, tiny_version, tmp_path) -> None:
    home = copy_home(tiny_settings, tmp_path)
    registry = Registry(home / "models")
    canary = republish(registry, registry.get("v1"))
    registry.start_canary(canary, share=0.5)
    overrides = {"abstain_threshold": 0.0, "feedback_enabled": False}
    with running_server(home, **overrides) as (a, _, _), running_server(home, **overrides) as (b, _, _):
        served = {}
        for i in range(24):
            body = {"prefix": f"x{i} = ", "n": 1, "user": f"dev{i % 5}", "document_id": f"file{i}.py"}
            versions = [
                httpx.post(f"{url}/complete", json=body, headers=auth(), timeout=60).json()["model_version"]
                for url in (a, b)
            ]
            assert versions[0] == versions[1], body
            served[i] = versions[0]
            # The server scopes a document to its caller (the token's digest) before the arm is drawn.
            key = f"dev{i % 5}\x00{caller_id(USER)}:file{i}.py"
            assert versions[0] == (canary if in_canary(key, 0.5) else "v1")
        assert set(served.values()) == {"v1", canary}  # both arms serve


@pytest.mark.timeout(900)
def test_live_traffic_rolls_back_a_worse_canary_and_promotes_a_better_one(team_home, tmp_path) -> None:
    home = tmp_path / "home"
    shutil.copytree(team_home / "home" / "models", home / "models")
    # One greedy candidate and one llama.cpp thread keep a shared 2-core machine responsive.
    settings = load_settings(home=home, abstain_threshold=0.0, lsp_candidates=1, model_threads=1)
    registry = Registry(settings.models_dir)
    code = _team_code(tmp_path / "code", 12, seed=2)  # modules the model never saw
    worse = scrambled(registry, registry.get("v1"))
    rule = CanaryRule(min_shown=40, margin=0.05, alpha=0.05, max_minutes=60)

    outcome = run_canary(settings, code, "v1", worse, rule, share=0.5, per_file=20, max_rounds=8)
    assert outcome["status"] == "rolled_back", outcome
    assert registry.current_name() == "v1"  # the worse model never became current

    better = republish(registry, registry.get("v1"))
    outcome = run_canary(settings, code, worse, better, rule, share=0.5, per_file=20, max_rounds=8)
    assert outcome["status"] == "promoted", outcome
    assert registry.current_name() == better
