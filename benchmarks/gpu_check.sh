#!/usr/bin/env bash
# zsteer's first minutes on a CUDA machine: one prepared script, each step timed out, results as it goes.
#
#   benchmarks/gpu_check.sh [--out DIR] [--venv DIR] [--python PY] [--torch-spec SPEC] [--torch-index URL]
#                           [--skip-install] [--rows N] [--dry-run] [-h|--help]
#
# On a fresh CUDA machine with only the repo it:
#   1. install  a venv (--venv, default .venv-gpu) with CUDA torch 2.13 and the gpu,triton,test extras
#   2. cuda     says which GPU, CUDA and driver torch sees (fails if none)
#   3. kernels  the Triton kernel checks compiled and run on the GPU against the torch references, no
#               interpreter (ZSTEER_REQUIRE_CUDA=1 makes a skip an error)
#   4. jobs     one small job with --impl triton and one with --impl torch, compared row by row
#               (benchmarks/compare_jobs.py)
#   5. bench    zsteer bench --quick on CUDA: torch eager, torch compiled, onnxruntime-gpu (IO binding)
# Everything goes under --out (default gpu-check-<UTC time>): one log per step, the job folders, the
# bench report (bench.json, bench.csv, bench.md) and summary.txt. It stops at the first broken step and
# prints the end of its log. Each step runs under `timeout`; the timeouts add up to under 8 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="gpu-check-$(date -u +%Y%m%dT%H%M%SZ)"
VENV=.venv-gpu
PY=${PYTHON:-python3}
TORCH_SPEC="torch==2.13.*"  # PyPI's Linux wheels of torch are the CUDA builds
TORCH_INDEX=""               # e.g. https://download.pytorch.org/whl/cu128 for another CUDA version
SKIP_INSTALL=0
ROWS=2048
DRY_RUN=0
# Seconds per step (sum 465 < 480).
T_INSTALL=240 T_CUDA=20 T_KERNELS=60 T_JOBS=45 T_BENCH=100

usage() { sed -n '4,5p' "$0" | sed 's/^# \{0,1\}//'; }
die_usage() { echo "gpu_check.sh: error: $1" >&2; usage >&2; exit 2; }
need_value() { [[ $# -ge 2 && -n $2 && $2 != --* ]] || die_usage "$1 needs a value"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) need_value "$@"; OUT=$2; shift 2 ;;
    --venv) need_value "$@"; VENV=$2; shift 2 ;;
    --python) need_value "$@"; PY=$2; shift 2 ;;
    --torch-spec) need_value "$@"; TORCH_SPEC=$2; shift 2 ;;
    --torch-index) need_value "$@"; TORCH_INDEX=$2; shift 2 ;;
    --rows) need_value "$@"; [[ $2 =~ ^[1-9][0-9]*$ ]] || die_usage "--rows takes a positive integer, got '$2'"
      ROWS=$2; shift 2 ;;
    --skip-install) SKIP_INSTALL=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die_usage "unknown argument '$1'" ;;
  esac
done

BIN="$VENV/bin"
INDEX_ARGS=""
[[ -n $TORCH_INDEX ]] && INDEX_ARGS="--index-url $TORCH_INDEX"
O=$(printf %q "$OUT")  # the folder as one shell word inside the step commands
BIN=$(printf %q "$BIN")

# name|timeout|command (one shell line each; run with bash -c so that && and env work)
STEPS=()
if [[ $SKIP_INSTALL == 0 ]]; then
  STEPS+=("install|$T_INSTALL|$(printf %q "$PY") -m venv $(printf %q "$VENV") && $BIN/pip install -q --upgrade pip && $BIN/pip install -q '$TORCH_SPEC' $INDEX_ARGS && $BIN/pip install -q -e '.[gpu,triton,test]'")
fi
STEPS+=(
  "cuda|$T_CUDA|$BIN/python -c 'import torch; assert torch.cuda.is_available(), \"torch sees no CUDA device\"; print(torch.__version__, \"CUDA\", torch.version.cuda, torch.cuda.get_device_name(), \"capability\", torch.cuda.get_device_capability())' && { nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo 'no nvidia-smi'; }"
  "kernels|$T_KERNELS|env -u TRITON_INTERPRET ZSTEER_REQUIRE_CUDA=1 $BIN/python -m pytest tests/kernels/triton_checks.py tests/kernels/triton_compile_checks.py -q -p no:cacheprovider"
  "jobs|$T_JOBS|$BIN/zsteer sample --n $ROWS --seed 0 --out $O/manifest.parquet && for impl in triton torch; do $BIN/zsteer edit -m $O/manifest.parquet --target Smiling --steps 10 --device cuda --impl \$impl --images png --out $O/job-\$impl || exit 1; done && $BIN/python benchmarks/compare_jobs.py $O/job-triton $O/job-torch"
  "bench|$T_BENCH|$BIN/zsteer bench --quick --device cuda --backend torch,torch-compiled,onnxruntime --batch-size 128 --steps 10 --json $O/bench.json --csv $O/bench.csv --markdown $O/bench.md"
)

if [[ $DRY_RUN == 1 ]]; then
  echo "gpu_check.sh: dry run; would write everything under $OUT"
  total=0
  for i in "${!STEPS[@]}"; do
    IFS='|' read -r name limit cmd <<<"${STEPS[$i]}"
    total=$((total + limit))
    printf '%d. %-8s (timeout %3d s): %s\n' "$((i + 1))" "$name" "$limit" "$cmd"
  done
  echo "total timeout: $total s"
  exit 0
fi

mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
start_all=$SECONDS
for i in "${!STEPS[@]}"; do
  IFS='|' read -r name limit cmd <<<"${STEPS[$i]}"
  log="$OUT/$((i + 1))-$name.log"
  printf '[%d/%d] %-8s ... ' "$((i + 1))" "${#STEPS[@]}" "$name"
  echo "\$ $cmd" >"$log"
  t0=$SECONDS
  rc=0
  timeout --kill-after=10 "$limit" bash -c "$cmd" >>"$log" 2>&1 || rc=$?
  took=$((SECONDS - t0))
  if [[ $rc == 0 ]]; then
    line="ok ($took s)"
    echo "$line" && echo "$name: $line" >>"$SUMMARY"
    [[ $name == jobs || $name == cuda ]] && tail -n 4 "$log" | sed 's/^/    /'
  else
    [[ $rc == 124 || $rc == 137 ]] && why="timed out after $limit s" || why="exit $rc after $took s"
    echo "FAILED ($why)"
    echo "$name: FAILED ($why)" >>"$SUMMARY"
    echo "---- last 40 lines of $log ----"
    tail -n 40 "$log"
    exit 1
  fi
done
[[ -f $OUT/bench.md ]] && cat "$OUT/bench.md"
echo "gpu_check.sh: every step passed in $((SECONDS - start_all)) s; results in $OUT"
