"""Issue 16's BFS figures for the monitor: probe steps inside the plateau, how soon the online
"transition" event comes after the drop ends, each feature's class, and the monitor's overhead, per seed.

Trains the bfs-11 run of the issue (d_model 256 x 4, lr 1e-4, batch 64, 20,000 steps, compiled on a
GPU) once per seed with the Monitor at its defaults (or the --max-overhead / --plateau-share /
--plateau-per-decade given), then reads the run's store: the probe steps (scheduled, and following the
plateau, with the features each plateau probe fitted), the events the monitor recorded while training,
and the transition as the final classification reads it (``features.run_transition``: eval/loss, else
train/loss; its plateau start, onset and end). Per seed: how many probe steps lie inside the plateau
(plateau start to onset), the first online transition event's reported_at against the drop's end
(target: at most 1.25 x), each feature's class (queue's is the one issue 16 asks about), the Monitor's
own seconds (probes, detector, entropy, ...) against the training seconds without them (target: at most
10%), and the replay of the run's losses on the CPU (``monitor.replay``: the probe steps the Monitor
takes if no feature is ever decided; the real run takes these or more). --plain also trains each seed
without the monitor, for the wall-clock overhead. Writes the JSON to --out and a readable log beside it.

    python benchmarks/plateau_probing.py --device cuda --seeds 0,1,2 --out /tmp/plateau_probing.json
    python benchmarks/plateau_probing.py --device cpu --steps 300 --d-model 32 --layers 2 --seeds 0 \\
        --out /tmp/pp.json        # a tiny smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", required=True, help="JSON file written with the figures (a .log beside it)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-overhead", type=float, default=None, help="the Monitor's (default: its own)")
    ap.add_argument("--plateau-share", type=float, default=None, help="the Monitor's (default: its own)")
    ap.add_argument("--plateau-per-decade", type=float, default=None, help="the Monitor's (default: its own)")
    ap.add_argument("--plain", action="store_true", help="also train each seed without the monitor")
    ap.add_argument("--run-dir", default=None, help="keep the run folders here (default: a temporary one)")
    args = ap.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        print(f"error: --seeds must be comma-separated whole numbers, got {args.seeds!r}", file=sys.stderr)
        sys.exit(2)

    from quietlab.monitor import Monitor
    from quietlab.monitor.features import run_transition
    from quietlab.monitor.replay import replay_run
    from quietlab.runs import RunFolder
    from quietlab.train import TrainConfig, train

    sys.path.insert(0, str(Path(__file__).parent))
    from run_throughput import throughput

    options = {k: v for k, v in (("max_overhead", args.max_overhead), ("plateau_share", args.plateau_share),
                                 ("plateau_per_decade", args.plateau_per_decade)) if v is not None}
    root = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="plateau_probing_"))
    out, log = {"config": vars(args), "seeds": {}}, []
    for seed in seeds:
        cfg = TrainConfig(task="bfs", task_sizes={"n_nodes": 11}, d_model=args.d_model, n_layers=args.layers,
                          n_heads=4, lr=args.lr, batch_size=args.batch_size, steps=args.steps, seed=seed,
                          device=args.device, compile=args.device.startswith("cuda"))
        row = {}
        if args.plain:
            t0 = time.perf_counter()
            train(cfg, root / f"plain{seed}", progress=False)
            row["plain_train_s"] = time.perf_counter() - t0
        monitor = Monitor(**options)
        t0 = time.perf_counter()
        final = train(cfg, root / f"seed{seed}", hooks=monitor, progress=False)
        train_s = time.perf_counter() - t0
        row["throughput"] = {k: v for k, v in throughput(root / f"seed{seed}", final["wall_s"]).items()
                             if not k.endswith("_windows")}  # issue 12: whole run against steady steps
        with RunFolder(root / f"seed{seed}").store(readonly=True) as store:
            rows = store.probes(metric="acc")
            events = sorted(store.results("event").values(), key=lambda e: e["reported_at"])
            classes = {k: v["class"] for k, v in store.results("feature_class").items()}
            transition, curve = run_transition(store)
        fitted: dict[int, set] = {}
        for step, feature, layer, *_ in rows:
            fitted.setdefault(step, set()).add((feature, layer))
        probed = sorted(fitted)
        plateau = monitor.follower.steps if monitor.follower else []
        replayed = replay_run(root / f"seed{seed}", monitor_options=options)
        row.update({
            "probe_steps": probed, "scheduled": monitor.probe_steps, "plateau_probes": plateau,
            "plateau_probe_fits": {s: {"features": sorted({f for f, _ in fitted[s]}),
                                       "layers": sorted({l for _, l in fitted[s]})} for s in plateau},
            "reserve_steps": monitor.follower.reserve if monitor.follower else 0.0,
            "reserve_used_steps": monitor.follower.used if monitor.follower else 0.0,
            "estimated_probe_cost_steps": monitor.estimated_probe_cost,
            "events": events, "classes": classes, "transition": transition, "transition_curve": curve,
            "train_s": train_s, "monitor_s": monitor.spent, "probe_s": monitor.probe_seconds,
            "monitor_timings_s": monitor.timings,
            "monitor_over_training": monitor.spent / max(train_s - monitor.spent, 1e-9),
            "replay": {"probe_steps": replayed.probe_steps, "inside_plateau": replayed.inside_plateau,
                       "online_reported_at": (replayed.online_transition or {}).get("reported_at")},
        })
        if "plain_train_s" in row:
            row["wall_overhead_vs_plain"] = train_s / row["plain_train_s"] - 1
        # the online event of the final reading's drop: the transition event whose onset is nearest its
        # onset, within 5% of the run (issue 16); any other transition events are kept apart
        online_transitions = [e for e in events if e["kind"] == "transition"]
        online = None
        if transition is not None and online_transitions:
            near = min(online_transitions, key=lambda e: abs(e["step"] - transition["onset"]))
            online = near if abs(near["step"] - transition["onset"]) <= 0.05 * args.steps else None
        elif online_transitions:
            online = online_transitions[0]
        row["online_reported_at"] = online["reported_at"] if online else None
        row["other_online_transitions"] = [e for e in online_transitions if e is not online]
        if transition is not None:
            row["probes_inside_plateau"] = [s for s in probed if transition["plateau_start"] <= s <= transition["onset"]]
            if online:
                row["reported_over_end"] = online["reported_at"] / transition["end"]
        out["seeds"][seed] = row
        log += _lines(seed, row)
        print("\n".join(_lines(seed, row)), flush=True)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    path.with_suffix(".log").write_text("\n".join(log) + "\n")


def _lines(seed: int, row: dict) -> list[str]:
    t = row["transition"]
    out = [f"seed {seed}: probes at {row['probe_steps']} (plateau probes {row['plateau_probes']}; "
           f"reserve {row['reserve_used_steps']:.0f} of {row['reserve_steps']:.0f} training steps' worth used, "
           f"a full probe step estimated at {row['estimated_probe_cost_steps']:.0f})"]
    for s, fit in row["plateau_probe_fits"].items():
        out.append(f"  plateau probe {s}: {', '.join(fit['features'])} at {len(fit['layers'])} taps")
    if t is None:
        out.append(f"  no transition in the final reading ({row['transition_curve']})")
    else:
        out.append(f"  plateau {t['plateau_start']:.0f} to onset {t['onset']:.0f}, drop ends {t['end']:.0f} "
                   f"({row['transition_curve']}): {len(row['probes_inside_plateau'])} probe steps inside "
                   f"{row['probes_inside_plateau']}")
    if row["online_reported_at"] is None:
        out.append("  online: no transition reported")
    else:
        ratio = f" = {row['reported_over_end']:.2f} x the drop's end" if "reported_over_end" in row else ""
        out.append(f"  online: transition reported at step {row['online_reported_at']}{ratio}")
    for e in row.get("other_online_transitions", []):
        out.append(f"  other online transition event (not the final reading's drop): {e['text']}, reported at {e['reported_at']}")
    out.append(f"  classes: {row['classes']}")
    timings = ", ".join(f"{k} {v:.1f}" for k, v in row["monitor_timings_s"].items())
    out.append(f"  train {row['train_s']:.1f} s, of which the monitor {row['monitor_s']:.1f} s ({timings}): "
               f"{row['monitor_over_training']:.1%} of the training time without it"
               + (f"; wall time vs a plain run {row['wall_overhead_vs_plain']:+.1%}" if "wall_overhead_vs_plain" in row
                  else ""))
    tp = row["throughput"]
    out.append(f"  throughput: whole run {tp['whole_run_tokens_per_s'] / 1e6:.3f}M tok/s, steady {tp['steady_tokens_per_s'] / 1e6:.3f}M: "
               f"steady/whole {tp['steady_over_whole']:.3f}; seconds: "
               + ", ".join(f"{k[:-2]} {v:.1f}" for k, v in tp["breakdown"].items()))
    out.append(f"  replay on the CPU (no feature decided): probes {row['replay']['probe_steps']}, inside the "
               f"plateau {row['replay']['inside_plateau']}, transition reported at {row['replay']['online_reported_at']}")
    return out


if __name__ == "__main__":
    main()
