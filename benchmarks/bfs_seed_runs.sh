#!/usr/bin/env bash
# Trains the 11-node BFS run of issues 12/16 (d_model 256 x 4, lr 1e-4, batch 64, 20,000 steps, compiled,
# monitor at its defaults) for seeds given as arguments, concurrently on one GPU (data, not timing), and
# copies each run's metrics.sqlite and config.json, and seed 0's last checkpoint without its optimizer
# state, to $OUT. Usage: bash benchmarks/bfs_seed_runs.sh 0 1 2
set -euo pipefail
export PYTHONPATH=$PWD/src
for s in "$@"; do
  python3 -m quietlab.cli train bfs --n-nodes 11 --d-model 256 --layers 4 --lr 1e-4 --batch-size 64 \
    --steps 20000 --compile --seed "$s" --out /tmp/bfs11_s"$s" --json > /tmp/bfs11_s"$s".json 2> /tmp/bfs11_s"$s".err &
done
wait
for s in "$@"; do
  cp /tmp/bfs11_s"$s"/metrics.sqlite "$OUT"/bfs11_s"$s"_metrics.sqlite
  cp /tmp/bfs11_s"$s"/config.json "$OUT"/bfs11_s"$s"_config.json
  tail -c 300 /tmp/bfs11_s"$s".err
done
python3 - <<'PY'
import os, torch
from quietlab.train.checkpoint import latest_checkpoint
ck = latest_checkpoint("/tmp/bfs11_s0", map_location="cpu")
ck["optimizer"] = None
torch.save(ck, os.path.join(os.environ["OUT"], f"bfs11_s0_step{ck['step']:06d}.pt"))
PY
