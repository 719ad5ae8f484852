"""Probe fitting speed: quietlab's batched probes against a per-pair scikit-learn loop.

For a 4-layer, d_model 256 Transformer++ and 10,000 held-out examples (8,000 probe-train, 2,000
probe-test), probes of every feature at every (layer, position) where it is defined:

- ours: ``fit_features`` (all features at once; same-solver features share one batched problem) and
  ``fit_probes`` one feature at a time, on CPU and, when there is one, on the GPU (the together-figure
  is the best of three calls, all printed);
- sklearn: for each feature and pair, StandardScaler + LogisticRegression (one per output; multinomial
  per variable for categorical features) or Ridge, with the same L2 strength (C = 1/(λ·n)) and
  sklearn's default tolerance, at its faster BLAS thread count (1 or all: many threads make its small
  matrix-vector products slower). The loop is timed on a spread-out subset of the pairs and
  extrapolated linearly to all of them (the output says how many were timed).

Both are solvers stopped at a tolerance, so the output also says how far each one's test scores are from
those of the exact optimum (ours run to tol 1e-7): a speed-up bought with a looser fit would show there.

The model is randomly initialised unless ``--run`` gives a trained run (its last checkpoint): trained
activations make probes more separable and every solver slower. Run:

    .venv/bin/python benchmarks/probe_speed.py                      # addition (8-bit), random init
    .venv/bin/python benchmarks/probe_speed.py --task bfs --sk-pairs 8
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="addition")
    ap.add_argument("--n-bits", type=int, default=8, help="addition/multiplication size")
    ap.add_argument("--examples", type=int, default=10_000)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--sk-pairs", type=int, default=12, help="(feature, layer, position) fits timed for sklearn")
    ap.add_argument("--run", default=None, help="use this trained run's last checkpoint instead of a random model")
    ap.add_argument("--threads", type=int, default=None, help="torch and BLAS threads (default: all)")
    ap.add_argument("--l2", type=float, default=1e-3)
    args = ap.parse_args()

    from threadpoolctl import threadpool_limits

    from quietlab.models import Transformer, TransformerConfig
    from quietlab.monitor.probes import capture_layers, fit_features, fit_probes, split_probe_set
    from quietlab.tasks import get_task

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    if args.run:
        from quietlab.train import load_run

        model, task, _, step = load_run(args.run)
        what = f"trained run {args.run} at step {step}"
    else:
        sizes = {"n_bits": args.n_bits} if args.task in ("addition", "multiplication") else {}
        task = get_task(args.task, **sizes)
        torch.manual_seed(0)
        model = Transformer(TransformerConfig(vocab_size=len(task.vocab), seq_len=task.seq_len, d_model=args.d_model,
                                              n_layers=args.layers, n_heads=4)).eval()
        what = "random-init model"
    batch = task.sample(args.examples, seed=1, split="test")
    tr, te = split_probe_set(len(batch), 0.2, seed=0)
    t0 = time.perf_counter()
    acts = capture_layers(model, batch.tokens)
    capture_s = time.perf_counter() - t0
    feats = batch.features
    d = next(iter(acts.values())).shape[-1]
    print(f"{task!r}, {what}: d_model {d}, {len(acts)} layers (embed + blocks), seq_len {task.seq_len}, "
          f"{len(tr)} probe-train + {len(te)} probe-test examples; capture {capture_s:.2f} s; "
          f"{threads} CPU threads")

    # --- ours, CPU -------------------------------------------------------------------------------
    kw = dict(l2=args.l2)
    with threadpool_limits(threads):
        fit_features({l: a[:200] for l, a in acts.items()}, feats_take(feats, 200), np.arange(150), np.arange(150, 200))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            together = fit_features(acts, feats, tr, te, **kw)
            times.append(time.perf_counter() - t0)
        ours_all = min(times)
        t0 = time.perf_counter()
        alone = {n: fit_probes(acts, f, tr, te, name=n, **kw) for n, f in feats.items()}
        ours_each = time.perf_counter() - t0
    jobs = [(n, l, t) for n, r in together.items() for (l, t) in r.pairs]
    print(f"{len(jobs)} (feature, layer, position) probes: " +
          ", ".join(f"{n} {f.kind}×{f.k} ({len(together[n].pairs)})" for n, f in feats.items()))
    print(f"ours, CPU: {ours_all:.2f} s all features together (best of {len(times)}: {', '.join(f'{t:.2f}' for t in times)}), "
          f"{ours_each:.2f} s one feature at a time")

    # --- ours, GPU -------------------------------------------------------------------------------
    gpu_all = gpu_each = None
    if torch.cuda.is_available():
        gacts = {l: a.cuda() for l, a in acts.items()}
        fit_features(gacts, feats, tr, te, **kw)  # warm-up (CUDA context, cuBLAS/cuSOLVER handles)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        g = fit_features(gacts, feats, tr, te, **kw)
        torch.cuda.synchronize()
        gpu_all = time.perf_counter() - t0
        t0 = time.perf_counter()
        for n, f in feats.items():
            fit_probes(gacts, f, tr, te, name=n, **kw)
        torch.cuda.synchronize()
        gpu_each = time.perf_counter() - t0
        diffs = {n: float(np.nanmax(np.abs(g[n].metrics[g[n].main_metric] - r.metrics[r.main_metric])))
                 for n, r in together.items() if len(g[n].pairs)}
        worst = max(diffs, key=diffs.get)
        print(f"ours, GPU ({torch.cuda.get_device_name()}): {gpu_all:.3f} s together, {gpu_each:.3f} s one at a time "
              f"(largest |CPU - GPU| test score difference {diffs[worst]:.4f}, {worst})")

    # --- sklearn, per pair, on a spread-out subset -------------------------------------------------
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import StandardScaler

    pick = np.unique(np.linspace(0, len(jobs) - 1, min(args.sk_pairs, len(jobs))).round().astype(int))

    def sk_fit(name, layer, t):
        f = feats[name]
        X = acts[layer][:, t].numpy()
        mtr, mte = tr[f.mask[tr, t]], te[f.mask[te, t]]
        t0 = time.perf_counter()
        scaler = StandardScaler().fit(X[mtr])
        Xtr, Xte = scaler.transform(X[mtr]), scaler.transform(X[mte])
        scores = []
        for j in range(f.k):
            y_tr, y_te = f.values[mtr, t, j], f.values[mte, t, j]
            if f.kind == "scalar":
                scores.append(Ridge(alpha=args.l2 * len(mtr)).fit(Xtr, y_tr).score(Xte, y_te))
            elif len(np.unique(y_tr)) < 2:
                scores.append(float(np.mean(y_te == y_tr[0])))
            else:
                scores.append(LogisticRegression(C=1.0 / (args.l2 * len(mtr))).fit(Xtr, y_tr).score(Xte, y_te))
        return time.perf_counter() - t0, float(np.mean(scores))

    exact = fit_features(acts, feats, tr, te, l2=args.l2, tol=1e-7, max_iter=2000)
    ours_off = {(n, l, t): abs(together[n].get(l, t)[together[n].main_metric] - exact[n].get(l, t)[exact[n].main_metric])
                for n, l, t in jobs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # sklearn at its best: many BLAS threads make its small matrix-vector products slower, not faster
        trial = {}
        for n_threads in sorted({1, threads}):
            with threadpool_limits(n_threads):
                sk_fit(*jobs[pick[0]])
                trial[n_threads] = min(sk_fit(*jobs[pick[0]])[0] for _ in range(2))
        sk_threads = min(trial, key=trial.get)
        sk_time, sk_off = 0.0, []
        with threadpool_limits(sk_threads):
            for i in pick:
                name, layer, t = jobs[i]
                dt, score = sk_fit(name, layer, t)
                sk_time += dt
                sk_off.append(abs(score - exact[name].get(layer, t)[exact[name].main_metric]))
    per_pair = sk_time / len(pick)
    sk_total = per_pair * len(jobs)
    print(f"sklearn, CPU, {sk_threads} BLAS thread(s) (its fastest of {sorted(trial)}): "
          f"timed {len(pick)} of {len(jobs)} probes ({sk_time:.2f} s, {per_pair * 1e3:.0f} ms each), "
          f"extrapolated to all {len(jobs)}: {sk_total:.1f} s")
    timed_off = [ours_off[jobs[i]] for i in pick]
    every = np.array(list(ours_off.values()))
    print(f"test score off the exact optimum's, on the {len(pick)} timed probes: sklearn mean {np.mean(sk_off):.4f} "
          f"(max {max(sk_off):.4f}), ours mean {np.mean(timed_off):.4f} (max {max(timed_off):.4f}); "
          f"ours over all {len(jobs)}: mean {every.mean():.4f} (max {every.max():.4f})")
    print()
    print(f"speed-up over sklearn, CPU: {sk_total / ours_all:.1f}x (features together), "
          f"{sk_total / ours_each:.1f}x (one feature at a time)")
    if gpu_all is not None:
        print(f"speed-up over sklearn, GPU: {sk_total / gpu_all:.1f}x (features together), "
              f"{sk_total / gpu_each:.1f}x (one feature at a time)")


def feats_take(feats, n):
    return {k: f.take(np.arange(n)) for k, f in feats.items()}


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
