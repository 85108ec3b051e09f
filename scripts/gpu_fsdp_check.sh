#!/usr/bin/env bash
# Prepared check for a lent CUDA machine (not run by tests or CI): qlora under FSDP through accelerate.
# 4-bit weights can only be sharded when bitsandbytes stores them in the model's dtype, which qlora
# exposes as a method option (-o quant_storage=bfloat16) — the trainer has no FSDP branch.
# It trains the embedded default for 20 steps on every visible GPU with FSDP (full shard), then checks
# the run finished, the packed weights were stored in bf16, and the merged model reproduces the adapter.
# Usage: bash scripts/gpu_fsdp_check.sh [kbit train flags, e.g. --model DIR]   (about 2-3 minutes on one H100/H200)
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible')"
export HF_HUB_OFFLINE=1
out=$(mktemp -d)/fsdp-run
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
config=$(mktemp --suffix .yaml)
cat >"$config" <<YAML
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
mixed_precision: bf16
num_processes: $gpus
fsdp_config:
  fsdp_sharding_strategy: FULL_SHARD
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_state_dict_type: SHARDED_STATE_DICT
  fsdp_use_orig_params: true
  fsdp_cpu_ram_efficient_loading: true
  fsdp_sync_module_states: true
YAML
time accelerate launch --config_file "$config" -m kbit train --output "$out" --max-steps 20 \
  -o quant_storage=bfloat16 -o compute_dtype=bfloat16 --eval-limit 20 "$@"
python - "$out" <<'PY'
import json, sys
record = json.load(open(f"{sys.argv[1]}/kbit.json"))
assert record["status"] == "finished", record.get("error")
assert record["spec"]["extras"]["quant_storage"] == "bfloat16"
print("world size", record["train"]["world_size"], "digests", record["train"]["rank_adapter_digests"])
print("merge", {k: record["merge"][k] for k in ("max_abs_logit_diff", "top1_agreement")})
print("peak GPU memory (rank 0)", record["peak_memory_bytes"] / 2**30, "GiB; wall", record["wall_time_s"], "s")
PY
