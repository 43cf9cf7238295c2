#!/usr/bin/env bash
# Install what is missing, and nothing else: system packages, the venv, torch, editloop.
# Safe to re-run; `make` calls it whenever pyproject.toml or this script changes.
set -euo pipefail
cd "$(dirname "$0")/.."

# `--test-tools` (what `make test` adds): only the programs the end-to-end tests drive, so `make run`
# never installs a browser or an editor.
test_tools=0
[ "${1:-}" = "--test-tools" ] && test_tools=1

installed() {
    command -v dpkg-query >/dev/null 2>&1 || return 0  # not Debian: nothing to ask apt for
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"
}

missing=()
if ((test_tools)); then
    # headless Chromium: the dashboard's screenshot test; Emacs with eglot and lsp-mode: README's
    # Emacs snippets run for real (tests/test_editors_emacs.py)
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v emacs >/dev/null 2>&1 || missing+=(emacs-nox)
    installed elpa-eglot || missing+=(elpa-eglot)
    installed elpa-lsp-mode || missing+=(elpa-lsp-mode)
else
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    command -v bwrap >/dev/null 2>&1 || missing+=(bubblewrap)
fi
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "installing ${missing[*]} with apt-get"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
((test_tools)) && exit 0

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "editloop needs Python >= 3.11; set PYTHON=/path/to/python3.11" >&2
    exit 1
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip wheel

# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
if ! .venv/bin/python -c 'import torch' >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        .venv/bin/pip install -q "${TORCH_SPEC:-torch}"
    else
        .venv/bin/pip install -q "${TORCH_SPEC:-torch==2.13.0}"
    fi
fi

# llama-cpp-python compiles llama.cpp from source here (no wheel): use every core.
CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" .venv/bin/pip install -q -e ".[dev]"

# Real editor-side clients for the end-to-end tests (tabby-agent), when Node.js is present.
if command -v npm >/dev/null 2>&1; then
    npm install --prefix tests/clients --no-audit --no-fund --loglevel=error >/dev/null
fi
