#!/usr/bin/env bash
# GPU checks for a session that is lent a GPU machine: one prepared script, one part per call.
#
#   bash bench/gpu_check.sh engine     # bench_augment.py + bench_engine.py on CUDA (bf16, channels_last)
#   bash bench/gpu_check.sh rotation   # bench/bench_rotation.py --preset gpu
#   bash bench/gpu_check.sh moco       # bench/bench_moco.py --preset gpu
#   bash bench/gpu_check.sh denoising  # bench/bench_denoising.py --preset gpu (one seed)
#   bash bench/gpu_check.sh context_encoder  # bench/bench_context_encoder.py --preset gpu (L2 and joint)
#   bash bench/gpu_check.sh split_brain  # bench/bench_split_brain.py --preset gpu (halves and concatenation)
#   bash bench/gpu_check.sh patch_position  # bench/bench_patch_position.py --preset gpu (3 settings + jigsaw)
#   bash bench/gpu_check.sh cpc        # bench/bench_cpc.py --preset gpu (Tables 1 and 2 on speech, CPC on images)
#   bash bench/gpu_check.sh distributed  # sslcourse pretrain moco --preset gpu: 1 GPU, then torchrun on every GPU
#
# The machine is bare and offline. It has python3 with torch, torchvision, numpy, pillow, matplotlib,
# tqdm, scikit-image and scikit-learn; this script installs the repo itself (no dependencies, no
# network) and falls back to PYTHONPATH if pip cannot.
#
# Real CIFAR-10 travels as a carried file, since ../shared/data does not travel. Before the call,
# on the development machine, in the repo root (bench/_carry/ is ignored by git):
#
#   mkdir -p bench/_carry && cp ../shared/data/cifar10-jpeg.npz bench/_carry/
#
# then call the device tool's `run` with carry=["bench/_carry"], e.g.
#
#   run(command="bash bench/gpu_check.sh engine", carry=["bench/_carry"], timeout_s=600)
#
# Without the file the benchmarks fall back to random images (and say so). Logs go to $OUT when it
# is set (they come back with the call's reply), else to /tmp/sslcourse_gpu_logs/. Each part is cut at
# 9 minutes by `timeout` (PART_LIMIT_S=540), so it ends inside one 10-minute call; the rotation
# and moco benchmarks are also asked to fit their training into BENCH_MINUTES (default 7) so
# they finish and report instead of being cut. A lent session has 15 device minutes in all:
# run the parts it needs, one call each.
set -uo pipefail

PART="${1:-}"
case "$PART" in
  engine|rotation|moco|denoising|context_encoder|split_brain|patch_position|cpc|distributed) ;;
  *) echo "usage: bash bench/gpu_check.sh engine|rotation|moco|denoising|context_encoder|split_brain|patch_position|cpc|distributed (got '${PART}')" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
REPO="$(pwd)"
LOGS="${OUT:-${TMPDIR:-/tmp}/sslcourse_gpu_logs}"
mkdir -p "$LOGS"
LOG="$LOGS/gpu_check_${PART}.log"
NPZ="$REPO/bench/_carry/cifar10-jpeg.npz"
PY="${PYTHON:-python3}"
PART_LIMIT_S="${PART_LIMIT_S:-540}"          # 9 minutes for the whole part
START=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

log() { echo "$@" | tee -a "$LOG"; }
left() { echo $(( PART_LIMIT_S - ($(date +%s) - START) )); }
run_step() {  # run_step NAME COMMAND...: cut at what is left of the part's time
  local name="$1"; shift
  local budget; budget=$(left)
  if [ "$budget" -le 10 ]; then log "== $name: skipped, the part's ${PART_LIMIT_S}s are spent"; return 124; fi
  log "== $name (limit ${budget}s): $*"
  timeout --signal=INT --kill-after=20 "$budget" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  log "== $name: exit $rc after $(( $(date +%s) - START ))s of the part"
  return "$rc"
}

: > "$LOG"
log "gpu_check $PART on $(hostname) at $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG" || true
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import torch, torchvision
print(f"python torch {torch.__version__}, torchvision {torchvision.__version__}, cuda {torch.cuda.is_available()}")
EOF
# The package, offline: no dependencies and no build isolation (which would try to fetch setuptools).
"$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e "$REPO" >>"$LOG" 2>&1 \
  && log "installed sslcourse (editable)" || log "pip install failed; using PYTHONPATH=$REPO"
"$PY" -c "import sslcourse, sslcourse.train, sslcourse.augment; print('sslcourse', sslcourse.__version__)" 2>&1 | tee -a "$LOG" \
  || { log "cannot import sslcourse"; exit 1; }

if [ -f "$NPZ" ]; then DATA=(--data "$NPZ"); log "data: $NPZ";
else DATA=(); log "data: no $NPZ (carry bench/_carry, see the top of this script); random images"; fi

# Options a helper's benchmark understands: --data when it takes one, and a time cap (--minutes) that
# ends it gracefully inside the part's limit.
bench_opts() {  # bench_opts SCRIPT -> fills OPTS
  OPTS=()
  grep -q -- '"--data"' "$1" && [ ${#DATA[@]} -gt 0 ] && OPTS+=("${DATA[@]}")
  grep -q -- '"--minutes"' "$1" && OPTS+=(--minutes "${BENCH_MINUTES:-7}")
  # RECORD_REFERENCE=PATH (e.g. "$OUT/reference_runs.json"): also write the run's reference row for 08_summary
  # there; merge it afterwards with `python -m sslcourse.reference merge PATH`
  [ -n "${RECORD_REFERENCE:-}" ] && grep -q 'add_record_flag(parser)' "$1" && OPTS+=(--record-reference "$RECORD_REFERENCE")
  return 0
}

status=0
case "$PART" in
  engine)
    run_step bench_augment "$PY" bench/bench_augment.py --device cuda "${DATA[@]}" || status=$?
    run_step bench_engine "$PY" bench/bench_engine.py --device cuda --bf16 "${DATA[@]}" || status=$?
    ;;
  distributed)
    # MoCo's gpu recipe under torchrun with --nproc_per_node = the GPUs lent, against one GPU, the same global
    # batches (--shards N on both); bench_distributed.py prints images/s per GPU, the speed-up and the efficiency.
    GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    [ "${GPUS:-0}" -ge 1 ] || { log "no GPU visible (nvidia-smi -L)"; exit 1; }
    if [ -f "$NPZ" ]; then BENCH_DATA=(--data "$NPZ"); else BENCH_DATA=(--data embedded); fi
    run_step bench_distributed "$PY" bench/bench_distributed.py --preset gpu --device cuda --processes "$GPUS" \
      --epochs "${DISTRIBUTED_EPOCHS:-2}" "${BENCH_DATA[@]}" || status=$?
    ;;
  rotation|moco|denoising|context_encoder|split_brain|patch_position|cpc)
    script="bench/bench_${PART}.py"
    if [ ! -f "$script" ]; then log "$script is missing"; exit 1; fi
    bench_opts "$script"
    # the per-epoch probe comes on top of the training cap: a smaller cap keeps the part inside its 9 minutes
    [ "$PART" = denoising ] && OPTS+=(--seeds 1 --minutes "${DENOISING_MINUTES:-5}")
    # two runs (L2 only, joint), each capped: the pair and the probes fit the 9 minutes
    [ "$PART" = context_encoder ] && OPTS+=(--minutes "${CONTEXT_ENCODER_MINUTES:-3}")
    # one run, then six probes (three parts, untrained and trained) of 50k/10k images
    [ "$PART" = split_brain ] && OPTS+=(--minutes "${SPLIT_BRAIN_MINUTES:-5}")
    # four runs (three settings and the jigsaw), each capped, then five probes of 50k/10k images at 64 px
    [ "$PART" = patch_position ] && OPTS+=(--minutes "${PATCH_POSITION_MINUTES:-1.2}")
    # nine trainings (the main run, the supervised reference, six ablations, the images), each capped
    [ "$PART" = cpc ] && OPTS+=(--minutes "${CPC_MINUTES:-0.6}")
    run_step "bench_${PART}" "$PY" "$script" --preset gpu "${OPTS[@]}" || status=$?
    ;;
esac
log "gpu_check $PART: done in $(( $(date +%s) - START ))s, status $status; log at $LOG"
exit "$status"
