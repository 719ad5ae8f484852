#!/usr/bin/env bash
# benchmarks/pack_rates.py over the paper grid's 28 shapes for one task, in two phases that fit a lent GPU's
# ten-minute calls:
#   1. cold: SHARDS processes at once, each compiling its share of the shapes on one empty Inductor cache
#      (their step times, taken while the others compile, are not used; their setup_s is each pack's compile
#      while SHARDS compile at once, as in a sweep with that many workers);
#   2. warm: one process times every shape, one after another, on the cache phase 1 filled.
#
#   bash benchmarks/pack_rates.sh mst 240 230      # task, seconds for phase 1, seconds for phase 2
# Writes $OUT/rates_TASK_cold_I.json (I = 0..SHARDS-1), their printout rates_TASK_cold.log and
# $OUT/rates_TASK_warm.json. MODES (default graph-compiled) and N (default 4) pass through.
set -u
task=$1 cold_s=$2 warm_s=$3
out=${OUT:-/tmp/pack_rates_out}
shards=${SHARDS:-4}
mkdir -p "$out"
rm -rf "/tmp/pack_rates_cache/$task"  # phase 1 compiles on an empty cache
export TORCHINDUCTOR_CACHE_DIR=/tmp/pack_rates_cache/$task TRITON_CACHE_DIR=/tmp/pack_rates_cache/$task/triton
export PYTHONUNBUFFERED=1
for i in $(seq 0 $((shards - 1))); do
  timeout "$cold_s" python benchmarks/pack_rates.py --task "$task" --modes "${MODES:-graph-compiled}" --n "${N:-4}" \
    --steps 2 --rounds 1 --shard "$i/$shards" --out "$out/rates_${task}_cold_$i.json" > "/tmp/pack_rates_cold_$i.log" 2>&1 &
done
wait
for i in $(seq 0 $((shards - 1))); do echo "== shard $i"; cat "/tmp/pack_rates_cold_$i.log"; done > "$out/rates_${task}_cold.log"
timeout "$warm_s" python benchmarks/pack_rates.py --task "$task" --modes "${MODES:-graph-compiled}" --n "${N:-4}" \
  --steps 30 --rounds 3 --out "$out/rates_${task}_warm.json"
echo "pack_rates.sh $task: exit $?"
