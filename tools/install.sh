#!/usr/bin/env bash
# Create .venv with deqkit in editable mode plus test and dev tools.
# torch: keep one the user already has; else a CPU build on a machine without a GPU
# (never a multi-GB CUDA build there); else the default (CUDA) build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=.venv
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
    if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
        echo "install: reusing the torch of $PYTHON ($("$PYTHON" -c 'import torch; print(torch.__version__)'))"
        "$PYTHON" -m venv --system-site-packages "$VENV"
    else
        "$PYTHON" -m venv "$VENV"
    fi
fi
PIP="$VENV/bin/python -m pip"

if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "install: GPU found, installing torch==$TORCH_VERSION (CUDA build)"
        $PIP install "torch==$TORCH_VERSION"
    else
        echo "install: no GPU, installing the CPU build torch==$TORCH_VERSION+cpu"
        # The CPU wheel where pip's configured sources have it (a local wheel found through
        # find-links, a mirror), its dependencies from the package index; else PyTorch's
        # CPU index. Only the "+cpu" build is ever asked for, never the CUDA one.
        $PIP install "torch==$TORCH_VERSION+cpu" \
            || $PIP install "torch==$TORCH_VERSION+cpu" \
                --index-url https://download.pytorch.org/whl/cpu \
                --extra-index-url https://pypi.org/simple
    fi
fi

$PIP install -e ".[test,dev,data]"
touch "$VENV/.installed"
