"""How long a sweep takes on one GPU, from measured throughput: a spec, or the paper's whole sweep.

    .venv/bin/python benchmarks/sweep_estimate.py --spec benchmarks/sweeps/study_reduced.toml \
        --rates benchmarks/results/packed_speed.json    # or several files, e.g. one per arm
    .venv/bin/python benchmarks/sweep_estimate.py --paper --rates benchmarks/results/packed_speed.json
    .venv/bin/python benchmarks/sweep_estimate.py --paper --pack-rates DIR/rates_*.json   # pack by pack

The formula: GPU time = sum over runs of C_run / R(run), where C_run is the run's training FLOPs and
R the FLOP/s measured by benchmarks/packed_speed.py for its class of model: runs of d_model <= --small-d
at the packed arm's steady aggregate rate in the mode a sweep's packs train in while their runs leave one
by one (``packed-graph``: packed models, whole step as one CUDA graph, forward not compiled; the stretch
after which the remaining runs end together compiles its forward if 10,000 or more steps are left,
``compiles_forward``, and is not counted faster here), larger ones at
the large arm's rate (one model, quietlab's fastest mode). Evaluation, checkpoints and pack set-up are
not in R; --overhead-s adds a fixed time per pack (measure it from a real sweep's wall time; default 0).
A pack cannot finish before its longest run has done its steps one after another: ``longest_runs_seconds``
(sum over packs of the longest run's steps x the packed arm's measured step time) bounds the wall time
from below, divided by the number of packs sharing the GPU (--workers).

The paper's sweep (PAPER_PROTOCOL.md section 3, its released configs): d in 8..512 (powers of 2) x
layers {4, 16} x lr {1e-1, 1e-2, 1e-3, 1e-4} x batch {8, 64} x budgets 10^9..10^15 (multiplication to
10^16), one per decade, kept iff 1 <= steps <= 10^5, with the paper's own count F = 12 L d^2 + L ctx d per
token, tokens = C / 6F, steps = ceil(tokens / (batch ctx)); its ctx per task is listed below. That grid
has 6,660 runs (the number of released configs), which this script checks.

``--pack-rates`` (benchmarks/pack_rates.py's JSON files) replaces that formula by one that follows each pack
stretch by stretch, as train/packed.py trains it: between two runs' ends the pack holds the runs still going,
steps as one CUDA graph of eager kernels (``graph``) or, where ``compiles_forward`` says so (the runs left
end together, 10,000 or more steps on), compiled (``graph-compiled``), and pays that shape's set-up (warm-up,
capture, and the compile: the cold-cache figure where one was measured) each time its shape changes. Step
times are looked up by d_model, layers, batch and pack size (the smallest measured pack at least as large;
above the largest measured, scaled in proportion), for the pack's own task if measured, else for the measured
task with the longest sequences (an upper bound: every paper task's sequences are as long or shorter). The
result is the time with one pack at a time on the GPU; evaluation and checkpoints are left out, as above.
``--no-compile``: the same for a sweep with ``compile = false``, whose packs step as CUDA graphs of eager
kernels throughout (no compile to pay, slower steps).

``--sharing`` (benchmarks/card_sharing.py's JSON files) with ``--workers K`` adds the time with K packs on the
card at once, as the local executor runs them with ``--workers K``: each stretch's time times its ``share``
(K packs side by side take share x K times one pack's time), looked up by the stretch's own step time alone:
the measured share of the measured shape whose step alone is nearest on a log scale, and no gain (share 1)
for a step slower than twice the slowest one measured, where the card is busy; set-up is divided among the
K. A model, not a measurement:
packs sharing the card are of different shapes, not the K copies of one shape that card_sharing.py times.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

# the paper's context lengths (PAPER_PROTOCOL.md section 3)
PAPER_CTX = {"addition": 52, "multiplication": 67, "majority_of_majorities": 67, "max_subarray": 93.17,
             "activity_selection": 40.20, "bfs": 69.359375, "dfs": 69.359375, "topological_sort": 69.359375,
             "shortest_path": 61.9140625, "mst": 77.359375}


#: the packed mode a sweep trains in on a GPU while its packs shrink (train_packed: the whole step as one
#: CUDA graph, forward eager until the runs left end together)
SWEEP_MODE = "packed-graph"


def paper_runs():
    """(task, d, layers, batch, budget, steps, flops) of every run of the paper's grid, one per lr."""
    for task, ctx in PAPER_CTX.items():
        top = 16 if task == "multiplication" else 15
        for e in range(9, top + 1):
            for d in (8, 16, 32, 64, 128, 256, 512):
                for L in (4, 16):
                    F = 12 * L * d * d + L * ctx * d
                    tokens = 10**e / (6 * F)
                    for b in (8, 64):
                        steps = math.ceil(tokens / (b * ctx))
                        if 1 <= steps <= 100_000:
                            for _lr in range(4):
                                yield task, d, L, b, 10.0**e, steps, float(10**e)


def spec_runs(path):
    from quietlab.runs.sweep import _within_steps, load_spec
    from quietlab.train.budget import flops_per_step

    runs, settings, _ = load_spec(path)
    runs, _ = _within_steps(runs, settings["min_steps"], settings["max_steps"])
    for r in runs:
        task = r.cfg.build_task()
        per_step = flops_per_step(r.cfg.model_config(task), r.cfg.batch_size, task.seq_len)
        steps = r.cfg.total_steps(task)
        yield r.cfg.task, r.cfg.d_model, r.cfg.n_layers, r.cfg.batch_size, r.cfg.flops, steps, steps * per_step


def pack_rate_table(paths) -> dict:
    """{(task, d, layers, batch, mode): {n_models: [ms per step, set-up s]}} from pack_rates.py's files: step
    times from the timed files (2 or more rounds of 10 or more steps; pack_rates.sh's warm phase), set-up the
    largest measured (the cold phase's, compiling, where there is one)."""
    table, seq = {}, {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        timed = data["args"]["rounds"] >= 2 and data["args"]["steps"] >= 10
        for r in data["rows"]:
            if "error" in r:
                continue
            seq[r["task"]] = r["seq_len"]
            entry = table.setdefault((r["task"], r["d_model"], r["layers"], r["batch_size"], r["mode"]), {}) \
                .setdefault(r["n_models"], [None, 0.0])
            if timed:
                entry[0] = r["ms_per_step"]
            entry[1] = max(entry[1], r["setup_s"])
    return {"table": table, "seq_len": seq}


def pack_seconds(task, d, layers, batch, lengths, rates, compile=True) -> dict:
    """One pack of runs with these lengths, stretch by stretch (see the module's docstring)."""
    import torch
    from quietlab.train.packed import compiles_forward

    table, seq = rates["table"], rates["seq_len"]
    measured_task = task if any(k[0] == task for k in table) else max(seq, key=seq.get)
    out = {"steps_s": 0.0, "setup_s": 0.0, "stretches": []}
    since = 0
    for end in sorted(set(lengths)):
        left = [length for length in lengths if length >= end]
        compiled = compiles_forward(compile, torch.device("cuda"), left, since)
        mode = "graph-compiled" if compiled else "graph"
        by_n = table.get((measured_task, d, layers, batch, mode), {})
        by_n = {n: v for n, v in by_n.items() if v[0] is not None}
        if not by_n:
            raise KeyError(f"no {mode} step time measured for {measured_task} d_model {d} x {layers}, batch {batch}")
        fits = [n for n in by_n if n >= len(left)]
        n = min(fits) if fits else max(by_n)
        ms, setup = by_n[n]
        ms *= max(1.0, len(left) / n)
        out["steps_s"] += (end - since) * ms / 1e3
        out["setup_s"] += setup
        out["stretches"].append({"models": len(left), "steps": end - since, "mode": mode, "ms_per_step": ms,
                                 "measured_as": f"{measured_task}, {n} models"})
        since = end
    return out


def sharing_table(paths, workers: int) -> list[tuple[float, float]]:
    """[(step ms alone, share)] at ``workers`` packs a card, from card_sharing.py's files, by step time."""
    points = []
    for path in paths:
        for shape in json.loads(Path(path).read_text())["shapes"]:
            for entry in shape["shared"]:
                if entry["k"] == workers and entry["share"] is not None:
                    points.append((shape["alone_ms"], entry["share"]))
    if not points:
        raise SystemExit(f"error: no sharing measured at --workers {workers} in {', '.join(paths)}")
    return sorted(points)


def share_at(ms: float, points: list[tuple[float, float]]) -> float:
    """The share of the measured step nearest to ``ms`` on a log scale; 1 beyond twice the slowest measured."""
    if ms > 2 * points[-1][0]:
        return 1.0
    return min(points, key=lambda p: abs(math.log(ms / p[0])))[1]


def measured(paths) -> dict:
    """packed_speed.py's JSON files (e.g. one per arm), merged."""
    m = {}
    for path in paths:
        m.update(json.loads(Path(path).read_text()))
    return m


def rates_from(m: dict) -> tuple[float, float, dict]:
    """(small-model FLOP/s, large-model FLOP/s, where each came from) out of packed_speed.py's results."""
    packed = m["packed"]
    mode, best = SWEEP_MODE, packed[SWEEP_MODE]
    small = best["tokens_per_s_steady"] * packed["flops_per_token"]
    large_arm = m["large"]
    ours = large_arm.get("ours") or max((k for k in large_arm if isinstance(large_arm[k], dict) and "tokens_per_s" in large_arm[k]),
                                        key=lambda k: large_arm[k]["tokens_per_s"])
    large = large_arm[ours]["tokens_per_s"] * large_arm["flops_per_token"]
    return small, large, {"small": f"packed arm, {mode}, {packed['config']}", "large": f"large arm, {ours}, {large_arm['config']}",
                          "device": m["device"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", help="a sweep spec (TOML)")
    ap.add_argument("--paper", action="store_true", help="the paper's whole sweep (6,660 runs)")
    ap.add_argument("--rates", nargs="+", help="benchmarks/packed_speed.py --out JSON file(s) (measured on the GPU)")
    ap.add_argument("--pack-rates", nargs="+", help="benchmarks/pack_rates.py --out JSON file(s): pack by pack")
    ap.add_argument("--no-compile", action="store_true",
                    help="with --pack-rates: a sweep with compile = false (every stretch a CUDA graph of eager kernels)")
    ap.add_argument("--small-d", type=int, default=128, help="d_model up to which runs go at the packed rate")
    ap.add_argument("--overhead-s", type=float, default=0.0, help="seconds added per pack (evaluation, set-up)")
    ap.add_argument("--pack-size", type=int, default=64)
    ap.add_argument("--sharing", nargs="+", help="with --pack-rates: benchmarks/card_sharing.py --out JSON file(s)")
    ap.add_argument("--workers", type=int, default=4, help="with --sharing: packs on the card at once")
    args = ap.parse_args()
    if not (args.spec or args.paper):
        ap.error("give --spec or --paper")
    runs = list(paper_runs() if args.paper else spec_runs(args.spec))
    total_flops = sum(r[6] for r in runs)
    by_task = {}
    for r in runs:
        t = by_task.setdefault(r[0], [0, 0.0])
        t[0] += 1
        t[1] += r[6]
    out = {"what": "paper sweep" if args.paper else args.spec, "runs": len(runs), "flops": total_flops,
           "runs_per_task": {k: v[0] for k, v in by_task.items()}, "flops_per_task": {k: v[1] for k, v in by_task.items()}}
    groups = {}  # runs of one task, shape and batch pack together, each leaving at its own length
    for r in runs:
        groups.setdefault((r[0], r[1], r[2], r[3]), []).append(r[5])
    if args.rates:
        m = measured(args.rates)
        small, large, source = rates_from(m)
        seconds = sum(r[6] / (small if r[1] <= args.small_d else large) for r in runs)
        packs = sum(math.ceil(len(g) / args.pack_size) for g in groups.values())
        seconds += packs * args.overhead_s
        # a pack lasts at least as long as its longest run, one step after another
        step_s = m["packed"][SWEEP_MODE]["ms_per_step_steady"] / 1e3
        serial = sum(max(g) for g in groups.values()) * step_s
        out.update({"small_flops_per_s": small, "large_flops_per_s": large, "rates_from": source, "packs": packs,
                    "overhead_s_per_pack": args.overhead_s, "gpu_seconds": seconds, "gpu_hours": seconds / 3600,
                    "formula": "sum_runs C_run / R(d_model) + packs * overhead_s",
                    "longest_runs_seconds": serial, "step_s": step_s,
                    "note": "wall time is at least longest_runs_seconds / (packs running at once on the GPU)"})
    if args.pack_rates:
        rates = pack_rate_table(args.pack_rates)
        packs, missing = [], []
        for (task, d, layers, batch), lengths in sorted(groups.items()):
            try:
                p = pack_seconds(task, d, layers, batch, lengths, rates, compile=not args.no_compile)
            except KeyError as exc:
                missing.append(str(exc))
                continue
            packs.append({"task": task, "d_model": d, "layers": layers, "batch_size": batch, "runs": len(lengths),
                          "longest": max(lengths), **p})
        steps_s, setup_s = sum(p["steps_s"] for p in packs), sum(p["setup_s"] for p in packs)
        by_shape = {}
        for p in packs:
            k = f"d{p['d_model']} x {p['layers']}, batch {p['batch_size']}"
            by_shape[k] = by_shape.get(k, 0.0) + p["steps_s"] + p["setup_s"]
        if args.sharing:
            points = sharing_table(args.sharing, args.workers)
            shared_s = sum(st["steps"] * st["ms_per_step"] / 1e3 * share_at(st["ms_per_step"], points)
                           for p in packs for st in p["stretches"])
            shared_setup_s = setup_s / args.workers
            out["shared_card"] = {"workers": args.workers, "measured_shares": points, "steps_s": shared_s,
                                  "setup_s": shared_setup_s, "gpu_hours": (shared_s + shared_setup_s) / 3600,
                                  "sharing_from": sorted(set(args.sharing))}
        out["pack_by_pack"] = {"compile": not args.no_compile, "packs": len(packs), "missing": missing, "steps_s": steps_s, "setup_s": setup_s,
                               "gpu_hours_one_pack_at_a_time": (steps_s + setup_s) / 3600,
                               "hours_by_shape": {k: v / 3600 for k, v in sorted(by_shape.items(), key=lambda kv: -kv[1])},
                               "rates_from": sorted(set(args.pack_rates)), "packs_detail": packs}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
