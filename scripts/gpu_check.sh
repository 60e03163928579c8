#!/usr/bin/env bash
# The CUDA path in one command, for a rented GPU or the self-hosted runner (.github/workflows/gpu.yml):
#   scripts/gpu_check.sh            setup (CUDA stack, vLLM, SGLang env), unit tests, every notebook, a table
# Every notebook runs with its CUDA-sized workloads (common.device.scaled picks them when CUDA is present) into
# .cache/gpu-check/ (the committed notebooks are never rewritten). Safe unattended: no prompts, a time limit
# per step, everything logged under .cache/gpu-check/, exit status non-zero when anything failed or the whole
# run took longer than its budget (default 10 minutes, setup excluded).
# Knobs (environment): GPU_CHECK_BUDGET_S (600), GPU_CHECK_NB_TIMEOUT_S (240 per notebook),
# GPU_CHECK_UNIT_TIMEOUT_S (240), GPU_CHECK_SKIP_SETUP=1 (environment already built), GPU_CHECK_NOTEBOOKS
# (space-separated subset of notebook paths).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_check.sh: nvidia-smi not found. This check needs a machine with an NVIDIA GPU and its driver;" >&2
  echo "on a CPU machine run 'make test' instead." >&2
  exit 2
fi
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check.sh: nvidia-smi is installed but sees no GPU (driver not loaded?). Output:" >&2
  nvidia-smi -L >&2 || true
  exit 2
fi

BUDGET_S=${GPU_CHECK_BUDGET_S:-600}
NB_TIMEOUT_S=${GPU_CHECK_NB_TIMEOUT_S:-240}
UNIT_TIMEOUT_S=${GPU_CHECK_UNIT_TIMEOUT_S:-240}
OUT=.cache/gpu-check
PY=.venv/bin/python
mkdir -p "$OUT"
rm -f "$OUT"/*.ipynb "$OUT"/*.log "$OUT/summary.tsv"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/[gpu_check] GPU: /'
if [ "${GPU_CHECK_SKIP_SETUP:-0}" != 1 ]; then
  make setup </dev/null
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check.sh: torch in .venv cannot see CUDA (CPU wheel installed?). Rebuild: rm -rf .venv && make setup" >&2
  exit 2
fi
"$PY" -m common.doctor > "$OUT/doctor.log" 2>&1 || true

declare -a NAMES STATUSES SECONDS_TAKEN
FAILED=0
START=$(date +%s)

# run_step NAME TIMEOUT LOG CMD...: run with a time limit (SIGTERM, then SIGKILL 30 s later), record the row
run_step() {
  local name=$1 limit=$2 log=$3; shift 3
  local t0 t1 rc=0 status
  t0=$(date +%s)
  timeout --kill-after=30 "$limit" "$@" </dev/null >"$log" 2>&1 || rc=$?
  t1=$(date +%s)
  case $rc in
    0) status=ok ;;
    124|137) status="TIMEOUT(${limit}s)" ;;
    *) status="FAILED(rc=$rc)" ;;
  esac
  [ "$rc" -eq 0 ] || FAILED=1
  NAMES+=("$name"); STATUSES+=("$status"); SECONDS_TAKEN+=($((t1 - t0)))
  printf '%s\t%s\t%s\n' "$name" "$status" "$((t1 - t0))" >> "$OUT/summary.tsv"
  echo "[gpu_check] $name: $status in $((t1 - t0)) s"
  if [ "$rc" -ne 0 ]; then tail -n 20 "$log" | sed 's/^/    /'; fi
}

# unit tests (the committed-notebook audit is CPU-specific: its wall-time and load checks read CPU runs)
run_step "unit tests" "$UNIT_TIMEOUT_S" "$OUT/unit-tests.log" \
  "$PY" -m pytest tests -q -x -p no:cacheprovider --ignore=tests/test_notebooks.py

if [ -n "${GPU_CHECK_NOTEBOOKS:-}" ]; then
  read -r -a NOTEBOOKS <<< "$GPU_CHECK_NOTEBOOKS"
else
  mapfile -t NOTEBOOKS < <(find chapters -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*' | sort)
fi
for nb in "${NOTEBOOKS[@]}"; do
  base=$(basename "$(dirname "$nb")")__$(basename "$nb" .ipynb)
  run_step "$nb" "$NB_TIMEOUT_S" "$OUT/$base.log" \
    "$PY" -m jupyter nbconvert --to notebook --execute --output-dir "$OUT" --output "$base" \
    --ExecutePreprocessor.timeout="$NB_TIMEOUT_S" --ExecutePreprocessor.kernel_name=llm-labs "$nb"
  # a notebook killed mid-run cannot stop the servers it started in their own sessions: name them
  if nvidia-smi --query-compute-apps=pid,process_name --format=csv,noheader | grep -q .; then
    echo "[gpu_check] still on the GPU after $nb:"; nvidia-smi --query-compute-apps=pid,process_name,used_memory \
      --format=csv,noheader | sed 's/^/    /'
  fi
done

TOTAL=$(( $(date +%s) - START ))
echo
printf '%-60s %-16s %8s\n' "notebook / step" "status" "seconds"
printf '%-60s %-16s %8s\n' "---------------" "------" "-------"
for i in "${!NAMES[@]}"; do
  printf '%-60s %-16s %8s\n' "${NAMES[$i]}" "${STATUSES[$i]}" "${SECONDS_TAKEN[$i]}"
done
printf '%-60s %-16s %8s\n' "total (setup excluded)" "$([ "$TOTAL" -le "$BUDGET_S" ] && echo ok || echo OVER-BUDGET)" "$TOTAL"
echo "logs and executed notebooks: $OUT/ (table: $OUT/summary.tsv)"
if [ "$TOTAL" -gt "$BUDGET_S" ]; then
  echo "gpu_check.sh: the run took ${TOTAL} s, over the ${BUDGET_S} s budget" >&2
  FAILED=1
fi
exit "$FAILED"
