"""The cost of context from the codebase on a ~50k-line repository; prints JSON.

A slice of the Python standard library (whole packages, copied to a temporary directory until it
holds ``--lines`` lines) is indexed as a project root; then at ``--lookups`` cursor positions drawn
from its files the request path's work is timed: gathering snippets (definitions, similar chunks,
recent ones) and finding codebase continuations. The target is ≤ 5 ms per lookup at p95. Also
reported: the full build, a no-change refresh (what each ``context_refresh_s`` costs), and an
incremental re-index of one edited file, each against the build measured in the same run.

Run: ``.venv/bin/python benchmarks/context.py [--lines 50000] [--lookups 400]``.
"""

import argparse
import json
import os
import random
import shutil
import statistics
import sysconfig
import tempfile
import time
from pathlib import Path

from editloop.completion.context.workspace import ContextLimits, Workspace

PACKAGES = (
    "email",
    "json",
    "http",
    "asyncio",
    "importlib",
    "logging",
    "xml",
    "concurrent",
    "unittest",
    "urllib",
)


def build_slice(target: Path, lines: int) -> int:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for package in PACKAGES:
        for source in sorted((stdlib / package).rglob("*.py")):
            if "test" in source.parts[-2:-1]:
                continue
            destination = target / package / source.relative_to(stdlib / package)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
            total += source.read_text(errors="replace").count("\n")
            if total >= lines:
                return total
    return total


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--lookups", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="editloop-context-") as tmp:
        root = Path(tmp)
        lines = build_slice(root, args.lines)
        workspace = Workspace(root, ContextLimits())
        started = time.perf_counter()
        workspace.refresh(force=True)
        build_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        workspace.refresh(force=True)
        refresh_ms = (time.perf_counter() - started) * 1000

        files = sorted(root.rglob("*.py"))
        rng = random.Random(args.seed)
        gather_ms, copy_ms, total_ms, snippets, copies = [], [], [], [], []
        for _ in range(args.lookups):
            path = rng.choice(files)
            text = path.read_text(errors="replace")
            cut = rng.randrange(len(text) + 1)
            rel = path.relative_to(root).as_posix()
            prefix, suffix = text[:cut][-8000:], text[cut:][:2000]
            started = time.perf_counter()
            gathered = workspace.gather(rel, prefix, suffix)
            middle = time.perf_counter()
            found = workspace.continuations(rel, prefix, block=rng.random() < 0.5)
            ended = time.perf_counter()
            gather_ms.append((middle - started) * 1000)
            copy_ms.append((ended - middle) * 1000)
            total_ms.append((ended - started) * 1000)
            snippets.append(len(gathered))
            copies.append(len(found))
            workspace.visited(rel, text, text.count("\n", 0, cut))  # as an editor's ring would fill

        edited = rng.choice(files)
        started = time.perf_counter()
        workspace.index.update_text(edited.relative_to(root).as_posix(), edited.read_text() + "\nx = 1\n")
        update_ms = (time.perf_counter() - started) * 1000

    print(
        json.dumps(
            {
                "repository": {"lines": lines, **workspace.index.stats, "packages": list(PACKAGES)},
                "index_build_ms": round(build_ms, 1),
                "refresh_unchanged_ms": round(refresh_ms, 1),
                "refresh_vs_build": round(refresh_ms / build_ms, 4),
                "update_one_file_ms": round(update_ms, 2),
                "update_vs_build": round(update_ms / build_ms, 5),
                "lookups": args.lookups,
                "lookup_ms": {"p50": percentile(total_ms, 0.5), "p95": percentile(total_ms, 0.95)},
                "gather_ms": {"p50": percentile(gather_ms, 0.5), "p95": percentile(gather_ms, 0.95)},
                "continuations_ms": {"p50": percentile(copy_ms, 0.5), "p95": percentile(copy_ms, 0.95)},
                "target_ms": 5.0,
                "meets_target_p95": percentile(total_ms, 0.95) <= 5.0,
                "mean_snippets": round(statistics.mean(snippets), 2),
                "mean_codebase_candidates": round(statistics.mean(copies), 2),
                "load_average": os.getloadavg()[0],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
