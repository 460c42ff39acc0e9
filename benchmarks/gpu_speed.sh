#!/usr/bin/env bash
# Issue 20 ("speed where users feel it") on one GPU: every check and table in order, each written
# under $OUT as soon as it is done, so a run cut short keeps what finished.
#
#   benchmarks/gpu_speed.sh [STAGE ...]         # default: tests slic b1 prefill merge max
#   DRY_RUN=1 OUT=/tmp/speed PYTHON=.venv/bin/python benchmarks/gpu_speed.sh   # tiny model, CPU
#
# Stages (H200, LLaVA-1.5-7B-336 with random weights, bf16; minutes are estimates to size a lease):
#   tests    GPU tests: graphed static decode == eager pruned decode, fused SLIC == eager SLIC (~2)
#   slic     fused vs eager grid SLIC, op by op and as a CUDA graph, kernels per call  -> slic.md (~1)
#   b1       prompt + NEW_TOKENS greedy tokens at batch 1: no-cache, eager, graphed     -> gcg-batch1.* (~3)
#   prefill  graphed prefill of ALTP and CSP with the fused SLIC at batch 1 and 16 (of ideal,
#            selection share)                                                          -> prefill-fused/ (~2)
#   merge    VisionZip and PruMerge+ prefill as one CUDA graph at batch 1 and 16 (their first
#            capture on a GPU; the tests stage checks replays against eager)   -> prefill-merge/ (~1)
#   max      the largest batch (doubling to MAX_BATCH) of each eager and graphed row  -> gcg-max.* (~5)
# One device command runs at most 10 minutes: run "tests slic b1 prefill merge" (~9 min) in one call and "max"
# in the next. Everything printed also goes to $OUT/log.txt. The tables are written under $WORK (a
# folder outside $OUT) and packed into $OUT/tables.tar after every stage, because at most 8 files
# come back from a device run and the stages write more: $OUT holds only log.txt and tables.tar.
#
# Knobs (environment): PRESET, DTYPE, NEW_TOKENS, REPEATS, MAX_BATCH, METHODS, REDUCTIONS, PYTHON.
set -u -o pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-gpu_speed_out}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT" "$WORK"
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
METHODS=${METHODS:-fastv,pdrop,altp,csp}
REDUCTIONS=${REDUCTIONS:-0.75,0.9}
if [ "${DRY_RUN:-0}" = 1 ]; then
    # The same commands on the tiny random LLaVA on the CPU: checks the script, not a result.
    DEVICE=cpu PRESET=${PRESET:-tiny} DTYPE=${DTYPE:-float32} NEW_TOKENS=${NEW_TOKENS:-8}
    REPEATS=${REPEATS:-1} MAX_BATCH=${MAX_BATCH:-2} GRAPH= SLIC_BATCHES=1 SLIC_REPEATS=5
else
    DEVICE=cuda PRESET=${PRESET:-llava-1.5-7b-336} DTYPE=${DTYPE:-bfloat16} NEW_TOKENS=${NEW_TOKENS:-128}
    REPEATS=${REPEATS:-2} MAX_BATCH=${MAX_BATCH:-64} GRAPH=--graph SLIC_BATCHES=1,16 SLIC_REPEATS=50
fi
STAGES=${*:-tests slic b1 prefill merge max}
LOG="$OUT/log.txt"
COMMON=(--preset "$PRESET" --device "$DEVICE" --dtype "$DTYPE" --reductions "$REDUCTIONS")
GCG=(bench --e2e "${COMMON[@]}" --methods "$METHODS" --new-tokens "$NEW_TOKENS" --repeats "$REPEATS" --warmup 0 --out "$WORK")

say() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }
stage() {  # stage NAME COMMAND...: run, log, and go on to the next stage whatever happens
    local name=$1
    shift
    say "stage $name: $*"
    local start=$SECONDS
    "$@" 2>&1 | tee -a "$LOG"
    say "stage $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
    tar -cf "$OUT/tables.tar.part" -C "$WORK" . && mv "$OUT/tables.tar.part" "$OUT/tables.tar"
}

say "speed run: stages [$STAGES], preset $PRESET on $DEVICE, $DTYPE, $NEW_TOKENS new tokens"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PYTHON" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee -a "$LOG"

for name in $STAGES; do
    case $name in
    tests)
        stage tests "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu \
            tests/patch/test_static_decode.py tests/patch/test_static_decode_qwen.py tests/methods/test_superpixels.py tests/test_graph.py tests/test_bench.py ;;
    slic)
        stage slic "$PYTHON" benchmarks/fused_slic.py --device "$DEVICE" --batches "$SLIC_BATCHES" \
            --repeats "$SLIC_REPEATS" --out "$WORK/slic.md" ;;
    b1)
        stage b1 "$PYTHON" -m segprune.cli "${GCG[@]}" --batches 1 --rows no-cache,eager,graphed ;;
    prefill)
        stage prefill "$PYTHON" -m segprune.cli bench "${COMMON[@]}" --methods altp,csp --batches "$SLIC_BATCHES" $GRAPH \
            --fused-slic --decode-tokens 0 --out "$WORK/prefill-fused" ;;
    merge)
        stage merge "$PYTHON" -m segprune.cli bench "${COMMON[@]}" --methods visionzip,prumerge \
            --batches "$SLIC_BATCHES" $GRAPH --decode-tokens 0 --out "$WORK/prefill-merge" ;;
    max)
        # No no-cache row here: at a large batch it re-runs a whole batched prefill per token (minutes).
        stage max "$PYTHON" -m segprune.cli "${GCG[@]}" --batches max --max-batch "$MAX_BATCH" --rows eager,graphed ;;
    *)
        say "unknown stage $name (valid: tests slic b1 prefill merge max)" ;;
    esac
done
say "done; tables.tar holds: $(cd "$WORK" && find . -type f | sort | tr '\n' ' ')"
