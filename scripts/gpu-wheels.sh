#!/usr/bin/env bash
# Wheels for a GPU machine that has no package registry, built on one that has (≤64 MiB in all, what a
# device run carries). The GPU machines lent here have torch, transformers, peft and accelerate; they
# lack trl and llama-cpp-python (and gguf). Anything else scripts/gpu-check.sh reports missing can be
# named in EXTRA (e.g. EXTRA="datasets xxhash dill multiprocess").
#
#   PY_VERSION=3.12 scripts/gpu-wheels.sh          # → ./wheels, for that machine's python
#   WHEELS=/tmp/w EXTRA="rapidfuzz" scripts/gpu-wheels.sh
#
# llama-cpp-python has no wheels on PyPI: this reuses the wheel pip built for this venv (pure ctypes,
# py3-none, so any Python 3 loads it), or builds one with GGML_NATIVE=OFF so it runs on another CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-wheels}
PY=${PYTHON:-.venv/bin/python}
PY_VERSION=${PY_VERSION:-$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
LIMIT_MIB=64
mkdir -p "$WHEELS"

version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }

# Pure-python wheels at the versions this venv runs (no dependencies: the GPU machine has the rest).
"$PY" -m pip download --no-deps --only-binary=:all: --python-version "$PY_VERSION" \
    --platform manylinux2014_x86_64 -d "$WHEELS" "trl==$(version trl)" "gguf==$(version gguf)" ${EXTRA:-}

llama="llama-cpp-python==$(version llama-cpp-python)"
cached=$(find "${PIP_CACHE_DIR:-$HOME/.cache/pip}" -name "llama_cpp_python-$(version llama-cpp-python)-*.whl" 2>/dev/null | head -1)
if [ -n "$cached" ] && [ "${PORTABLE:-0}" != 1 ]; then
    # Built here with GGML_NATIVE: it uses this CPU's instruction set (AVX-512 on the machines seen so
    # far, as on the H100/H200 hosts); PORTABLE=1 builds one for any x86-64 with AVX2 instead.
    cp "$cached" "$WHEELS/"
else
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
        "$PY" -m pip wheel --no-deps -w "$WHEELS" "$llama"
fi

total=$(du -cm "$WHEELS"/*.whl | tail -1 | cut -f1)
ls -la "$WHEELS"
echo "wheels: ${total} MiB in $WHEELS (limit ${LIMIT_MIB} MiB)"
[ "$total" -le "$LIMIT_MIB" ] || { echo "over the ${LIMIT_MIB} MiB a device run carries" >&2; exit 1; }
