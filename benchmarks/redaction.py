"""Redaction precision on real code: how often ``redact`` touches code that holds no secret.

Samples ``--lines`` lines (default 2,000) of Python from installed packages (this venv's
site-packages, none of it written here), as chunks of 40 consecutive lines from files chosen
with a fixed seed, and runs :func:`editloop.feedback.privacy.redact` over each chunk as an event's
prefix would carry it. Library code holds no live secrets, so every redaction is a candidate false
positive; a few are test fixtures shaped like keys on purpose, which is why each one is printed
for a person to judge (``flagged``) rather than scored automatically.

Run: ``.venv/bin/python benchmarks/redaction.py [--lines 2000] [--seed 0]``; prints one JSON object.
"""

import argparse
import json
import random
import sysconfig
from pathlib import Path

from editloop.feedback.privacy import MARK, redact

CHUNK = 40
# Packages of the installed environment, many authors and styles (HTTP, crypto-adjacent auth code,
# settings, CLIs, a database client): where key-shaped code is likeliest outside a real secret.
PACKAGES = (
    "httpx",
    "httpcore",
    "starlette",
    "fastapi",
    "pydantic",
    "pydantic_settings",
    "redis",
    "uvicorn",
    "click",
    "typer",
    "rich",
    "jinja2",
    "urllib3",
    "requests",
    "huggingface_hub",
    "transformers",
    "peft",
    "trl",
    "gguf",
    "tokenizers",
    "pygls",
    "lsprotocol",
    "detect_secrets",
    "openai",
    "prometheus_client",
)


def sample_chunks(lines: int, seed: int) -> list[tuple[str, int, str]]:
    """(file, first line number, text) chunks of real package code, ``lines`` lines in all."""
    root = Path(sysconfig.get_paths()["purelib"])
    files = sorted(
        path
        for name in PACKAGES
        if (root / name).is_dir()
        for path in (root / name).rglob("*.py")
        if path.stat().st_size > 0
    )
    rng = random.Random(seed)
    rng.shuffle(files)
    chunks, taken = [], 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
        if len(text) < CHUNK:
            continue
        start = rng.randrange(0, len(text) - CHUNK + 1)
        chunks.append((str(path.relative_to(root)), start + 1, "\n".join(text[start : start + CHUNK])))
        taken += CHUNK
        if taken >= lines:
            break
    return chunks


def measure(lines: int = 2000, seed: int = 0) -> dict:
    chunks = sample_chunks(lines, seed)
    flagged = []
    for path, first, text in chunks:
        redacted, _ = redact(text)
        if redacted == text:
            continue
        for offset, (before, after) in enumerate(zip(text.split("\n"), redacted.split("\n"), strict=False)):
            if before != after and MARK in after:
                flagged.append({"file": path, "line": first + offset, "before": before, "after": after})
    total = sum(chunk[2].count("\n") + 1 for chunk in chunks)
    return {
        "lines": total,
        "files": len(chunks),
        "flagged_lines": len(flagged),
        "flagged_per_1000_lines": round(1000 * len(flagged) / total, 2) if total else None,
        "flagged": flagged,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(measure(args.lines, args.seed), indent=2))


if __name__ == "__main__":
    main()
