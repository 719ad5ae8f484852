"""Replays stored runs' losses through the Monitor's online machinery (quietlab.monitor.replay), on the CPU.

For each run folder: the steps the Monitor would probe (scheduled, and following the plateau), which of
them lie inside the plateau as the final offline detector places it (plateau start to the drop's onset,
on the loss curve ``classify_run`` uses), when the online "transition" event is reported against the
drop's end, and the estimated cost of the probes (``probe_cost``, on the device the run trained on) as a
fraction of the run's training compute. Each run is replayed twice with the losses handed over at
different random moments: the probe steps and events must not change (they depend on the losses alone).

    python benchmarks/plateau_replay.py /work/data/bfs11_seed0 /work/data/bfs11_seed1 /work/data/bfs11_seed2 \
        --out benchmarks/results/cpu-2026-12-02b/plateau_replay.json      # also writes plateau_replay.log

Monitor options to try: --max-overhead, --plateau-share, --plateau-per-decade (default: the Monitor's).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders (config.json and metrics.sqlite)")
    ap.add_argument("--out", required=True, help="JSON file written with the figures (a .log beside it)")
    ap.add_argument("--max-overhead", type=float, default=None)
    ap.add_argument("--plateau-share", type=float, default=None)
    ap.add_argument("--plateau-per-decade", type=float, default=None)
    args = ap.parse_args()

    from quietlab.monitor.replay import replay_run

    options = {k: v for k, v in (("max_overhead", args.max_overhead), ("plateau_share", args.plateau_share),
                                 ("plateau_per_decade", args.plateau_per_decade)) if v is not None}
    for run in args.runs:
        if not (Path(run) / "config.json").is_file() or not (Path(run) / "metrics.sqlite").is_file():
            print(f"error: {run} is not a run folder (needs config.json and metrics.sqlite)", file=sys.stderr)
            sys.exit(2)
    out, log = {"options": options, "runs": {}}, []
    for run in args.runs:
        t0 = time.perf_counter()
        first = replay_run(run, monitor_options=options, flush_seed=0)
        seconds = time.perf_counter() - t0
        again = replay_run(run, monitor_options=options, flush_seed=1)
        same = first.probe_steps == again.probe_steps and first.events == again.events
        row = {**first.summary(), "same_with_other_flushes": same, "replay_s": seconds,
               "monitor_s_on_this_cpu": first.monitor_seconds, "timings_s": first.timings}
        out["runs"][run] = row
        log += [f"{run}", *(f"  {line}" for line in first.lines()),
                f"  same probe steps and events with the losses handed over at other moments: {same}",
                f"  replay {seconds:.1f} s; the Monitor's own time on this CPU {first.monitor_seconds:.2f} s "
                f"({', '.join(f'{k} {v:.2f}' for k, v in first.timings.items())})"]
        print("\n".join(log[-(len(first.lines()) + 3):]), flush=True)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    path.with_suffix(".log").write_text("\n".join(log) + "\n")


if __name__ == "__main__":
    main()
