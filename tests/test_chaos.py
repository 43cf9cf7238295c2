"""The chaos run (benchmarks/chaos.py), short: every fault once against the real loop, 0 violations.

Two ``editloop serve`` replicas, ``editloop trainer`` and a redis-server on a size-capped home,
replayed editor traffic over HTTP and LSP, while redis-server, the trainer (mid-SFT) and a replica
(mid-swap) are SIGKILLed and the home's disk fills. The 10-minute run's figures are in docs/security.md.
"""

import pytest

from benchmarks.chaos import RECOVERY_BOUND_S, run


def test_a_short_chaos_run_keeps_every_invariant(tiny_settings, tiny_version, tmp_path) -> None:
    result = run(seconds=20, seed=0, model_home=tiny_settings.home, size_mb=96, cache=tmp_path / "cache")
    failed = {name: check for name, check in result["invariants"].items() if not check["ok"]}
    assert failed == {}, (failed, result["logs"])
    injected = result["faults_injected"]
    assert injected["redis_kill"] == injected["trainer_kill"] == injected["replica_kill"] == 1, result[
        "faults"
    ]
    if result["filesystem"] == "none":
        pytest.skip("disk_full needs root (a tmpfs or a loop mount); the other faults held")
    assert injected["disk_full"] == 1
    events = result["events"]
    assert events["acknowledged"] > 0 and events["lost"] == events["duplicated"] == 0
    assert result["requests"].get("/complete 200", 0) > 0
    assert set(result["recovery"]) == set(RECOVERY_BOUND_S)
