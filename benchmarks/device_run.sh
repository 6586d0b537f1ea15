#!/usr/bin/env bash
# The GPU benchmarks in one call of the device tool (see benchmarks/device_prepare.py, which
# writes the .device/ this carries, and RESULTS.md §1 and §2b, which record what it printed):
#
#   run(carry=[".device"], timeout_s=600, command="bash benchmarks/device_run.sh")
#
# In the order the developers' guide asks for: the inference benchmark at 360x480 and
# 1024x2048 under Keras on JAX (the per-image predict loop, the pipeline's handler, the model's
# raw on-device rate, and the handler with the keras CRF fused after the model), then the two
# CRF backends side by side. Each part has its own time limit, so that one that overruns
# leaves the others their turn; each writes its log and JSON record to $OUT.
#
# On an H200 (2026-12-04) each inference variant took 35-40 s (its own process: Python, JAX
# and Keras start, compiles), so an inference part needs about 4 minutes, more than its
# limit below: that run lost its raw and fused rows to the limits and ran them alone after.
# CRF_BATCH (default 8) is how many images of one size the crf part's keras backend refines
# together, one lattice for the batch (the first GPU figures were one image at a time). The
# phases part times each compiled step of the keras CRF (benchmarks/crf_phases.py), alone and
# in batches: where the time goes on the GPU, which no run has measured yet.
# The prep part times the handler's host-side batch preparation (benchmarks/preprocess.py) on
# the GPU machine's own CPU: seconds, no GPU.
# PARTS chooses the parts (default "360 prep large crf phases"), e.g. PARTS="360 prep crf" in
# one call and PARTS="large phases" in the next, with limits raised through LIMIT_360,
# LIMIT_PREP, LIMIT_LARGE, LIMIT_CRF and LIMIT_PHASES.
#
# Here, for a dry run on the CPU at small sizes:
#   OUT=/tmp/out PYTHON=.venv/bin/python SKIP_INSTALL=1 LARGE=128x256 PER_CELL=1 \
#     SEGBEAM_CAMVID=.device/camvid bash benchmarks/device_run.sh
set -u
OUT=${OUT:-/tmp/device-out}
PYTHON=${PYTHON:-python3}
LARGE=${LARGE:-1024x2048}
PER_CELL=${PER_CELL:-2}
CRF_BATCH=${CRF_BATCH:-8}
PARTS=" ${PARTS:-360 prep large crf phases} "
mkdir -p "$OUT"
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} KERAS_BACKEND=jax PYTHONUNBUFFERED=1
export SEGBEAM_CAMVID=${SEGBEAM_CAMVID:-.device/camvid}
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }

part() {  # part NAME SECONDS COMMAND...: runs COMMAND under a limit, its log in $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  stamp "$name (limit ${limit}s): $*"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local status=$?
  tail -n 25 "$OUT/$name.log"
  stamp "$name ended with status $status"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem \
    --format=csv 2>/dev/null || echo "no nvidia-smi"
  nproc
  "$PYTHON" --version
} >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
if [ -z "${SKIP_INSTALL:-}" ]; then
  stamp install
  bash .device/install.sh >/tmp/install.log 2>&1 || { cp /tmp/install.log "$OUT"; tail -n 30 \
    /tmp/install.log; exit 1; }
  tail -n 2 /tmp/install.log
fi
"$PYTHON" -c "import jax, keras, numpy; print('jax', jax.__version__, jax.devices(), \
'keras', keras.__version__, 'numpy', numpy.__version__)" | tee -a "$OUT/machine.txt"

MODEL=.device/unet.keras
if [[ $PARTS == *" 360 "* ]]; then
  part inference-360x480 "${LIMIT_360:-150}" "$PYTHON" -m benchmarks.inference \
    --model "$MODEL" --input_size 360x480 --images 64 --batch_sizes 16 --fused_crf \
    --output "$OUT/inference-360x480.json"
fi
if [[ $PARTS == *" large "* ]]; then
  part "inference-$LARGE" "${LIMIT_LARGE:-170}" "$PYTHON" -m benchmarks.inference \
    --model "$MODEL" --input_size "$LARGE" --images 16 --batch_sizes 4 --fused_crf \
    --output "$OUT/inference-$LARGE.json"
fi
if [[ $PARTS == *" prep "* ]]; then  # the handler's host work before the model, on this host
  part preprocess "${LIMIT_PREP:-60}" bash -c "\"$PYTHON\" -m benchmarks.preprocess \
    --output \"$OUT/preprocess.json\" && \"$PYTHON\" -m benchmarks.preprocess \
    --input_size \"$LARGE\" --batch 4 --output \"$OUT/preprocess-$LARGE.json\""
fi
if [[ $PARTS == *" crf "* ]]; then
  part crf-backends "${LIMIT_CRF:-190}" "$PYTHON" -m benchmarks.crf --part backends \
    --model "$MODEL" --per_cell "$PER_CELL" --many_sizes 6 --crf_batch "$CRF_BATCH" \
    --output "$OUT/crf-backends.json"
fi
if [[ $PARTS == *" phases "* ]]; then
  part crf-phases-360x480 "${LIMIT_PHASES:-150}" "$PYTHON" -m benchmarks.crf_phases \
    --sizes 360x480x11 --batches 1 4 16 --output "$OUT/crf-phases-360x480.json"
  part "crf-phases-$LARGE" "${LIMIT_PHASES:-150}" "$PYTHON" -m benchmarks.crf_phases \
    --sizes "${LARGE}x19" --batches 1 4 --output "$OUT/crf-phases-$LARGE.json"
fi
stamp done
