#!/usr/bin/env bash
# Items 2-4 and 9 on a CUDA machine (about 6 minutes on one modern GPU; budget 8):
#   2 framework tax   kbit train vs a peft+trl QLoRA script: step time, tokens/s, torch.cuda.max_memory_allocated, loss curves
#   3 quantized speed qlora vs lora through kbit train: step time, tokens/s, model and peak GPU memory
#   4 merge fidelity  kbit's dequantized-base merge vs PEFT merge_and_unload on the 4-bit base
#   9 kbit vs recipe  whole kbit train process vs the hand-written peft+trl QLoRA recipe: wall, peak RSS, held-out EM
#                     (peak RSS is host memory; GPU memory of both sides is items 2-3's figure)
# With --device cuda the training workers reset and read torch.cuda.max_memory_allocated around
# training, synchronize before timing each step, and kbit's compute_dtype=auto resolves to bf16 with
# gradient checkpointing decided from memory (off for this 135M model; the item-2 reference matches it).
# Usage: bash benchmarks/gpu.sh [extra flags, e.g. --quick]      (run from anywhere)
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible')"
export HF_HUB_OFFLINE=1
exec timeout 480 python -m benchmarks.run --device cuda --items 2,3,4,9 --out benchmarks/results-gpu.md "$@"
