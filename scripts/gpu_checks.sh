#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go and in under 10 minutes:  bash scripts/gpu_checks.sh
#
#   1. pytest -m gpu: the precision tests on CUDA (bf16-mixed, and 16-mixed with Lightning's loss scaler:
#      meta-gradient cosine to fp32, no NaN, no skipped step) and, when two GPUs exist, one- against
#      two-process NCCL parity (tests/test_distributed.py);
#   2. benchmarks/throughput.py --accelerator gpu --precision bf16-mixed for Conv-4 and ResNet-12, eager
#      (MAML, ProtoNet) and with --compile (ProtoNet), with the achieved FLOP/s against the card's dense
#      BF16 peak (benchmarks/gpu_peak.py: H100, H200, A100; left out for other cards).
#
# What it prints also goes to benchmarks/results/gpu_checks_<date>.md. Without a CUDA GPU it prints
# "no CUDA GPU: skipped" and exits 0. Real MedMNIST files are used when $METACLINIC_DATA_DIR/medmnist (or
# ./data/medmnist) has them, generated ones otherwise. PYTHON=... chooses the interpreter (default: the
# .venv of scripts/setup.sh); GPU_CHECKS_BUDGET_S the time budget (default 570 s). Exit status: 0 when every
# step passed, 1 otherwise (the file says which).
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=$(command -v python3 || true)
NO_ENVIRONMENT="gpu_checks: no Python with metaclinic's dependencies (bash scripts/setup.sh, or PYTHON=...)"
CUDA=1
[ -n "$PYTHON" ] && { "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)" 2>/dev/null
    CUDA=$?; }
if [ "$CUDA" -eq 3 ]; then
    echo "no CUDA GPU: skipped"
    exit 0
elif [ "$CUDA" -ne 0 ]; then
    echo "$NO_ENVIRONMENT" >&2
    exit 2
fi
if ! "$PYTHON" -c "import lightning, learn2learn, metaclinic"; then
    echo "$NO_ENVIRONMENT" >&2
    exit 2
fi

START=$(date +%s)
BUDGET_S=${GPU_CHECKS_BUDGET_S:-570}
mkdir -p benchmarks/results
OUT=benchmarks/results/gpu_checks_$(date +%Y-%m-%d).md
FAILED=0
SUMMARY=""
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} WANDB_MODE=offline PYTHONUNBUFFERED=1

DATA_ROOT=${METACLINIC_DATA_DIR:-data}/medmnist
if [ -f "$DATA_ROOT/organamnist.npz" ] && [ -f "$DATA_ROOT/bloodmnist.npz" ]; then
    DATA=(--root "$DATA_ROOT")
    DATA_TEXT="real MedMNIST ($DATA_ROOT)"
else
    DATA=(--synthetic)
    DATA_TEXT="generated MedMNIST look-alikes (no real files found in $DATA_ROOT)"
fi
PEAK=$("$PYTHON" -m benchmarks.gpu_peak)
PEAK_ARGS=()
[ -n "$PEAK" ] && PEAK_ARGS=(--peak_tflops "$PEAK")

{
    echo "# GPU checks, $(date '+%Y-%m-%d %H:%M %Z')"
    echo
    echo "Commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with changes)')."
    "$PYTHON" -c "import torch; print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, ' + ', '.join(f'GPU {i}: {torch.cuda.get_device_name(i)}' for i in range(torch.cuda.device_count())) + '.')"
    echo "Peak dense BF16: ${PEAK:-not listed for this card} TFLOP/s. Data: $DATA_TEXT. Budget: ${BUDGET_S} s."
} | tee "$OUT"

# step <title> <limit in seconds> <command...>: runs it with what is left of the budget, at most its limit.
step() {
    local title=$1 limit=$2
    shift 2
    local left=$((BUDGET_S - ($(date +%s) - START)))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 20 ]; then
        printf '\n## %s\n\nnot run: the time budget is spent\n' "$title" | tee -a "$OUT"
        SUMMARY+="| $title | not run (budget) | 0 |"$'\n'
        FAILED=1
        return
    fi
    printf '\n## %s\n\n```\n$ %s\n' "$title" "$*" | tee -a "$OUT"
    local began=$(date +%s)
    timeout --signal=TERM --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$OUT"
    local status=${PIPESTATUS[0]} took=$(($(date +%s) - began))
    printf '```\n' | tee -a "$OUT"
    local result="passed"
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        result="stopped after ${limit} s"
        FAILED=1
    elif [ "$status" -ne 0 ]; then
        result="failed (exit $status)"
        FAILED=1
    fi
    SUMMARY+="| $title | $result | $took |"$'\n'
}

GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
NCCL_NOTE="with NCCL parity"
[ "$GPUS" -lt 2 ] && NCCL_NOTE="NCCL parity skipped: one GPU"
step "pytest -m gpu ($NCCL_NOTE)" 200 \
    "$PYTHON" -m pytest -m gpu tests/test_precision.py tests/test_distributed.py -q -rsP -p no:cacheprovider

THROUGHPUT=("$PYTHON" -m benchmarks.throughput --accelerator gpu --precision bf16-mixed --repeats 1
    "${DATA[@]}" ${PEAK_ARGS[@]+"${PEAK_ARGS[@]}"})
for backbone in conv4 resnet12; do
    step "throughput, $backbone, eager" 110 "${THROUGHPUT[@]}" --backbone "$backbone" --algorithms maml protonet
    step "throughput, $backbone, --compile" 80 "${THROUGHPUT[@]}" --backbone "$backbone" --algorithms protonet \
        --compile
done

{
    printf '\n## Summary (%s s in all)\n\n| step | result | seconds |\n| --- | --- | --- |\n' "$(($(date +%s) - START))"
    printf '%s' "$SUMMARY"
    echo
    echo "Written to $OUT."
} | tee -a "$OUT"
exit "$FAILED"
