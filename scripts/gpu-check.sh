#!/usr/bin/env bash
# The GPU check, for a machine with NVIDIA GPUs (driver only) and no network, in the folder
# scripts/gpu-bundle.sh made (udit.gz, fixtures/, latents/). Prints one table; exits non-zero
# when a fixture parity check fails or the loss does not go down. Sized for under 8 minutes
# on one H100.
#   ./gpu-check.sh
# Narrowed (e.g. a trial run on a CPU build): PRECISIONS="f32 bf16" MODELS="U-DiT-S"
# BATCHES="32" TRAIN_STEPS=20 TRAIN_BATCH=8 TRAIN_PRECISION=f32 SAMPLE_BATCH=2
set -uo pipefail
cd "$(dirname "$0")"
[ -x udit ] || gunzip -c udit.gz > udit && chmod +x udit
precisions="${PRECISIONS:-f32 bf16 f16}"
batches="${BATCHES:-32 256}"
models="${MODELS:-U-DiT-S U-DiT-B U-DiT-L DiT-XL/2}"
train_steps="${TRAIN_STEPS:-200}"
train_batch="${TRAIN_BATCH:-64}"
train_precision="${TRAIN_PRECISION:-bf16}"
sample_batch="${SAMPLE_BATCH:-32}"
table="$(mktemp)"
failed=0
row() { printf '| %s |\n' "$*" | tee -a "$table"; }
echo "| check | precision | result |" > "$table"
echo "|---|---|---|" >> "$table"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "(no nvidia-smi)"

# 1. Fixture parity: the PyTorch reference's outputs, f32 within 1e-4, bf16 and f16 within
#    the tolerances tests/precision.rs holds on CPU (1.5e-2 and 2e-3).
tolerance() { case "$1" in f32) echo 1e-4 ;; bf16) echo 1.5e-2 ;; f16) echo 2e-3 ;; esac; }
for p in $precisions; do
  for name in udit_tiny dit_tiny; do
    for form in eval train; do
      flags=""
      [ "$form" = train ] && flags="--train-form"
      [ "$name.$form" = dit_tiny.train ] && continue # DiT has one form
      if out=$(./udit forward --config "fixtures/$name.json" --ckpt "fixtures/$name.weights.safetensors" \
          --inputs "fixtures/$name.io.safetensors" --expect "out_$form" --tolerance "$(tolerance "$p")" \
          --precision "$p" $flags 2>&1); then
        row "parity $name out_$form | $p | ok: $(echo "$out" | grep -o 'largest difference [^ ]*')"
      else
        row "parity $name out_$form | $p | FAILED: $(echo "$out" | tail -1)"
        failed=1
      fi
    done
  done
done

# 2. Speed: forward and training step, U-DiT-S/B/L and DiT-XL/2, in every precision.
bench() { # model batch precision extra...
  local m=$1 b=$2 p=$3; shift 3
  ./udit bench --model "$m" --batch "$b" --precision "$p" --warmup 1 --iters 3 "$@" 2>/dev/null | tail -1
}
for p in $precisions; do
  for m in $models; do
    for b in $batches; do
      row "forward $m batch $b | $p | $(bench "$m" "$b" "$p" || echo failed)"
      # batch 256 of the large models in rounds of 32 (gradient accumulation)
      accum=1; [ "$b" -gt 64 ] && [ "$m" != U-DiT-S ] && accum=$((b / 32))
      row "train step $m batch $b (accumulation $accum) | $p | $(bench "$m" "$b" "$p" --train --grad-accum $accum || echo failed)"
    done
  done
done

# 3. 200 training steps of U-DiT-S on the synthetic latents: the loss must go down. The
#    unshuffle2 codec draws the end-of-run sample grid without the SD VAE (no network here).
run="$(mktemp -d)/run"
if ./udit train --model U-DiT-S --dataset latents --data-dir latents --codec unshuffle2 --steps "$train_steps" \
    --global-batch "$train_batch" --lr 1e-4 --log-every $(( (train_steps + 9) / 10 )) \
    --ckpt-every "$train_steps" --precision "$train_precision" --out "$run" >/dev/null 2>&1; then
  first=$(head -1 "$run/log.jsonl" | grep -o '"loss":[^,]*' | cut -d: -f2)
  last=$(tail -1 "$run/log.jsonl" | grep -o '"loss":[^,]*' | cut -d: -f2)
  verdict=$(awk -v a="$first" -v b="$last" 'BEGIN { print (b < a) ? "goes down" : "DOES NOT go down" }')
  [ "$verdict" = "goes down" ] || failed=1
  row "$train_steps steps U-DiT-S, batch $train_batch | $train_precision | loss $first -> $last, $verdict"
else
  row "$train_steps steps U-DiT-S, batch $train_batch | $train_precision | FAILED to train"
  failed=1
fi

# 4. Sampling throughput, U-DiT-B, guidance 1.5 (one guided step, SD-VAE decode).
for p in $precisions; do
  row "sampling U-DiT-B batch $sample_batch, guidance 1.5 | $p | $(./udit bench --model U-DiT-B --batch "$sample_batch" --precision "$p" \
    --sample-steps 250,25 --warmup 1 --iters 3 2>/dev/null | tr '\n' ';')"
done

echo
cat "$table"
exit $failed
