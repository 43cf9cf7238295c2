"""What real model sizes cost on this machine: the starter and Qwen2.5-Coder-shaped models; one JSON object.

The Qwen shapes are ``editloop models synth`` checkpoints: the published architecture with seeded random
weights, so every figure is what the real model costs to serve, train and export (not what it answers).
Per model, all in one run so every ratio compares figures taken under the same load:

- ``gguf_mib``: the f16, Q8_0 and Q4_K_M files (and which tensors Q4_K_M stored in fallback types);
- ``speed``: llama.cpp prompt and decode tokens/s on the served quant (≈1,500-token prompts);
- ``complete``: ``/complete`` n=1 and n=5 (32 new tokens, block mode, completion cache off) p50/p95 on
  editor-shaped prompts (a cursor in a standard-library file: ≈1,200 tokens before, ≈300 after),
  against raw llama-cpp-python and ``python -m llama_cpp.server`` on the same GGUF and prompts,
  interleaved request by request; n=5 for those is one greedy and four sampled completions of the
  same prompt, their own prefix cache reusing its KV (one request cannot ask them for 5);
- ``rss_mib``: resident memory of the editloop server and of llama_cpp.server after those requests;
- ``typing``: a cursor moving 1-5 characters between requests, alone (the KV of the previous request
  is reused) and interleaved with a second file's typing (nothing is reused);
- ``hot_swap``: verifying and loading a version of that size and swapping to it (what a server does
  when the registry pointer moves);
- ``training_cpu``: one LoRA SFT step and one GRPO step (a group of 4) in a fresh process: wall time and
  peak RSS;
- ``merge_export_parity``: merging that adapter and exporting and verifying it as a cycle does.

Run (the Qwen models are built on first use, ~3 GB and ~9 GB of disk under --work):
    .venv/bin/python benchmarks/scale.py --work /tmp/scale-bench --starter-home $EDITLOOP_HOME
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import numpy as np

SHAPES = ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
TOKEN = "bench-token"
NEW_TOKENS = 32
PREFIX_TOKENS, SUFFIX_TOKENS = 1200, 300
SAMPLED = 4  # n=5: one greedy candidate and four sampled
SFT_ROWS, SFT_CONTEXT = 2, 1024
GRPO_GROUP, GRPO_CONTEXT = 4, 512 + NEW_TOKENS
QUANT = "q8_0"
THREADS = os.cpu_count() or 1  # every contender gets every core


# -- models -----------------------------------------------------------------------------------


def starter_version(home: Path | None, work: Path):
    """The starter active under ``home`` (any size), else a tiny one built under ``work``."""
    from editloop.models.registry import Registry
    from editloop.settings import load_settings
    from editloop.starter.bootstrap import BootstrapOptions, bootstrap

    if home is not None:
        current = Registry(home / "models").current()
        if current is not None and current.manifest.kind == "starter":
            return home, current
    home = work / "starter"
    current = Registry(home / "models").current()
    if current is None:
        current = bootstrap(load_settings(home=home), BootstrapOptions(size="tiny"))
    return home, current


def synthetic_version(shape: str, work: Path) -> tuple[Path, object, float | None]:
    """(home, version, seconds to build+export+verify+publish, None when an earlier run built it)."""
    from editloop.models.registry import Registry
    from editloop.models.synth import publish_synthetic
    from editloop.settings import load_settings

    home = work / shape
    current = Registry(home / "models").current()
    if current is not None and current.manifest.synthetic:
        return home, current, None
    started = time.perf_counter()
    version = publish_synthetic(load_settings(home=home), shape, activate=True, threads=THREADS)
    return home, version, round(time.perf_counter() - started, 1)


def describe(version) -> dict:
    config = json.loads((version.hf_path() / "config.json").read_text())
    size = version.manifest.training_data.get("size", {}).get("name")
    return {
        "version": version.name,
        "kind": version.manifest.kind,
        "synthetic": version.manifest.synthetic,
        "starter_size": size,
        "arch": version.manifest.arch,
        "layers": config["num_hidden_layers"],
        "hidden": config["hidden_size"],
        "vocab": config["vocab_size"],
        "parameters_m": round(_parameters(version.hf_path()) / 1e6, 1),
    }


def _parameters(hf_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in hf_dir.glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            total += sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())  # noqa: SIM118
    return total


def context_length(version) -> int:
    import gguf

    reader = gguf.GGUFReader(version.gguf_path(QUANT))
    field = reader.get_field(f"{version.manifest.arch}.context_length")
    return int(field.parts[field.data[0]][0])


def gguf_sizes(version) -> dict:
    return {
        q: round((version.path / rel).stat().st_size / 2**20, 1) for q, rel in version.manifest.gguf.items()
    }


# -- prompts ----------------------------------------------------------------------------------


def editor_prompts(tokenize, count: int, seed: int, n_ctx: int) -> list[tuple[str, str]]:
    """(prefix, suffix) at a line start in stdlib files: ≈1,200 tokens before, ≈300 after (or what
    the model's context holds)."""
    scale = min(1.0, (n_ctx - NEW_TOKENS - 16) / (PREFIX_TOKENS + SUFFIX_TOKENS))
    before, after = int(PREFIX_TOKENS * scale), int(SUFFIX_TOKENS * scale)
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.stat().st_size > 40_000)
    rng = np.random.default_rng(seed)
    prompts = []
    for path in rng.choice(files, size=count, replace=False):
        text = path.read_text(encoding="utf-8", errors="replace")
        cursor = text.find("\n", int(rng.integers(len(text) // 3, 2 * len(text) // 3))) + 1
        prefix = _last_tokens(tokenize, text[:cursor], before)
        suffix = _first_tokens(tokenize, text[cursor:], after)
        if len(tokenize(prefix + suffix)) > before + after + 200:  # one very long line: keep it out
            raise RuntimeError(f"{path.name}: no ≈{before + after}-token window at {cursor}")
        prompts.append((prefix, suffix))
    return prompts


def _last_tokens(tokenize, text: str, n: int) -> str:
    """The whole lines at the end of ``text`` that make about ``n`` tokens (the cursor's line last)."""
    lines = text.splitlines(keepends=True)
    kept, count = [], 0
    while lines and count < n:
        line = lines.pop()
        count += len(tokenize(line))
        kept.append(line)
    return "".join(reversed(kept))


def _first_tokens(tokenize, text: str, n: int) -> str:
    lines = text.splitlines(keepends=True)
    kept, count = [], 0
    for line in lines:
        if count >= n:
            break
        count += len(tokenize(line))
        kept.append(line)
    return "".join(kept)


def percentiles(seconds: list[float], cpu: list[float] | None = None) -> dict:
    """p50/p95 of wall time, and the median CPU time the work itself took (which load barely moves)."""
    ordered = sorted(seconds)
    result = {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 1),
        "n": len(ordered),
    }
    if cpu:
        result["cpu_p50_ms"] = round(statistics.median(cpu) * 1000, 1)
    return result


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system, every thread) of process ``pid``; this one when None."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- servers ----------------------------------------------------------------------------------


def start(command: list[str], env: dict, health: str, log: Path, timeout_s: float = 600) -> subprocess.Popen:
    process = subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command[:4]} exited with {process.returncode}: {_tail(log)}")
        try:
            if httpx.get(health, timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"{command[:4]} did not answer {health} within {timeout_s} s: {_tail(log)}")


def _tail(log: Path) -> str:
    """The end of a server's log, for an error raised where the log may not outlive it."""
    return log.read_text(errors="replace")[-2000:]


def editloop_server(home: Path, port: int, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "EDITLOOP_HOME": str(home),
        "EDITLOOP_PORT": str(port),
        "EDITLOOP_API_TOKENS": json.dumps([TOKEN]),
        "EDITLOOP_CACHE_ENTRIES": "0",  # measure generation, not the completion cache
        "EDITLOOP_FEEDBACK_ENABLED": "false",
        "EDITLOOP_TRAINER": "false",
        "EDITLOOP_ABSTAIN_THRESHOLD": "0",
        "EDITLOOP_MODEL_THREADS": str(THREADS),
        "EDITLOOP_MODEL_QUANT": QUANT,
    }
    command = [sys.executable, "-m", "editloop", "serve"]
    process = start(command, env, f"http://127.0.0.1:{port}/health", log)
    while httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["status"] != "ok":
        time.sleep(0.5)
    return process


def llama_cpp_server(gguf: Path, port: int, n_ctx: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(THREADS)]
    return start(command, dict(os.environ), f"http://127.0.0.1:{port}/v1/models", log)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- serving measurements ----------------------------------------------------------------------


def timed(call, pid: int | None = None) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of process ``pid`` or this one, result) of ``call()``."""
    cpu, started = cpu_seconds(pid), time.perf_counter()
    result = call()
    return time.perf_counter() - started, cpu_seconds(pid) - cpu, result


def complete_body(prefix: str, suffix: str, n: int) -> dict:
    return {"prefix": prefix, "suffix": suffix, "mode": "block", "max_tokens": NEW_TOKENS, "n": n}


def serving(version, home: Path, work: Path, prompts: list[tuple[str, str]]) -> dict:
    """editloop /complete, llama_cpp.server and raw llama-cpp-python, request by request."""
    from llama_cpp import Llama

    gguf = version.gguf_path(QUANT)
    fim = version.manifest.fim
    texts = [fim.format(p, s) for p, s in prompts]
    llm = Llama(str(gguf), n_ctx=2048, n_threads=THREADS, verbose=False)
    ids = [llm.tokenize(t.encode(), add_bos=False, special=True) for t in texts]
    ports = _ports(2)
    ours = editloop_server(home, ports[0], work / "editloop-serve.log")
    theirs = llama_cpp_server(gguf, ports[1], 2048, work / "llama-cpp-server.log")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    runs: dict[str, tuple[list[float], list[float]]] = {}
    prompt_tokens, cached = [], []

    def record(name: str, wall: float, cpu: float) -> None:
        runs.setdefault(name, ([], []))[0].append(wall)
        runs[name][1].append(cpu)

    try:
        with httpx.Client(timeout=600) as http:
            ours_url, theirs_url = f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"
            # One untimed request each (first calls pay for allocations), on a prompt shared with none.
            warm = ("import os\n", "")
            http.post(f"{ours_url}/complete", json=complete_body(*warm, 1), headers=auth)
            _server_candidates(http, theirs_url, fim.format(*warm), 1)
            _raw_candidates(llm, llm.tokenize(fim.format(*warm).encode(), add_bos=False, special=True), 1)
            for (prefix, suffix), text, prompt in zip(prompts, texts, ids, strict=True):
                for n in (1, 5):
                    body = complete_body(prefix, suffix, n)
                    wall, cpu, reply = timed(
                        lambda body=body: http.post(f"{ours_url}/complete", json=body, headers=auth), ours.pid
                    )
                    reply.raise_for_status()
                    record(f"editloop_n{n}", wall, cpu)
                    if n == 1:
                        prompt_tokens.append(reply.json()["prompt_tokens"])
                        cached.append(reply.json()["cached_tokens"])
                    ask = lambda n=n, text=text: _server_candidates(http, theirs_url, text, n)  # noqa: E731
                    record(f"server_n{n}", *timed(ask, theirs.pid)[:2])
                    record(
                        f"raw_n{n}", *timed(lambda n=n, prompt=prompt: _raw_candidates(llm, prompt, n))[:2]
                    )
            rss = {"editloop": rss_mib(ours.pid), "llama_cpp_server": rss_mib(theirs.pid)}
    finally:
        stop(ours)
        stop(theirs)
        llm.close()
    result = {name: percentiles(wall, cpu) for name, (wall, cpu) in sorted(runs.items())}
    result["prompt_tokens_mean"] = round(statistics.mean(prompt_tokens), 1)
    result["editloop_cached_tokens_mean"] = round(statistics.mean(cached), 1)
    result["rss_mib"] = rss
    return result


def _ports(count: int) -> list[int]:
    from editloop.server.background import free_port

    return [free_port() for _ in range(count)]


def _server_candidates(http: httpx.Client, url: str, text: str, n: int) -> None:
    """One greedy request, then n-1 sampled ones of the same prompt (the server reuses its KV)."""
    for i in range(n):
        body = {"prompt": text, "max_tokens": NEW_TOKENS, "temperature": 0.0 if i == 0 else 0.7, "seed": i}
        http.post(f"{url}/v1/completions", json=body).raise_for_status()


def _raw_candidates(llm, prompt: list[int], n: int) -> None:
    for i in range(n):
        llm.create_completion(prompt, max_tokens=NEW_TOKENS, temperature=0.0 if i == 0 else 0.7, seed=i)


def speed(version, prompts: list[tuple[str, str]]) -> dict:
    """llama.cpp prompt and decode tokens/s on the served quant: a cold prompt, then 32 greedy steps.

    Also per CPU-second: what each token costs whatever else runs on the machine.
    """
    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(str(version.gguf_path(QUANT)), n_ctx=2048, n_batch=512, n_threads=THREADS, verbose=False)
    fim = version.manifest.fim
    rates: dict[str, list[float]] = {"prompt": [], "prompt_cpu": [], "decode": [], "decode_cpu": []}

    def decode() -> None:
        for _ in range(NEW_TOKENS):
            last = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
            llm.eval([int(np.ctypeslib.as_array(last, shape=(llm.n_vocab(),)).argmax())])

    try:
        for prefix, suffix in prompts:
            ids = llm.tokenize(fim.format(prefix, suffix).encode(), add_bos=False, special=True)
            llm.reset()
            wall, cpu, _ = timed(lambda ids=ids: llm.eval(ids))
            rates["prompt"].append(len(ids) / wall)
            rates["prompt_cpu"].append(len(ids) / cpu)
            wall, cpu, _ = timed(decode)
            rates["decode"].append(NEW_TOKENS / wall)
            rates["decode_cpu"].append(NEW_TOKENS / cpu)
    finally:
        llm.close()
    median = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "prompt_tokens_per_s": round(median["prompt"], 1),
        "decode_tokens_per_s": round(median["decode"], 2),
        "prompt_tokens_per_cpu_s": round(median["prompt_cpu"], 1),
        "decode_tokens_per_cpu_s": round(median["decode_cpu"], 2),
    }


def typing_trace(home: Path, work: Path, files: list[str], steps: int, seed: int) -> dict:
    """A cursor typing through real code: each request 1-5 characters after the last one."""
    traces = [_trace(text, steps, seed + i) for i, text in enumerate(files)]
    port = _ports(1)[0]
    server = editloop_server(home, port, work / "editloop-typing.log")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600, headers=auth) as http:
            warm = [_typed(http, server.pid, p, s) for p, s in traces[0]]
            # Two files in turn: each request follows the other file's, so no KV is reused.
            pairs = zip(traces[0], traces[1], strict=True)
            cold = [_typed(http, server.pid, p, s) for pair in pairs for p, s in pair]
    finally:
        stop(server)
    return {
        "requests": len(warm),
        "reused_kv": _trace_summary(warm[1:]),  # the first request of a trace has nothing to reuse
        "no_reuse": _trace_summary(cold[2:]),
    }


def _trace(text: str, steps: int, seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    cursor = text.find("\n", len(text) // 2) + 1
    out = []
    for _ in range(steps):
        cursor += int(rng.integers(1, 6))
        out.append((text[max(0, cursor - 4000) : cursor], text[cursor : cursor + 1000]))
    return out


def _typed(http: httpx.Client, pid: int, prefix: str, suffix: str) -> tuple[float, float, int, int]:
    wall, cpu, reply = timed(lambda: http.post("/complete", json=complete_body(prefix, suffix, 1)), pid)
    reply.raise_for_status()
    body = reply.json()
    return wall, cpu, body["prompt_tokens"], body["cached_tokens"]


def _trace_summary(rows: list[tuple[float, float, int, int]]) -> dict:
    return {
        **percentiles([r[0] for r in rows], [r[1] for r in rows]),
        "prompt_tokens_mean": round(statistics.mean(r[2] for r in rows), 1),
        "cached_tokens_mean": round(statistics.mean(r[3] for r in rows), 1),
    }


def hot_swap(home: Path) -> dict:
    """Seconds to verify, load and swap to another version of the same size (a copy of the GGUF)."""
    from editloop.completion.builder import build_models
    from editloop.models.registry import Registry
    from editloop.settings import load_settings

    settings = load_settings(home=home, model_threads=THREADS, model_quant=QUANT)
    registry = Registry(settings.models_dir)
    first = registry.current()
    assert first is not None
    second = registry.republish(first.name)
    models = build_models(settings)
    try:
        models.reload()
        registry.activate(second.name)
        verify_s, _, _ = timed(lambda: registry.verify(second.name))
        swap_s, _, swapped = timed(models.reload)
        assert swapped and models.version == second.name
    finally:
        models.close()
        registry.activate(first.name)
        shutil.rmtree(second.path)  # the copy existed only to be swapped to
    return {"verify_s": round(verify_s, 3), "verify_load_validate_swap_s": round(swap_s, 3)}


# -- training (each in a fresh process, for its peak RSS) ------------------------------------------


def child(step: str, hf_dir: Path, out: Path, device: str, extra: list[str] = ()) -> dict:
    """One training phase in a fresh process; a failure (a kill for memory, say) is a figure too."""
    command = [sys.executable, __file__, "--child", step, "--hf", str(hf_dir), "--out", str(out)]
    command += ["--device", device, *extra]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        killed = done.returncode in (-9, 137)
        return {
            "error": "killed (out of memory)" if killed else done.stderr.strip().splitlines()[-1:],
            "returncode": done.returncode,
            "wall_s": round(time.perf_counter() - started, 1),
        }
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_with_checkpointing(step: str, hf_dir: Path, out: Path, device: str) -> dict:
    """The step as a cycle runs it; when that runs out of memory, again recomputing activations."""
    result = child(step, hf_dir, out, device)
    if result.get("returncode") not in (-9, 137):
        return result
    retried = child(step, hf_dir, out, device, ["--gradient-checkpointing"])
    retried["without_checkpointing"] = result
    return retried


def single_line_rows(count: int) -> list[dict]:
    """General-code FIM rows with a one-line target: the same rows for every model and step."""
    from editloop.training.cycle import general_rows

    return [r for r in general_rows(16, seed=0) if r["reference"].count("\n") == 0][:count]


def child_sft(hf_dir: Path, out: Path, device: str, checkpointing: bool) -> dict:
    from editloop.training.prompts import HfPromptTokenizer
    from editloop.training.sft import SftConfig, run_sft, sft_rows

    rows = single_line_rows(SFT_ROWS)
    tokens, _ = sft_rows(HfPromptTokenizer.load(hf_dir, SFT_CONTEXT), rows, NEW_TOKENS)
    config = SftConfig(
        max_steps=1,
        batch_size=SFT_ROWS,
        max_context=SFT_CONTEXT,
        max_new_tokens=NEW_TOKENS,
        device=device,
        gradient_checkpointing=checkpointing,
    )
    report = run_sft(hf_dir, rows, out, config)
    return {
        "rows": SFT_ROWS,
        "tokens": sum(len(r["input_ids"]) for r in tokens),
        "step_s": report.seconds,
        "gradient_checkpointing": checkpointing,
        "adapter": str(report.adapter_dir),
    }


def child_grpo(hf_dir: Path, out: Path, device: str, checkpointing: bool) -> dict:
    from editloop.training.grpo import GrpoConfig, run_grpo
    from editloop.training.rewards.combined import CombinedReward

    rows = single_line_rows(1)
    config = GrpoConfig(
        max_steps=1,
        prompts_per_step=1,
        num_generations=GRPO_GROUP,
        max_new_tokens=NEW_TOKENS,
        max_context=GRPO_CONTEXT,
        device=device,
        gradient_checkpointing=checkpointing,
    )
    report = run_grpo(hf_dir, rows, [CombinedReward(execution=False)], out, config)
    return {
        "used_vllm": report.used_vllm,
        "group": GRPO_GROUP,
        "new_tokens": NEW_TOKENS,
        "prompt_tokens_max": GRPO_CONTEXT - NEW_TOKENS,
        "step_s": report.seconds,
        "gradient_checkpointing": checkpointing,
    }


def child_export(hf_dir: Path, out: Path, adapter: Path, prompts: int) -> dict:
    """Merge, export and verify as a cycle does (its quants and parity inputs), phase by phase."""
    from editloop.models.export import export_gguf, load_hf
    from editloop.models.parity import default_inputs, verify_export
    from editloop.training.cycle import CycleConfig

    quants = CycleConfig().quants
    merge_s, merge_cpu, (model, tokenizer) = timed(lambda: load_hf(hf_dir, adapter))
    out.mkdir(parents=True, exist_ok=True)
    export_s, export_cpu, exported = timed(lambda: export_gguf(model, tokenizer, out, quants, THREADS))
    inputs = default_inputs(n_prompts=prompts)
    files = exported.files
    verify_s, verify_cpu, _ = timed(
        lambda: verify_export(model, tokenizer, exported.fim, files, inputs, THREADS)
    )
    for path in exported.files.values():
        path.unlink()
    return {
        "quants": list(quants),
        "parity_prompts": prompts,
        "merge_s": round(merge_s, 1),
        "export_s": round(export_s, 1),
        "parity_s": round(verify_s, 1),
        "cpu_s": {
            "merge": round(merge_cpu, 1),
            "export": round(export_cpu, 1),
            "parity": round(verify_cpu, 1),
        },
    }


def run_child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(THREADS)
    step = {"sft": child_sft, "grpo": child_grpo}.get(args.child)
    started = time.perf_counter()
    if step is not None:
        result = step(args.hf, args.out, args.device, args.gradient_checkpointing)
    else:
        result = child_export(args.hf, args.out, args.adapter, args.parity_prompts)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    result["cpu_s"] = round(usage.ru_utime + usage.ru_stime, 1)
    result["peak_rss_mib"] = round(usage.ru_maxrss / 1024, 1)
    if args.device == "cuda":
        result["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(result))


def training(version, work: Path, parity_prompts: int, device: str) -> dict:
    hf_dir = version.hf_path()
    sft = child_with_checkpointing("sft", hf_dir, work / "sft", device)
    grpo = child_with_checkpointing("grpo", hf_dir, work / "grpo", device)
    if "adapter" not in sft:
        return {"sft_step": sft, "grpo_step": grpo, "merge_export_parity": {"error": "no adapter to merge"}}
    extra = ["--adapter", sft["adapter"], "--parity-prompts", str(parity_prompts)]
    merged = child("export", hf_dir, work / "export", "cpu", extra)  # export runs on the CPU everywhere
    return {"sft_step": sft, "grpo_step": grpo, "merge_export_parity": merged}


# -- the run ------------------------------------------------------------------------------------


def measure(
    name: str, home: Path, version, work: Path, args: argparse.Namespace, build_s: float | None
) -> dict:
    from llama_cpp import Llama

    print(f"[scale] {name}: {version.name} in {home}", file=sys.stderr)
    work.mkdir(parents=True, exist_ok=True)
    vocab = Llama(str(version.gguf_path(QUANT)), vocab_only=True, verbose=False)
    tokenize = lambda text: vocab.tokenize(text.encode(), add_bos=False)  # noqa: E731
    prompts = editor_prompts(tokenize, args.requests, args.seed, min(context_length(version), 2048))
    vocab.close()
    result = {"model": describe(version), "build_export_publish_s": build_s, "gguf_mib": gguf_sizes(version)}
    result["q4_k_m_tensor_types"] = version.manifest.checks.get("quant_fallbacks", {}).get("q4_k_m")
    result["speed"] = speed(version, prompts)
    result["complete"] = serving(version, home, work, prompts)
    trace_files = [Path(sysconfig.get_paths()["stdlib"]) / f for f in ("argparse.py", "inspect.py")]
    result["typing"] = typing_trace(home, work, [f.read_text() for f in trace_files], args.trace, args.seed)
    result["hot_swap"] = hot_swap(home)
    if not args.no_training:
        result[f"training_{args.device}"] = training(version, work, args.parity_prompts, args.device)
    result["ratios"] = ratios(result)
    return result


def ratios(result: dict) -> dict:
    c = result["complete"]
    typing = result["typing"]

    def ratio(a: dict, b: dict) -> float:
        return round(a["p50_ms"] / b["p50_ms"], 3)

    def cpu_ratio(a: dict, b: dict) -> float | None:
        return round(a["cpu_p50_ms"] / b["cpu_p50_ms"], 3) if b.get("cpu_p50_ms") else None

    return {
        "editloop_n1_vs_raw_p50": ratio(c["editloop_n1"], c["raw_n1"]),
        "editloop_n1_vs_llama_cpp_server_p50": ratio(c["editloop_n1"], c["server_n1"]),
        "editloop_n5_vs_n1_p50": ratio(c["editloop_n5"], c["editloop_n1"]),
        "editloop_n5_vs_raw_n5_p50": ratio(c["editloop_n5"], c["raw_n5"]),
        "llama_cpp_server_n5_vs_n1_p50": ratio(c["server_n5"], c["server_n1"]),
        "typing_reused_vs_no_reuse_p50": ratio(typing["reused_kv"], typing["no_reuse"]),
        # The same, in the CPU time each request took: what the load on a shared machine cannot move.
        "cpu_editloop_n1_vs_raw": cpu_ratio(c["editloop_n1"], c["raw_n1"]),
        "cpu_editloop_n5_vs_raw_n5": cpu_ratio(c["editloop_n5"], c["raw_n5"]),
        "cpu_editloop_n1_vs_llama_cpp_server": cpu_ratio(c["editloop_n1"], c["server_n1"]),
        "cpu_typing_reused_vs_no_reuse": cpu_ratio(typing["reused_kv"], typing["no_reuse"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/editloop-scale"))
    parser.add_argument("--starter-home", type=Path, default=None, help="an EDITLOOP_HOME with a starter")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--requests", type=int, default=6, help="editor prompts per contender and n")
    parser.add_argument("--trace", type=int, default=10, help="requests in each typing trace")
    parser.add_argument("--parity-prompts", type=int, default=20, help="a cycle checks 20")
    parser.add_argument("--no-training", action="store_true")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where training steps run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="reuse models measured by an earlier run")
    parser.add_argument("--child", choices=("sft", "grpo", "export"), help=argparse.SUPPRESS)
    parser.add_argument("--hf", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--adapter", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--gradient-checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args)
        return
    started = time.perf_counter()
    report = {"machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}, "models": {}}
    for name in ["starter", *filter(None, args.shapes.split(","))]:
        saved = args.work / f"result-{name}.json"
        if args.resume and saved.is_file():
            report["models"][name] = json.loads(saved.read_text())
            continue
        if name == "starter":
            (home, version), build_s = starter_version(args.starter_home, args.work), None
        else:
            home, version, build_s = synthetic_version(name, args.work)
        report["models"][name] = measure(name, home, version, args.work / f"bench-{name}", args, build_s)
        saved.write_text(json.dumps(report["models"][name], indent=2))
    report["machine"]["load_average_at_end"] = os.getloadavg()
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
