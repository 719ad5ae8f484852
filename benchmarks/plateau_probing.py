"""Issue 16's BFS figures for the monitor: probe steps inside the plateau, how soon the online
"transition" event comes after the drop ends, and the queue's class, over several seeds.

Trains the bfs-11 run of the issue (d_model 256 x 4, lr 1e-4, batch 64, 20,000 steps, compiled on a
GPU) once per seed with the Monitor at its defaults (or the --max-overhead / --plateau-share given),
then reads the run's store: the probe steps, the events the monitor recorded while training, and the
transition found offline on the whole train/loss curve (its plateau start, onset and end). Prints
one JSON object (and writes it to --out): per seed, the probe steps, how many lie inside the plateau
(plateau start to onset), the first online transition event's reported_at against 1.25 x the drop's
end, the monitor's seconds and the training seconds, and each feature's class.

    python benchmarks/plateau_probing.py --device cuda --seeds 0,1,2 --out /tmp/plateau_probing.json
    python benchmarks/plateau_probing.py --device cpu --steps 300 --d-model 32 --layers 2 --seeds 0 \
        --out /tmp/pp.json        # a tiny smoke run
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", required=True, help="JSON file written with the figures")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-overhead", type=float, default=None, help="the Monitor's (default: its own)")
    ap.add_argument("--plateau-share", type=float, default=None, help="the Monitor's (default: its own)")
    ap.add_argument("--run-dir", default=None, help="keep the run folders here (default: a temporary one)")
    args = ap.parse_args()

    from quietlab.monitor import Monitor
    from quietlab.monitor.transitions import detect_transitions
    from quietlab.runs import RunFolder
    from quietlab.train import TrainConfig, train

    kw = {k: v for k, v in (("max_overhead", args.max_overhead), ("plateau_share", args.plateau_share))
          if v is not None}
    root = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="plateau_probing_"))
    out = {"config": vars(args), "seeds": {}}
    for seed in [int(s) for s in args.seeds.split(",")]:
        cfg = TrainConfig(task="bfs", task_sizes={"n_nodes": 11}, d_model=args.d_model, n_layers=args.layers,
                          n_heads=4, lr=args.lr, batch_size=args.batch_size, steps=args.steps, seed=seed,
                          device=args.device, compile=args.device.startswith("cuda"))
        monitor = Monitor(**kw)
        t0 = time.perf_counter()
        train(cfg, root / f"seed{seed}", hooks=monitor, progress=False)
        train_s = time.perf_counter() - t0
        with RunFolder(root / f"seed{seed}").store(readonly=True) as store:
            probed = sorted({r[0] for r in store.probes()})
            events = sorted(store.results("event").values(), key=lambda e: e["reported_at"])
            classes = {k: v["class"] for k, v in store.results("feature_class").items()}
            steps, losses = store.series("train/loss")
        found = detect_transitions(steps, losses)
        row = {"probe_steps": probed, "scheduled": monitor.probe_steps,
               "plateau_probes": monitor.follower.steps if monitor.follower else [],
               "reserve": monitor.follower.reserve if monitor.follower else 0,
               "estimated_probe_cost_steps": monitor.estimated_probe_cost,
               "events": events, "classes": classes, "train_s": train_s, "monitor_s": monitor.spent,
               "probe_s": monitor.probe_seconds}
        if found:
            t = found[0]
            online = next((e for e in events if e["kind"] == "transition"), None)
            row["transition"] = {"plateau_start": t.plateau_start, "onset": t.onset, "end": t.end}
            row["probes_inside_plateau"] = sum(t.plateau_start <= s <= t.onset for s in probed)
            row["online_reported_at"] = online["reported_at"] if online else None
            row["reported_by_1.25x_end"] = bool(online and online["reported_at"] <= 1.25 * t.end)
        out["seeds"][seed] = row
        print(json.dumps({seed: {k: row.get(k) for k in ("transition", "probes_inside_plateau",
                                                          "online_reported_at", "classes", "train_s",
                                                          "monitor_s")}}), flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
