"""Serving latency, all in one run on the same GGUF and the same prompts; prints one JSON object.

Prompts are cursor positions in real standard-library files (line mode, 32 new tokens at most):
- ``raw``: llama-cpp-python's ``create_completion`` on the FIM prompt (the reference);
- ``complete_n1`` / ``complete_n5``: editloop's ``/complete`` over HTTP, 1 and 5 candidates + reranking;
- ``llama_cpp_server_n1``: ``python -m llama_cpp.server``'s ``/v1/completions`` on the same GGUF;
- ``cache_hit``: ``/complete`` right after the user typed the first characters of a shown completion.

Run: ``make bench`` or ``.venv/bin/python benchmarks/serving.py [--requests 40]``.
Targets: complete_n1 ≤ 1.10× raw, complete_n5 ≤ 1.6× complete_n1, cache hit p50 ≤ 5 ms.
"""

import argparse
import json
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from llama_cpp import Llama

from editloop.completion.prompt import build_prompt
from editloop.models.llama import LlamaBackend
from editloop.models.registry import ModelVersion, Registry
from editloop.server.background import background_server, free_port
from editloop.settings import Settings, load_settings
from editloop.starter.bootstrap import BootstrapOptions, bootstrap

TOKEN = "bench-token"

MAX_TOKENS = 32
PREFIX_CHARS, SUFFIX_CHARS = 1500, 400


def cursor_positions(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """(prefix, suffix) at the start of non-blank lines, after their indentation, in stdlib files."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.stat().st_size > 5000)
    rng = np.random.default_rng(seed)
    positions = []
    for path in rng.choice(files, size=count, replace=False):
        text = path.read_text(encoding="utf-8", errors="replace")
        lines = text.split("\n")
        index = int(rng.integers(10, len(lines) - 10))
        while not lines[index].strip():
            index += 1
        indent = lines[index][: len(lines[index]) - len(lines[index].lstrip())]
        prefix = "\n".join([*lines[:index], indent])[-PREFIX_CHARS:]
        suffix = ("\n" + "\n".join(lines[index + 1 :]))[:SUFFIX_CHARS]
        positions.append((prefix, suffix))
    return positions


def percentiles(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {
        "p50_ms": statistics.median(ordered) * 1000,
        "p95_ms": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000,
        "n": len(ordered),
    }


def engine_prompts(version: ModelVersion, prompts: list[tuple[str, str]]) -> list[list[int]]:
    """The token ids /complete builds for each cursor, so every contender decodes the same prompt."""
    backend = LlamaBackend.from_version(version, max_candidates=1)
    try:
        return [build_prompt(backend, p, s, [], None, MAX_TOKENS).ids for p, s in prompts]
    finally:
        backend.close()


def time_raw(version: ModelVersion, prompt_ids: list[list[int]]) -> list[float]:
    # A multiple of 256: llama.cpp pads the context and llama-cpp-python must size buffers alike.
    llm = Llama(str(version.gguf_path()), n_ctx=1024, verbose=False)
    try:
        out = []
        for ids in prompt_ids:
            started = time.perf_counter()
            llm.create_completion(ids, max_tokens=MAX_TOKENS, temperature=0.0, stop=["\n"])
            out.append(time.perf_counter() - started)
        return out
    finally:
        llm.close()


def time_http(url: str, path: str, bodies: list[dict], headers: dict) -> list[float]:
    out = []
    with httpx.Client(base_url=url, timeout=60, headers=headers) as http:
        for body in bodies:
            started = time.perf_counter()
            reply = http.post(path, json=body)
            out.append(time.perf_counter() - started)
            reply.raise_for_status()
    return out


def time_cache_hits(url: str, prompts: list[tuple[str, str]], headers: dict) -> tuple[list[float], int]:
    """Latency of the request after typing two characters of the shown completion; and misses."""
    out, misses = [], 0
    with httpx.Client(base_url=url, timeout=60, headers=headers) as http:
        for prefix, suffix in prompts:
            first = http.post("/complete", json={"prefix": prefix, "suffix": suffix, "mode": "line"}).json()
            shown = first["choices"][0]["text"] if first["choices"] else ""
            if len(shown.strip()) < 3:  # typing 2 of 2 characters leaves nothing to suggest
                continue
            typed = shown[: len(shown) - len(shown.lstrip()) + 2]  # what a user types: up to 2 visible chars
            started = time.perf_counter()
            second = http.post("/complete", json={"prefix": prefix + typed, "suffix": suffix, "mode": "line"})
            elapsed = time.perf_counter() - started
            if second.json()["cached"]:
                out.append(elapsed)
            else:
                misses += 1
                print(f"type-ahead miss: shown {shown!r}", file=sys.stderr)
    return out, misses


def llama_cpp_server(version: ModelVersion, prompt_ids: list[list[int]]) -> list[float]:
    """llama-cpp-python's own OpenAI server on the same GGUF, given the same prompts as text."""
    vocab = Llama(str(version.gguf_path()), vocab_only=True, verbose=False)
    texts = [vocab.detokenize(ids, special=True).decode("utf-8", "replace") for ids in prompt_ids]
    vocab.close()
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(version.gguf_path()),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        "1024",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{url}/v1/models", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        bodies = [{"prompt": t, "max_tokens": MAX_TOKENS, "temperature": 0.0, "stop": ["\n"]} for t in texts]
        return time_http(url, "/v1/completions", bodies, {})
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _server_settings(settings: Settings, **overrides: object) -> Settings:
    return load_settings(
        home=settings.home, port=free_port(), api_tokens=[TOKEN], abstain_threshold=0.0, **overrides
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()
    prompts = cursor_positions(args.requests)
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings()
        registry = Registry(settings.models_dir)
        if registry.current() is None:
            bootstrap(load_settings(home=Path(tmp)), BootstrapOptions(size="tiny"))
            settings = load_settings(home=Path(tmp))
            registry = Registry(settings.models_dir)
        version = registry.load_verified_current()
        prompt_ids = engine_prompts(version, prompts)
        raw = time_raw(version, prompt_ids)
        # Cache off for the timed runs (distinct prompts miss anyway; this keeps it honest).
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with background_server(_server_settings(settings, cache_entries=0)) as (url, _):
            n1 = time_http(
                url,
                "/complete",
                [{"prefix": p, "suffix": s, "mode": "line", "max_tokens": MAX_TOKENS} for p, s in prompts],
                headers,
            )
            n5 = time_http(
                url,
                "/complete",
                [
                    {"prefix": p, "suffix": s, "mode": "line", "max_tokens": MAX_TOKENS, "n": 5}
                    for p, s in prompts
                ],
                headers,
            )
        with background_server(_server_settings(settings)) as (url, _):
            hits, misses = time_cache_hits(url, prompts, headers)
        server = llama_cpp_server(version, prompt_ids)
    report = {
        "model_version": version.name,
        "gguf": version.gguf_path().name,
        "requests": len(prompts),
        "max_tokens": MAX_TOKENS,
        "raw": percentiles(raw),
        "complete_n1": percentiles(n1),
        "complete_n5": percentiles(n5),
        "llama_cpp_server_n1": percentiles(server),
        "cache_hit": percentiles(hits) if hits else None,
        "cache_misses": misses,
    }
    report["ratios"] = {
        "complete_n1_vs_raw_p50": report["complete_n1"]["p50_ms"] / report["raw"]["p50_ms"],
        "complete_n5_vs_n1_p50": report["complete_n5"]["p50_ms"] / report["complete_n1"]["p50_ms"],
        "llama_cpp_server_vs_raw_p50": report["llama_cpp_server_n1"]["p50_ms"] / report["raw"]["p50_ms"],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
