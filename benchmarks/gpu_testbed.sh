#!/usr/bin/env bash
# Issue 15 (a test-bed model strong enough to show what pruning does to masks) in one GPU command:
# train the tiny model in two recipes side by side on the same GPU, then score both on the fixed
# split the sweeps use, writing each result under $OUT as soon as it is done.
#
#   benchmarks/gpu_testbed.sh                                                      # on the GPU
#   DRY_RUN=1 OUT=/tmp/testbed PYTHON=.venv/bin/python benchmarks/gpu_testbed.sh   # 50 steps, CPU
#
# Recipes (ARMS; both from a fresh init at the bundled model's dims, batch 32, lr 1e-3, cosine over
# TRAIN_MIN minutes of training with `--schedule time`, 7 data-loader workers each):
#   all     the current recipe: SAM learns from the [SEG] masks and its point task
#   points  `--sam-from points`: SAM learns from its point task only, and the [SEG] loss reaches the
#           LLM through a SAM it does not change, so the mask decoder cannot find targets from the
#           query's words alone (the CPU runs' failure: as good with no image token as with 576)
# Then, per recipe, each under a time limit (minutes are estimates on an H200):
#   refseg   1,000 fixed queries, gIoU by type with all image tokens and with none (~0.5)
#   gcg      `segprune eval --task gcg` on shapes:2024:300 (300 scenes): AP50, mIoU, recall (~1)
#   sweep    `segprune sweep` at the papers' 90% for FastV, PDrop, ALTP and CSP, refseg (~2)
# One device command runs at most 10 minutes: TRAIN_MIN=5 leaves about 4 for scoring. $OUT gets
# log.txt, one <recipe>.tar.gz per recipe (model in fp16, log.jsonl with the learning curve, the
# scores) packed again after each step, and summary.md; the checkpoints (about 25 MB each, over a
# device run's 16 MB per file) stay behind. A machine without pycocotools (needed by the GCG and
# sweep scores) can take wheels from WHEELS=DIR (pip install --no-index into $WORK/site).
#
# Knobs (environment): ARMS, TRAIN_MIN, BATCH, LR, WORKERS, DIMS, N_REFSEG, DATA, DEADLINE, PYTHON,
# WORK, WHEELS.
set -u -o pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-gpu_testbed_out}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT" "$WORK"
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
ARMS=${ARMS:-all points}
DIMS=${DIMS:-{\}}
if [ "${DRY_RUN:-0}" = 1 ]; then
    # The same commands on the CPU: 50 steps (or 1.5 minutes), small scores. Checks the script only.
    DEVICE=cpu TRAIN=(--steps 50 --schedule time --time-limit 1.5 --threads 1) BATCH=${BATCH:-2} WORKERS=${WORKERS:-0}
    N_REFSEG=${N_REFSEG:-8} DATA=${DATA:-shapes:2024:4} EVAL_BATCH=4 VAL=(--val-every 25 --val-size 4)
    LIMIT=${LIMIT:-600}
else
    TRAIN_MIN=${TRAIN_MIN:-5}
    DEVICE=cuda TRAIN=(--steps 1000000 --schedule time --time-limit "$TRAIN_MIN" --threads 1)
    BATCH=${BATCH:-32}
    WORKERS=${WORKERS:-7} N_REFSEG=${N_REFSEG:-1000} DATA=${DATA:-shapes:2024:300} EVAL_BATCH=32
    VAL=(--val-every 500 --val-size 64) LIMIT=${LIMIT:-150}
fi
LR=${LR:-1e-3}
DEADLINE=${DEADLINE:-570}  # seconds from the start: the scoring steps stop by then (a command gets 600)
LOG="$OUT/log.txt"

say() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }
pack() {  # pack ARM: its model, learning curve and scores into $OUT/ARM.tar.gz (replaced atomically)
    tar -czf "$OUT/$1.part" -C "$WORK" --exclude=checkpoint.pt --exclude='*.tmp' --exclude=.lock "$1" \
        && mv "$OUT/$1.part" "$OUT/$1.tar.gz"
}
step() {  # step ARM NAME SECONDS COMMAND...: run under a time limit, log, pack, go on whatever happens
    local arm=$1 name=$2 limit=$3
    shift 3
    local left=$((DEADLINE - SECONDS))  # never past the whole run's deadline
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 10 ]; then
        say "$arm $name: skipped, ${left} s left before the ${DEADLINE} s deadline"
        return
    fi
    say "$arm $name (at most $limit s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" >>"$WORK/$arm/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$WORK/$arm/$name.log" >>"$LOG"
    say "$arm $name: exit $rc after $((SECONDS - start)) s"
    pack "$arm"
}

say "test-bed run: recipes [$ARMS] on $DEVICE, batch $BATCH, lr $LR, dims $DIMS"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  nproc
  "$PYTHON" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee -a "$LOG"
if [ -n "${WHEELS:-}" ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" \
        "$WHEELS"/*.whl 2>&1 | tee -a "$LOG"
    export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi

# Train every recipe at once (the tiny model leaves the GPU mostly idle; data comes from CPU workers).
pids=()
for arm in $ARMS; do
    mkdir -p "$WORK/$arm"
    case $arm in
    all) RECIPE=() ;;
    points) RECIPE=(--sam-from points) ;;
    *) say "unknown recipe $arm (valid: all points)"; continue ;;
    esac
    say "$arm train: started"
    "$PYTHON" -m segprune.cli train-tiny --out "$WORK/$arm/run" --device "$DEVICE" "${TRAIN[@]}" \
        --batch-size "$BATCH" --lr "$LR" --warmup 100 --workers "$WORKERS" --dims "$DIMS" \
        "${VAL[@]}" --checkpoint-every 500 --log-every 10 "${RECIPE[@]}" >"$WORK/$arm/train.log" 2>&1 &
    pids+=("$!")
done
for pid in "${pids[@]}"; do wait "$pid"; done
for arm in $ARMS; do
    tail -n 30 "$WORK/$arm/train.log" | tr '\r' '\n' | grep -v "it/s\]$" | tail -n 12 >>"$LOG"
    say "$arm train: model $(ls "$WORK/$arm/run/model" 2>/dev/null | tr '\n' ' ')"
    pack "$arm"
done

for arm in $ARMS; do
    model="$WORK/$arm/run/model"
    [ -f "$model/config.json" ] || { say "$arm: no model to score"; continue; }
    step "$arm" refseg "$LIMIT" "$PYTHON" -m segprune.train.evaluate "$model" "$N_REFSEG" --device "$DEVICE" \
        --out "$WORK/$arm/refseg.json"
    step "$arm" gcg "$LIMIT" "$PYTHON" -m segprune.cli eval --model "$model" --data "$DATA" --task gcg \
        --device "$DEVICE" --batch-size "$EVAL_BATCH" --quiet --out "$WORK/$arm/gcg"
done
for arm in $ARMS; do
    model="$WORK/$arm/run/model"
    [ -f "$model/config.json" ] || continue
    step "$arm" sweep "$((2 * LIMIT))" "$PYTHON" -m segprune.cli sweep --model "$model" --data "$DATA" \
        --tasks refseg --methods fastv,pdrop,altp,csp --reductions 0.9 --device "$DEVICE" \
        --batch-size "$EVAL_BATCH" --quiet --out "$WORK/$arm/sweep"
done

{
    echo "# Test-bed run, $(date -u +%Y-%m-%d), recipes: $ARMS"
    for arm in $ARMS; do
        echo
        echo "## $arm"
        echo
        "$PYTHON" - "$WORK/$arm/run/log.jsonl" <<'PY' 2>&1
import json, sys
try:
    records = [json.loads(line) for line in open(sys.argv[1])]
except (OSError, ValueError) as err:
    sys.exit(f"no learning curve: {err}")
losses = [r for r in records if "total" in r]
scores = [r for r in records if "val_giou" in r]
if losses:
    first, last = losses[0], losses[-1]
    print(f"Loss {first['total']:.3f} at step {first['step']} -> {last['total']:.3f} at step {last['step']}"
          f" ({last.get('minutes', '?')} min).")
for r in scores:
    print(f"- step {r['step']}: val gIoU {r['val_giou']:.4f}, with no image token {r['val_giou_blind']:.4f}")
PY
        echo
        echo '```json'
        cat "$WORK/$arm/refseg.json" 2>/dev/null || echo "no refseg scores"
        echo '```'
        echo
        echo "GCG: $(cat "$WORK/$arm/gcg/summary.json" 2>/dev/null | tr -d '\n' | cut -c1-600)"
        echo
        cat "$WORK/$arm/sweep/table.md" 2>/dev/null || echo "no sweep table"
    done
} >"$OUT/summary.md"
say "done; $(cd "$OUT" && ls | tr '\n' ' ')"
