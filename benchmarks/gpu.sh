#!/usr/bin/env bash
# GPU benchmarks, one short run (under 8 minutes on one H100) with only what the GPU
# machine already has (torch, transformers, peft, safetensors, tokenizers, pandas):
#   bash benchmarks/gpu.sh [OUT_DIR]
# Writes one JSON line per run to OUT_DIR/gpu_results.jsonl (default benchmarks/results).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results}"
mkdir -p "$out"
log="$out/gpu_results.jsonl"
: > "$log"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"

run() {  # run a benchmark, keep its last line (the JSON result)
  echo "=== $*"
  python "$@" | tee /dev/stderr | tail -n 1 >> "$log"
}

# Training step at the published shape: batch 8, 100 input / 200 target tokens, rank 8, prompt 20.
for precision in bf16 fp16; do
  run benchmarks/train_step.py --size rut5-large --precision "$precision" --rounds 10 --warmup 3
  run benchmarks/train_step.py --size rut5-large --precision "$precision" --rounds 10 --warmup 3 --checkpointing
done
# Generation on a test split's worth of texts (1,125) at the published length, batched vs one at a time
# (the single-text rate is measured on 32 texts), then 4-beam search on 256 texts.
run benchmarks/generation.py --size rut5-large --dtype bf16 --texts 1125 --max-new-tokens 200 --batch-size 64 --single-texts 32
run benchmarks/generation.py --size rut5-large --dtype bf16 --texts 256 --max-new-tokens 200 --batch-size 32 --num-beams 4 --single-texts 16
# Data-parallel scaling of the training loop on ruT5-large (bf16, batch 8 per GPU): 1, 2, 4, 8 GPUs, as many as there are.
gpus=$(nvidia-smi -L | wc -l)
ranks=""
for n in 1 2 4 8; do if [ "$n" -le "$gpus" ]; then ranks="$ranks $n"; fi; done
run benchmarks/distributed.py --size rut5-large --ranks $ranks --steps 20
echo "results: $log"
