"""Does one retrain cycle help on every repository? The demo's protocol per codebase; one JSON object.

For each repository (real code the starter never trained on), from a fresh copy of the same starter
home: the held-out split is replayed with the starter (before), the train split is replayed as
feedback, one cycle runs with the operator's settings (checkpoint selection, blends, rehearsal), and
the held-out split is replayed again with the published version, once per ranker it has. Printed per
repository: published or refused (and why), held-out full-accept rate, chars saved and shown before and
after, the general-code change the gate measured (relative), and the checkpoint the cycle chose.

Target (issue 27): every repository publishes, with a held-out gain whose interval is above zero and a
general-code drop of at most 10 % relative.

Run: .venv/bin/python benchmarks/learning.py --starter-home $EDITLOOP_HOME [--repos email,httpx,...]
"""

import argparse
import json
import shutil
import sys
import sysconfig
import time
from pathlib import Path

from rich.console import Console

from editloop.demo import DemoOptions, run_demo
from editloop.settings import load_settings

TARGET_DROP = 0.10  # relative


def repository(name: str) -> Path:
    """A stdlib package the starter excluded from training, or an installed one (site-packages)."""
    if name == "email":
        return Path(sysconfig.get_paths()["stdlib"]) / "email"
    site = Path(sysconfig.get_paths()["purelib"]) / name
    return site if site.is_dir() else Path(name)


def row_figures(row: dict) -> dict:
    keys = ("full_accept_rate", "chars_saved", "shown", "abstain_rate", "exact_match")
    return {k: row.get(k) for k in keys} | {"ranker": row.get("ranker"), "version": row.get("model_version")}


def general_change(gate: dict) -> dict:
    """Each general-code metric's relative change, candidate against the serving version."""
    out = {}
    for metric, row in (gate.get("general") or {}).items():
        before, after = row["current"], row["candidate"]
        out[metric] = {
            "before": before,
            "after": after,
            "relative": (after - before) / before if before else None,
        }
    return out


def summarise(result: dict) -> dict:
    cycle = result["cycles"][-1] if result["cycles"] else {}  # the last cycle's gate and value model
    reports = cycle.get("reports", {})
    gate = reports.get("gate", {})
    gain = (gate.get("feedback") or {}).get("edit_similarity", {})
    general = general_change(gate)
    drops = [-g["relative"] for g in general.values() if g["relative"] is not None]
    chosen = next((p["label"] for p in reports.get("trajectory", []) if p.get("chosen")), None)
    return {
        "status": cycle.get("status"),
        "message": cycle.get("message"),
        "cycle_seconds": cycle.get("seconds"),
        "checkpoint": chosen,
        "trajectory": [
            p.get("summary") and f"{p['label']}: {p['summary']}" for p in reports.get("trajectory", [])
        ],
        "heldout_gain": {k: gain.get(k) for k in ("delta", "low", "high")},
        "general": general,
        "worst_general_drop_relative": max(drops, default=None),
        "value_model": value_summary(reports),
        "value_model_per_cycle": [value_summary(c.get("reports", {})) for c in result["cycles"]],
        "before": row_figures(result["rows"][0]),
        "after": [row_figures(r) for r in result["rows"][1:]],
        "meets_target": cycle.get("status") == "published"
        and (gain.get("low") or 0) > 0
        and max(drops, default=0) <= TARGET_DROP,
    }


def value_summary(reports: dict) -> dict:
    """The cycle's verdict on the value model: held-out AUC and ranker A/B against log-prob."""
    value = reports.get("value", {})
    keys = ("published", "reason", "auc", "baseline_auc", "rank_p50_ms", "ab", "train_rows", "rows")
    summary = {k: value.get(k) for k in keys} | {"thresholds": _thresholds(reports.get("abstain", {}))}
    # A ranker version may carry the model that also reads the weights' hidden states instead.
    hidden = reports.get("value_hidden")
    if hidden:
        hidden_keys = ("chosen", "reason", "auc", "hidden_width", "hidden_seconds", "rank_p50_ms", "ab")
        summary["hidden"] = {k: hidden.get(k) for k in hidden_keys}
        summary["hidden"]["thresholds"] = _thresholds(hidden.get("abstain", {}))
    return summary


def _thresholds(abstain: dict) -> dict:
    return {name: r.get("threshold") for name, r in abstain.items() if isinstance(r, dict)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--starter-home", type=Path, required=True, help="an EDITLOOP_HOME with a starter")
    parser.add_argument("--work", type=Path, default=Path("/tmp/editloop-learning"))
    parser.add_argument("--repos", default="email,httpx,typer,jinja2")
    parser.add_argument("--per-file", type=int, default=20, help="suggestions asked per file at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cycles", type=int, default=1, help="cycles per repository (last summarised)")
    parser.add_argument("--out", type=Path, help="also write the JSON here (rewritten after each repository)")
    args = parser.parse_args()
    report: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "repos": {}}
    console = Console(stderr=True)
    for name in args.repos.split(","):
        home = args.work / name
        shutil.rmtree(home, ignore_errors=True)
        shutil.copytree(args.starter_home, home, ignore=shutil.ignore_patterns("runs", "redis", "feedback"))
        settings = load_settings().model_copy(update={"home": home})
        started = time.perf_counter()
        options = DemoOptions(
            repository(name), cycles=args.cycles, seed=args.seed, requests_per_file=args.per_file
        )
        result = run_demo(settings, options, console)
        report["repos"][name] = summarise(result) | {"seconds": round(time.perf_counter() - started, 1)}
        if args.out:
            args.out.write_text(json.dumps(report, indent=2))
    report["all_meet_target"] = all(r["meets_target"] for r in report["repos"].values())
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
