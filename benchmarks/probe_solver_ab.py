"""Probe solver settings side by side: fitting time and distance from the exact optimum, on one run's probes.

Each arm fits every probe of the run's last checkpoint (the Monitor's probe set, as ``probe_speed.py --run``)
with ``fit_features`` at the defaults but for the arm's settings; the arms alternate within each round, their
order reversed every other round (on this VM the first of two identical computations runs a few percent
slower). Per arm: median wall and CPU time, solver passes, and each probe's test accuracy against the exact
optimum's (``tol`` 1e-7, 3,000 passes), mean and largest difference.

An arm is ``name:key=value,...`` with keys ``history`` (the quasi-Newton memory), ``max_iter``, ``tol``:

    .venv/bin/python benchmarks/probe_solver_ab.py --run runs/bfs11 --threads 2 \\
        --arms 'm10:history=10' 'm5:history=5' --rounds 3 --out ab.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from probe_speed import probe_inputs  # noqa: E402


def parse_arm(text: str) -> tuple[str, dict]:
    name, _, spec = text.partition(":")
    settings = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key not in ("history", "max_iter", "tol"):
            raise SystemExit(f"unknown setting {key!r} in arm {text!r}; allowed: history, max_iter, tol")
        settings[key] = int(value) if key in ("history", "max_iter") else float(value)
    return name, settings


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a trained run; its last checkpoint is probed")
    ap.add_argument("--examples", type=int, default=None, help="probe examples (default 2,000, as the Monitor)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--arms", nargs="+", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--features", default=None, help="comma-separated features (default: all)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import quietlab.monitor.probes as probes
    from quietlab.monitor.lbfgs import fit_logistic

    if args.threads:
        from quietlab.train.threads import set_cpu_threads
        set_cpu_threads(args.threads)
    args.task, args.n_bits, args.d_model, args.layers = None, None, None, None
    acts, feats, tr, te, what = probe_inputs(args)
    if args.features:
        feats = {n: feats[n] for n in args.features.split(",")}
    arms = [parse_arm(a) for a in args.arms]
    print(f"{what}; {torch.get_num_threads()} thread(s); arms: {', '.join(args.arms)}", flush=True)

    def fit(settings):
        solver = {k: v for k, v in settings.items() if k == "history"}
        probes.fit_logistic = functools.partial(fit_logistic, **solver)
        try:
            kw = {k: v for k, v in settings.items() if k != "history"}
            return probes.fit_features(acts, feats, tr, te, **kw)
        finally:
            probes.fit_logistic = fit_logistic

    exact = probes.fit_features(acts, feats, tr, te, tol=1e-7, max_iter=3000)
    best = {(n, pair): v for n, r in exact.items() for pair, v in zip(r.pairs, r.metrics[r.main_metric])}
    fit(arms[0][1])  # warm-up
    times = {name: [] for name, _ in arms}
    cpus = {name: [] for name, _ in arms}
    found = {}
    for r in range(args.rounds):
        for name, settings in (arms if r % 2 == 0 else arms[::-1]):
            t0, c0 = time.perf_counter(), time.process_time()
            result = fit(settings)
            times[name].append(time.perf_counter() - t0)
            cpus[name].append(time.process_time() - c0)
            found[name] = result
        print(f"round {r + 1}: " + ", ".join(f"{name} {times[name][-1]:.2f} s" for name, _ in arms), flush=True)

    out = {"what": what, "threads": torch.get_num_threads(), "rounds": args.rounds, "arms": {}}
    for name, settings in arms:
        result = found[name]
        off_by = {n: np.array([abs(v - best[n, pair]) for pair, v in zip(r.pairs, r.metrics[r.main_metric])])
                  for n, r in result.items()}
        off = np.concatenate(list(off_by.values()))
        row = {"settings": settings, "wall_s": times[name], "cpu_s": cpus[name],
               "median_wall_s": float(np.median(times[name])), "median_cpu_s": float(np.median(cpus[name])),
               "passes": {n: r.n_iter for n, r in result.items()},
               "off_exact_mean": float(off.mean()), "off_exact_max": float(off.max()),
               "off_exact_mean_by_feature": {n: float(v.mean()) for n, v in off_by.items()}}
        out["arms"][name] = row
        print(f"{name:>12}: {row['median_wall_s']:.2f} s wall, {row['median_cpu_s']:.2f} s CPU (median of "
              f"{args.rounds}); passes {row['passes']}; test accuracy off the exact optimum's: mean "
              f"{row['off_exact_mean']:.4f}, max {row['off_exact_max']:.4f} ("
              + ", ".join(f"{n} {v:.4f}" for n, v in row["off_exact_mean_by_feature"].items()) + ")")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
