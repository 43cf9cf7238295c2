#!/usr/bin/env bash
# The GPU path in one command on a CUDA machine; prints one JSON object (logs stay under $OUT).
#
#   scripts/gpu-check.sh                  # from anywhere; runs in the repository root
#   OUT=/tmp/gpu WHEELS=./wheels scripts/gpu-check.sh
#   SMOKE=1 scripts/gpu-check.sh          # on a CPU machine: the same steps, small, to prove the script
#   STARTER_HOME=~/.local/share/editloop  # reuse that home's starter instead of building the tiny one
#
# 1. installs what the machine lacks from $WHEELS (default ./wheels, made by scripts/gpu-wheels.sh on a
#    machine with a package registry; pip --no-index, nothing is downloaded) and lists what is still missing;
# 2. the gpu-marked tests (tests/test_gpu.py): bf16 SFT + GRPO on the Qwen2.5-Coder-0.5B shape (TRL's
#    colocated vLLM when vllm is installed), a whole cycle with publish, the remote backend against
#    `vllm serve` on the checkpoint (skipped without vLLM);
# 3. benchmarks/scale.py on the 0.5B shape with its training steps on CUDA (serving stays llama.cpp on
#    the CPU, as in production).
# Exit status: 0 when every step ran and passed, 1 otherwise (the JSON says which).
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-/tmp/editloop-gpu-check}
WHEELS=${WHEELS:-wheels}
SMOKE=${SMOKE:-0}
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
mkdir -p "$OUT"
rm -f "$OUT/gpu-tests.xml" "$OUT/gpu-tests.log" "$OUT/scale.json" "$OUT/scale.log"  # no stale results
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" EDITLOOP_HOME="$OUT/home" HF_HUB_OFFLINE=1

if compgen -G "$WHEELS/*.whl" > /dev/null; then
    "$PY" -m pip install --no-index --no-deps "$WHEELS"/*.whl > "$OUT/pip.log" 2>&1 \
        || echo "gpu-check: installing from $WHEELS failed, see $OUT/pip.log" >&2
fi

"$PY" - > "$OUT/env.json" <<'EOF'
import importlib.util, json, platform, shutil
needed = ["torch", "transformers", "peft", "accelerate", "trl", "datasets", "llama_cpp", "gguf", "tokenizers",
          "safetensors", "fastapi", "uvicorn", "httpx", "pydantic_settings", "redis", "typer", "rich",
          "rapidfuzz", "tree_sitter", "detect_secrets", "prometheus_client", "pytest"]
env = {"python": platform.python_version(), "missing": [m for m in needed if importlib.util.find_spec(m) is None]}
env["vllm"] = importlib.util.find_spec("vllm") is not None
env["redis_server"] = shutil.which("redis-server") is not None
if importlib.util.find_spec("torch"):
    import torch
    env["torch"] = torch.__version__
    env["cuda"] = torch.cuda.is_available()
    env["gpu"] = torch.cuda.get_device_name(0) if env["cuda"] else None
print(json.dumps(env))
EOF

status=0
if [ "$SMOKE" = 1 ]; then
    SCALE_ARGS=(--shapes "" --requests 2 --trace 2 --parity-prompts 2 --device cpu)
else
    SCALE_ARGS=(--shapes qwen2.5-coder-0.5b --requests 4 --trace 6 --parity-prompts 20 --device cuda)
fi
# A home with a starter model saves building the tiny one (its registry gets a version copied and removed).
[ -n "${STARTER_HOME:-}" ] && SCALE_ARGS+=(--starter-home "$STARTER_HOME")
# Run the steps only where they can mean something: nothing missing, and a GPU (or SMOKE=1).
ready='import json,sys; e=json.load(open(sys.argv[1])); sys.exit(bool(e["missing"]) or not (e.get("cuda") or sys.argv[2]=="1"))'
if "$PY" -c "$ready" "$OUT/env.json" "$SMOKE"; then
    "$PY" -m pytest tests/test_gpu.py -m gpu -q -p no:cacheprovider --junitxml "$OUT/gpu-tests.xml" \
        > "$OUT/gpu-tests.log" 2>&1 || status=1
    "$PY" benchmarks/scale.py --work "$OUT/scale" "${SCALE_ARGS[@]}" > "$OUT/scale.json" 2> "$OUT/scale.log" \
        || status=1
else
    status=1
fi

"$PY" - "$OUT" "$status" "$SMOKE" <<'EOF'
import json, sys
import xml.etree.ElementTree as ET
from pathlib import Path
out, status, smoke = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
report = {"ok": status == 0, "smoke": smoke, "out": str(out), "env": json.loads((out / "env.json").read_text())}
if report["env"]["missing"]:
    report["error"] = "missing packages: build wheels with scripts/gpu-wheels.sh and pass WHEELS=DIR"
elif not smoke and not report["env"].get("cuda"):
    report["ok"], report["error"] = False, "torch sees no CUDA GPU, so nothing ran (SMOKE=1 runs the steps on a CPU)"
junit = out / "gpu-tests.xml"
if junit.is_file():
    suite = ET.parse(junit).getroot().find("testsuite")
    cases = suite.findall("testcase") if suite is not None else []
    def outcome(case):
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                return {"outcome": tag, "message": (node.get("message") or "")[:300]}
        return {"outcome": "passed", "seconds": float(case.get("time", 0))}
    report["gpu_tests"] = {c.get("name"): outcome(c) for c in cases}
scale = out / "scale.json"
if scale.is_file() and scale.stat().st_size:
    try:
        report["scale"] = json.loads(scale.read_text())
    except ValueError:
        report["scale_error"] = (out / "scale.log").read_text()[-2000:]
elif (out / "scale.log").is_file():
    report["scale_error"] = (out / "scale.log").read_text()[-2000:]
print(json.dumps(report, indent=2))
sys.exit(0 if report["ok"] else 1)
EOF
