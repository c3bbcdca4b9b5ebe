#!/usr/bin/env bash
# The prepared GPU run (issue 25; docs/gpu-run.md): one call of at most 8 minutes on a CUDA machine.
#
#   OUT=<results folder> bench/gpu/run.sh [--dry-run]
#
# Steps, in order, each with its own time budget and all under one deadline (RUN_SECONDS, default 465 s);
# a step that fails or runs out of time is recorded and the next one still runs:
#   build   the extension with its CUDA kernels for sm_90 (TORCH_CUDA_ARCH_LIST=9.0)
#   tests   the CUDA tests (tests/test_cuda.py and every ext-on-CUDA variant: GPU_TESTS) with TF32 off
#   data    synthesize every folder the bench steps read
#   sweep   FGSM/LLCM eps 1..5 at 64, 256 and 512 px vs the torchattacks loop and the skilled 20-line script
#   kernels every extension op vs its PyTorch reference on the GPU (the profile behind the sweep)
#   auto    the bench's `auto` workload when present (bench/gpu: AUTO_WORKLOADS) and `recapfast eval --attack auto`
#   train   one optimizer step: plain, robust exact, robust fd
#   screen  `recapfast screen` of a synthesized folder, probing off and on
#   merge   $OUT/results.json: every step's status, seconds and results
# $OUT gets at most 8 files: results.json, run.log (every step's log, in order), tests.log, build.log.
# --dry-run: the same steps on tiny sizes with --device cpu (tests/test_gpu_script.py runs it on every CI
# run); with RECAPFAST_BACKEND=torch the build step only reports that it was skipped.
# Python packages the GPU machine lacks (torchattacks) travel as wheels in .whl/ (docs/gpu-run.md).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    *) echo "error: bench/gpu/run.sh: unknown argument $arg (only --dry-run)" >&2; exit 1 ;;
  esac
done
if [ -z "${OUT:-}" ]; then
  echo "error: bench/gpu/run.sh: set OUT to the results folder" >&2
  exit 1
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK="${GPU_RUN_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/recapfast-gpu-run.XXXXXX")}"
mkdir -p "$WORK"
DEVICE=cuda
BENCH_ARGS=()
PYTEST_MODE=()
if [ "$DRY" = 1 ]; then
  DEVICE=cpu
  BENCH_ARGS=(--dry-run)
  PYTEST_MODE=(--collect-only)   # the dry run checks the test selection collects; the GPU tests skip on a CPU
fi
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$WORK/torch_extensions}"   # never under $OUT: .so files
export RECAPFAST_BENCH_CACHE="${RECAPFAST_BENCH_CACHE:-$WORK/bench-cache}"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export GPU_RUN_DEVICE="$DEVICE"
export NVIDIA_TF32_OVERRIDE=0          # TF32 off in cuBLAS/cuDNN for every step (the tests also turn it off)
RUN_SECONDS="${RUN_SECONDS:-465}"
DEADLINE=$(( $(date +%s) + RUN_SECONDS ))
# The ext-on-CUDA variants: the CUDA parity tests, every DEVICES=cuda op test, the fast-path kernels on CUDA,
# the no-sync training test. Edit this list when a CUDA test is added elsewhere.
GPU_TESTS=(tests/test_cuda.py "tests/test_ops.py" tests/test_fastpath_kernels_host.py tests/test_train_syncs.py)
GPU_TESTS_K="cuda"

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi

: > "$WORK/steps.jsonl"
log_all() { cat "$1" >> "$OUT/run.log"; }

# step NAME BUDGET_SECONDS COMMAND...: run it with min(budget, time left), log to $WORK/NAME.log, record the outcome.
step() {
  local name=$1 budget=$2
  shift 2
  local left=$(( DEADLINE - $(date +%s) ))
  local limit=$(( budget < left ? budget : left ))
  local status seconds rc start
  start=$(date +%s.%N)
  if [ "$limit" -lt 5 ]; then
    status="skipped: out of time"; rc=-1
    echo "skipped: out of time" > "$WORK/$name.log"
  else
    echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/run.log" >&2
    timeout --kill-after=5 "$limit" "$@" > "$WORK/$name.log" 2>&1
    rc=$?
    if [ "$rc" = 0 ]; then status=ok; elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status="timed out after ${limit}s"; else status="failed (exit $rc)"; fi
  fi
  seconds=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
  printf '{"step": "%s", "status": "%s", "rc": %s, "seconds": %s, "limit": %s}\n' \
    "$name" "$status" "$rc" "$seconds" "$limit" >> "$WORK/steps.jsonl"
  echo "== $name: $status in ${seconds}s" | tee -a "$OUT/run.log" >&2
  log_all "$WORK/$name.log"
}

step env 30 bash -c "nvidia-smi 2>&1 | head -20; \"$PY\" -c 'import torch, sys; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"gpu\", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)'"
step build 240 "$PY" - <<'EOF'
import os, time
from recapfast import ops
from recapfast.ops import _build
if os.environ.get("RECAPFAST_BACKEND", "").strip().lower() == "torch":
    print("build skipped: RECAPFAST_BACKEND=torch (dry run)")
else:
    ops.set_backend("ext")
    t0 = time.perf_counter()
    print("active backend:", ops.active_backend(), "with CUDA:", _build.STATE.with_cuda,
          "arch:", os.environ.get("TORCH_CUDA_ARCH_LIST"), f"in {time.perf_counter() - t0:.1f}s", _build.STATE.name)
    if not _build.STATE.with_cuda and os.environ.get("GPU_RUN_DEVICE") == "cuda":
        raise SystemExit("the extension was built without CUDA kernels")
EOF
cp "$WORK/build.log" "$OUT/build.log"
step tests 150 "$PY" -m pytest -q -p no:cacheprovider "${PYTEST_MODE[@]}" "${GPU_TESTS[@]}" -k "$GPU_TESTS_K" -rs
cp "$WORK/tests.log" "$OUT/tests.log"
for s in data sweep kernels auto train screen; do
  case $s in data) b=90 ;; sweep) b=150 ;; kernels) b=45 ;; auto) b=90 ;; train) b=40 ;; screen) b=60 ;; esac
  step "$s" "$b" "$PY" -m bench.gpu "$s" --work "$WORK" --device "$DEVICE" "${BENCH_ARGS[@]}"
done
"$PY" -m bench.gpu merge --work "$WORK" --out "$OUT" --device "$DEVICE" "${BENCH_ARGS[@]}" >> "$OUT/run.log" 2>&1
echo "== results: $OUT/results.json" >&2
