#!/usr/bin/env bash
# One prepared GPU check of kdkit, sized for about 9 minutes on one H100/H200-class GPU:
#   1. the causal-LM speed table in bf16 (benchmarks/lm_speed.py --device cuda --precision bf16);
#   2. one longer causal-LM distillation from the teacher cache (kdkit cache, then kdkit distill, bf16);
#   3. single-process sharded smoke runs: FSDP2, and DeepSpeed ZeRO-2 when deepspeed is installed.
# Each step has its own time limit; a step that fails or runs out of time is recorded and the next one runs.
# Results go under one folder (default runs/gpu-check): summary.md (one line per step: status, seconds,
# the command), env.txt, and each step's log and results.
#
#   bash benchmarks/gpu/check.sh [--out DIR] [--shrink]
#
# --shrink runs the same steps a few batches long on the CPU (fp32; the sharded step becomes a one-process
# DDP launch, since FSDP and ZeRO need a GPU), to test the script itself: about 5 minutes on an idle 2-core CPU.
# Needs kdkit installed (make install, or pip install -e .), the packaged SmolLM2 asset, and the dolly data
# (KDKIT_DATA_ROOT, default ../shared/data beside the checkout, else the hub). PYTHON picks the interpreter
# (default: .venv/bin/python when there, else python3).
set -uo pipefail
cd "$(dirname "$0")/../.."

OUT=runs/gpu-check
SHRINK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --shrink) SHRINK=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "check.sh: unknown argument '$1' (use --out DIR, --shrink)" >&2; exit 2 ;;
  esac
done
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [ -z "${KDKIT_DATA_ROOT:-}" ] && [ -d ../shared/data ]; then
  KDKIT_DATA_ROOT="$(cd ../shared/data && pwd)"
fi
export KDKIT_DATA_ROOT="${KDKIT_DATA_ROOT:-}" PYTHONUNBUFFERED=1
mkdir -p "$OUT" || { echo "check.sh: cannot create the results folder $OUT" >&2; exit 2; }
OUT="$(cd "$OUT" && pwd)"
RECIPE=configs/dolly_smol20l_from_smol135m_forward_kl.yaml

if [ "$SHRINK" = 1 ]; then
  DEVICE=cpu; PRECISION=no
  SPEED_ARGS=(--steps 2 --warmup 1 --batch-size 2 --max-length 64)
  DISTILL=(train.max_steps=4 train.batch_size=2 data.max_train_samples=8 data.max_eval_samples=4
           eval.max_new_tokens=8 train.save_every=2 student.max_length=64 teacher.max_length=64)
  SMOKE=(train.max_steps=2 train.batch_size=2 data.max_train_samples=4 data.max_eval_samples=2
         eval.rouge=false student.max_length=64 teacher.max_length=64)
  LIMIT_SPEED=600; LIMIT_DISTILL=600; LIMIT_SMOKE=300
else
  DEVICE=cuda; PRECISION=bf16
  SPEED_ARGS=(--steps 20 --warmup 3 --batch-size 16 --max-length 256)
  # dolly dev (1,000 examples) three times over at 16 sequences a step; eval on all 500 valid examples
  DISTILL=(train.max_steps=190 train.batch_size=16 train.save_every=50 data.max_eval_samples=500
           eval.batch_size=64)
  SMOKE=(train.max_steps=10 train.batch_size=8 data.max_train_samples=80 data.max_eval_samples=16
         eval.rouge=false)
  LIMIT_SPEED=180; LIMIT_DISTILL=240; LIMIT_SMOKE=60
fi

SUMMARY="$OUT/summary.md"
{
  echo "# kdkit GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), device $DEVICE, precision $PRECISION, shrink $SHRINK"
  echo
  echo "| step | status | seconds | command |"
  echo "|---|---|---:|---|"
} > "$SUMMARY"

# step NAME LIMIT_S CMD...: run CMD with a time limit, its output in $OUT/NAME.log, one summary line
step() {
  local name="$1" limit="$2"; shift 2
  local start status rc
  echo "== $name (at most ${limit} s): $*"
  start=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="out of time (${limit} s)" ;;
    *) status="failed (exit $rc)" ;;
  esac
  echo "| $name | $status | $(( $(date +%s) - start )) | \`$*\` |" >> "$SUMMARY"
  echo "   $status; log: $OUT/$name.log"
  [ $rc = 0 ] || tail -n 5 "$OUT/$name.log"
}

{
  echo "python: $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
  "$PYTHON" -c 'import torch, transformers, accelerate; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available()); print("transformers", transformers.__version__, "accelerate", accelerate.__version__)'
  "$PYTHON" -c 'import torch; print("gpu:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")'
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  echo "KDKIT_DATA_ROOT=$KDKIT_DATA_ROOT"
} > "$OUT/env.txt" 2>&1
if [ "$DEVICE" = cuda ] && ! "$PYTHON" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  echo "check.sh: no CUDA GPU visible to $PYTHON (see $OUT/env.txt); use --shrink to test on the CPU" >&2
  exit 2
fi

# 1. the causal-LM speed table (TRL's rows only when trl is installed)
ONLY=(--only "SFT (no teacher)" "kdkit live, beta 0" "kdkit cached, beta 0" "kdkit live, beta 0.5" "kdkit cached, beta 0.5")
if "$PYTHON" -c 'import trl' 2> /dev/null; then ONLY=(); fi
[ "$SHRINK" = 1 ] && ONLY=(--only "SFT (no teacher)" "kdkit cached, beta 0")
step lm_speed "$LIMIT_SPEED" "$PYTHON" benchmarks/lm_speed.py --device "$DEVICE" --precision "$PRECISION" \
  "${SPEED_ARGS[@]}" "${ONLY[@]}" --out "$OUT/lm_speed"

# 2. a longer distillation from the teacher cache: the cache is built once, then the student trains from it
RUN="$OUT/distill"
COMMON=("cache.dir=$OUT/teacher-cache" "output_dir=$RUN" "train.mixed_precision=$PRECISION" "eval.teacher=true")
step cache "$LIMIT_DISTILL" "$PYTHON" -m kdkit.cli cache --config "$RECIPE" "${COMMON[@]}" "${DISTILL[@]}"
step distill "$LIMIT_DISTILL" "$PYTHON" -m kdkit.cli distill --config "$RECIPE" --overwrite \
  "${COMMON[@]}" "${DISTILL[@]}"
[ -f "$RUN/metrics.json" ] && cp "$RUN/metrics.json" "$OUT/distill_metrics.json"

# 3. one-process sharded smoke runs (on the CPU: one-process DDP instead; FSDP and ZeRO need a GPU)
SMALL=(configs/dolly_smol10l_from_smol135m_forward_kl.yaml "train.mixed_precision=$PRECISION" "${SMOKE[@]}")
if [ "$DEVICE" = cuda ]; then
  step fsdp "$LIMIT_SMOKE" "$PYTHON" -m accelerate.commands.launch --config_file configs/accelerate/fsdp.yaml \
    --num_processes 1 -m kdkit.cli distill --config "${SMALL[0]}" --overwrite "output_dir=$OUT/fsdp" "${SMALL[@]:1}"
  if "$PYTHON" -c 'import deepspeed' 2> /dev/null; then
    step zero2 "$LIMIT_SMOKE" "$PYTHON" -m accelerate.commands.launch --config_file configs/accelerate/zero2.yaml \
      --num_processes 1 -m kdkit.cli distill --config "${SMALL[0]}" --overwrite "output_dir=$OUT/zero2" "${SMALL[@]:1}"
  else
    echo "| zero2 | skipped: deepspeed is not installed (pip install deepspeed) | 0 | - |" >> "$SUMMARY"
  fi
else
  step ddp "$LIMIT_SMOKE" "$PYTHON" -m torch.distributed.run --nproc_per_node 1 -m kdkit.cli distill \
    --config "${SMALL[0]}" --overwrite "output_dir=$OUT/ddp" "${SMALL[@]:1}"
fi

echo
cat "$SUMMARY"
[ -f "$OUT/lm_speed.log" ] && grep -A20 '^| variant' "$OUT/lm_speed.log"
[ -f "$OUT/distill_metrics.json" ] && echo "distill metrics: $OUT/distill_metrics.json"
! grep -q -E '\| (failed|out of time)' "$SUMMARY"
