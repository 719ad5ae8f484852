"""Probe fitting speed: quietlab's batched probes against a per-pair scikit-learn loop, at matched accuracy.

Probes of every feature at every (layer, position) where it is defined, fitted two ways on the same
activations, the same probe-train / probe-test split, the same threads:

- ours: ``fit_features`` (all features at once, as the Monitor and ``quietlab probe`` fit them; with
  ``--each`` also ``fit_probes`` one feature at a time), on ``--device``;
- sklearn: for each (feature, layer, position), StandardScaler + LogisticRegression (one per output;
  multinomial per variable for categorical features) or Ridge, with the same L2 strength
  (C = 1/(λ·n)), sklearn's default tolerance and iteration cap, on the examples the feature is
  defined at there.

Timing: one untimed warm-up of each side on a few pairs, then ``--repeats`` rounds, each timing ours
then sklearn (interleaved, so that a machine whose speed drifts slows both alike); the medians are
compared, wall-clock and process CPU time both (on a shared machine the CPU time is the steadier).
``--threads`` sets both sides' threads; ``--sk-threads 1,2`` times sklearn at each BLAS thread count in
every round and compares ours with its fastest (a per-pair loop of small fits gains little from BLAS
threads, and can lose); ``--sk-procs 2`` also times the loop dealt out to two forked processes, the
way ours uses two cores (chunks of pairs side by side, one torch thread each).
sklearn is timed on ``--sk-pairs`` pairs spread over the list (0: all of them; a subset is
extrapolated linearly to all, and the output says so).

Accuracy: both are solvers stopped at a tolerance, so the output compares each pair's test accuracy
(mean over outputs) between the two (mean and largest |difference|), and each one's distance from
the exact optimum's (ours run to tol 1e-7; ``--no-exact`` skips it), overall and by feature. ``--tols``
times ours at further tolerances in every round, each with its own distance from the exact optimum and
speed-up, so that the two can also be compared where ours is as far from the optimum as sklearn.

With ``--run RUN`` the probes are those of that run's last checkpoint on the Monitor's probe set
(``--examples``, default 2,000, drawn with the run's seed; a fifth of it tests the probes), fitted
with ``quietlab probe``'s settings; otherwise a random-init model of ``--task`` on ``--examples``
(default 10,000) held-out examples. ``--out FILE`` writes every figure as JSON beside the printout.

    .venv/bin/python benchmarks/probe_speed.py --threads 1                          # addition (8-bit), random init
    .venv/bin/python benchmarks/probe_speed.py --run runs/bfs11 --threads 1 --out probe_speed_bfs.json
    .venv/bin/python benchmarks/probe_speed.py --run runs/bfs11 --threads 2 --sk-threads 1,2      # the whole 2-core machine
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
import warnings

import numpy as np
import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="addition")
    ap.add_argument("--n-bits", type=int, default=8, help="addition/multiplication size")
    ap.add_argument("--examples", type=int, default=None,
                    help="probe examples (default: 2,000 with --run, as the Monitor; 10,000 otherwise)")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--run", default=None, help="use this trained run's last checkpoint instead of a random model")
    ap.add_argument("--sk-pairs", type=int, default=None,
                    help="(feature, layer, position) fits timed for sklearn, 0 = all (default: all with --run, else 12)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch and BLAS threads, both sides (default: all)")
    ap.add_argument("--sk-threads", default=None,
                    help="comma list of BLAS thread counts to time sklearn at, each in every round; the speed-up is "
                         "against the fastest (default: --threads)")
    ap.add_argument("--sk-procs", type=int, default=1,
                    help="also time sklearn's per-pair loop spread over this many processes (forked, one BLAS "
                         "thread each): the same use of several cores that ours makes by fitting chunks side by side")
    ap.add_argument("--l2", type=float, default=1e-3)
    ap.add_argument("--tols", default=None,
                    help="comma list of further tolerances to time ours at besides its default, each in every round "
                         "(the order of ours' arms reversed every other round); each gets its own speed-up and its "
                         "distance from the exact optimum, to compare at matched accuracy")
    ap.add_argument("--device", default="cpu", help="where ours fits (sklearn runs on the CPU)")
    ap.add_argument("--each", action="store_true", help="also time ours one feature at a time")
    ap.add_argument("--no-exact", action="store_true", help="skip the exact-optimum reference")
    ap.add_argument("--features", default=None, help="comma-separated features to probe (default: all)")
    ap.add_argument("--out", default=None, help="also write the figures here as JSON")
    args = ap.parse_args()

    from threadpoolctl import threadpool_limits

    from quietlab.monitor.probes import fit_features, fit_probes

    if args.threads:
        from quietlab.train.threads import set_cpu_threads
        set_cpu_threads(args.threads)
    threads = torch.get_num_threads()
    acts, feats, tr, te, what = probe_inputs(args)
    if args.features:
        unknown = sorted(set(args.features.split(",")) - set(feats))
        if unknown:
            raise SystemExit(f"unknown feature(s) {', '.join(unknown)}; the task has: {', '.join(feats)}")
        feats = {n: feats[n] for n in args.features.split(",")}
    d = next(iter(acts.values())).shape[-1]
    print(f"{what}: d_model {d}, {len(acts)} layers (embed + blocks), {next(iter(acts.values())).shape[1]} "
          f"positions, {len(tr)} probe-train + {len(te)} probe-test examples; {threads} thread(s) for torch and BLAS")

    kw = dict(l2=args.l2)
    cuda = torch.device(args.device).type == "cuda"
    acts_cpu, acts = acts, {l: a.to(args.device) for l, a in acts.items()}

    def sync():
        if cuda:
            torch.cuda.synchronize()

    with threadpool_limits(threads):
        small = np.arange(min(200, len(tr) + len(te)))
        fit_features({l: a[small] for l, a in acts.items()}, {k: f.take(small) for k, f in feats.items()},
                     small[: len(small) * 3 // 4], small[len(small) * 3 // 4:], **kw)  # warm-up
        together = fit_features(acts, feats, tr, te, **kw)
    jobs = [(n, l, t) for n, r in together.items() for (l, t) in r.pairs]
    n_outputs = sum(f.k for n, l, t in jobs for f in [feats[n]])
    print(f"{len(jobs)} (feature, layer, position) probes, {n_outputs} sklearn fits: " +
          ", ".join(f"{n} {f.kind}×{f.k}{'/' + str(f.n_classes) if f.kind == 'categorical' else ''} "
                    f"({len(together[n].pairs)})" for n, f in feats.items()))

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import StandardScaler

    def sk_fit(name, layer, t):
        """(wall s, CPU s, test score averaged over outputs) of sklearn's probe of one pair."""
        f = feats[name]
        X = acts_cpu[layer][:, t].numpy()
        mtr, mte = tr[f.mask[tr, t]], te[f.mask[te, t]]
        t0, c0 = time.perf_counter(), time.process_time()
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
        return time.perf_counter() - t0, time.process_time() - c0, float(np.mean(scores))

    n_sk = args.sk_pairs if args.sk_pairs is not None else (0 if args.run else 12)
    pick = np.arange(len(jobs)) if n_sk <= 0 or n_sk >= len(jobs) else \
        np.unique(np.linspace(0, len(jobs) - 1, n_sk).round().astype(int))
    sk_threads = [int(x) for x in args.sk_threads.split(",")] if args.sk_threads else [threads]
    ours_wall, ours_cpu, each_wall = [], [], []
    extra_tols = [float(x) for x in args.tols.split(",")] if args.tols else []
    tol_wall, tol_cpu, tol_fits = {t: [] for t in extra_tols}, {t: [] for t in extra_tols}, {}
    sk_walls, sk_cpus = {t: [] for t in sk_threads}, {t: [] for t in sk_threads}
    arms = list(sk_threads) + ([f"{args.sk_procs} processes"] if args.sk_procs > 1 else [])
    sk_walls.update({a: [] for a in arms[len(sk_threads):]})
    sk_cpus.update({a: [] for a in arms[len(sk_threads):]})
    with warnings.catch_warnings(), threadpool_limits(threads):
        warnings.simplefilter("ignore", ConvergenceWarning)
        for i in pick[:3]:
            sk_fit(*jobs[i])  # warm-up
        for r in range(args.repeats):
            for tol in ([None] + extra_tols)[:: 1 if r % 2 == 0 else -1]:
                sync()
                t0, c0 = time.perf_counter(), time.process_time()
                fitted = fit_features(acts, feats, tr, te, **kw, **({} if tol is None else {"tol": tol}))
                sync()
                (ours_wall if tol is None else tol_wall[tol]).append(time.perf_counter() - t0)
                (ours_cpu if tol is None else tol_cpu[tol]).append(time.process_time() - c0)
                if tol is not None:
                    tol_fits[tol] = fitted
            for sk_t in sk_threads:
                sk_scores, w, c = {}, 0.0, 0.0
                with threadpool_limits(sk_t):
                    for i in pick:
                        dw, dc, sk_scores[jobs[i]] = sk_fit(*jobs[i])
                        w, c = w + dw, c + dc
                sk_walls[sk_t].append(w * len(jobs) / len(pick))
                sk_cpus[sk_t].append(c * len(jobs) / len(pick))
            if args.sk_procs > 1:  # the pairs dealt out to forked workers, which inherit the activations
                global _SK_FIT
                _SK_FIT = sk_fit
                t0 = time.perf_counter()
                with multiprocessing.get_context("fork").Pool(args.sk_procs) as pool:
                    done = pool.map(_sk_job, [jobs[i] for i in pick], chunksize=max(1, len(pick) // (8 * args.sk_procs)))
                w = time.perf_counter() - t0
                sk_walls[arms[-1]].append(w * len(jobs) / len(pick))
                sk_cpus[arms[-1]].append(sum(dc for _, dc, _ in done) * len(jobs) / len(pick))
                for i, (_, _, score) in zip(pick, done):
                    assert abs(score - sk_scores[jobs[i]]) < 1e-9  # the same fits as in one process
        if args.each:
            for _ in range(args.repeats):
                sync()
                t0 = time.perf_counter()
                for n, f in feats.items():
                    fit_probes(acts, f, tr, te, name=n, **kw)
                sync()
                each_wall.append(time.perf_counter() - t0)

    def med(xs):
        return float(np.median(xs))

    fastest = min(arms, key=lambda t: med(sk_walls[t]))
    sk_wall, sk_cpu = sk_walls[fastest], sk_cpus[fastest]

    timed = "all" if len(pick) == len(jobs) else f"{len(pick)} of {len(jobs)} (extrapolated to all)"
    where = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"ours ({where}): {med(ours_wall):7.2f} s wall, {med(ours_cpu):7.2f} s CPU (median of {args.repeats}; wall "
          f"{', '.join(f'{x:.2f}' for x in ours_wall)})")
    for t in arms:
        print(f"sklearn, {t if isinstance(t, str) else f'{t} BLAS thread(s)'}: {med(sk_walls[t]):7.2f} s wall, {med(sk_cpus[t]):7.2f} s CPU (median of "
              f"{args.repeats}; wall {', '.join(f'{x:.2f}' for x in sk_walls[t])}); pairs timed: {timed}"
              + (" <- its fastest" if len(arms) > 1 and t == fastest else ""))
    if each_wall:
        print(f"ours, one feature at a time: {med(each_wall):.2f} s wall (median of {args.repeats})")

    ours_score = {(n, l, t): together[n].get(l, t)[together[n].main_metric] for n, l, t in jobs}
    diff = np.array([abs(ours_score[j] - sk_scores[j]) for j in sk_scores])
    worst = max(sk_scores, key=lambda j: abs(ours_score[j] - sk_scores[j]))
    print(f"test score, ours against sklearn over the {len(diff)} pairs sklearn fitted: mean |difference| "
          f"{diff.mean():.4f}, max {diff.max():.4f} ({worst[0]} at {worst[1]}, position {worst[2]}: "
          f"ours {ours_score[worst]:.4f}, sklearn {sk_scores[worst]:.4f}); mean ours - sklearn "
          f"{np.mean([ours_score[j] - sk_scores[j] for j in sk_scores]):+.4f}")
    out = {"what": what, "threads": threads, "device": where, "pairs": len(jobs), "sklearn_fits": n_outputs, "sk_pairs_timed": len(pick),
           "repeats": args.repeats, "ours_wall_s": ours_wall, "ours_cpu_s": ours_cpu, "sklearn_wall_s": sk_wall,
           "sklearn_cpu_s": sk_cpu, "each_wall_s": each_wall,
           "sklearn_threads": fastest, "sklearn_wall_s_by_threads": {str(t): v for t, v in sk_walls.items()},
           "speedup_wall": med(sk_wall) / med(ours_wall), "speedup_cpu": med(sk_cpu) / med(ours_cpu),
           "acc_diff_mean": float(diff.mean()), "acc_diff_max": float(diff.max()),
           "ours_passes": {n: r.n_iter for n, r in together.items()}}
    if not args.no_exact:
        with threadpool_limits(threads):
            exact = fit_features(acts, feats, tr, te, l2=args.l2, tol=1e-7, max_iter=3000)
        best = {(n, l, t): exact[n].get(l, t)[exact[n].main_metric] for n, l, t in jobs}
        ours_off = np.array([abs(ours_score[j] - best[j]) for j in jobs])
        ours_off_sk = np.array([abs(ours_score[j] - best[j]) for j in sk_scores])
        sk_off = np.array([abs(sk_scores[j] - best[j]) for j in sk_scores])
        print(f"test score off the exact optimum's, on the {len(sk_off)} pairs sklearn fitted: sklearn mean "
              f"{sk_off.mean():.4f} (max {sk_off.max():.4f}), ours mean {ours_off_sk.mean():.4f} "
              f"(max {ours_off_sk.max():.4f}); ours over all {len(jobs)}: mean {ours_off.mean():.4f} "
              f"(max {ours_off.max():.4f}); exact optimum: {max(r.n_iter for r in exact.values())} passes")
        out.update(sklearn_off_exact_mean=float(sk_off.mean()), sklearn_off_exact_max=float(sk_off.max()),
                   ours_off_exact_mean=float(ours_off_sk.mean()), ours_off_exact_max=float(ours_off_sk.max()))

        def off_by_feature(scores):
            return {n: float(np.mean([abs(scores[j] - best[j]) for j in sk_scores if j[0] == n])) for n in feats}

        out["sklearn_off_exact_by_feature"] = off_by_feature(sk_scores)
        out["ours_off_exact_by_feature"] = off_by_feature(ours_score)
        print("  by feature, sklearn / ours: " + ", ".join(
            f"{n} {out['sklearn_off_exact_by_feature'][n]:.4f} / {out['ours_off_exact_by_feature'][n]:.4f}" for n in feats))
        out["tols"] = {}
        for tol in extra_tols:
            scores = {(n, l, t): tol_fits[tol][n].get(l, t)[tol_fits[tol][n].main_metric] for n, l, t in jobs}
            off = np.array([abs(scores[j] - best[j]) for j in sk_scores])
            row = {"wall_s": tol_wall[tol], "cpu_s": tol_cpu[tol], "speedup_wall": med(sk_wall) / med(tol_wall[tol]),
                   "speedup_cpu": med(sk_cpu) / med(tol_cpu[tol]), "off_exact_mean": float(off.mean()),
                   "off_exact_max": float(off.max()), "off_exact_by_feature": off_by_feature(scores),
                   "passes": {n: r.n_iter for n, r in tol_fits[tol].items()}}
            out["tols"][str(tol)] = row
            print(f"ours at tol {tol:g}: {med(tol_wall[tol]):7.2f} s wall, {med(tol_cpu[tol]):7.2f} s CPU (median of "
                  f"{args.repeats}; wall {', '.join(f'{x:.2f}' for x in tol_wall[tol])}); off the exact optimum's: mean "
                  f"{row['off_exact_mean']:.4f} (max {row['off_exact_max']:.4f}; " + ", ".join(
                      f"{n} {v:.4f}" for n, v in row["off_exact_by_feature"].items()) + f"); passes {row['passes']}; "
                  f"speed-up {row['speedup_wall']:.1f}x wall, {row['speedup_cpu']:.1f}x CPU time")
    print()
    print(f"speed-up over sklearn: {out['speedup_wall']:.1f}x wall, {out['speedup_cpu']:.1f}x CPU time "
          f"(features together, medians)")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)


_SK_FIT = None  # the per-pair sklearn fit, set before the workers fork


def _sk_job(job):
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _SK_FIT(*job)


def probe_inputs(args):
    """(activations, features, probe-train rows, probe-test rows, description) to probe."""
    from quietlab.monitor.monitor import probe_set, trim_to_features
    from quietlab.monitor.probes import capture_layers, split_probe_set

    if args.run:
        from quietlab.train import load_run

        model, task, cfg, step = load_run(args.run)
        batch = probe_set(task, args.examples or 2000, cfg.seed)  # the Monitor's and `quietlab probe`'s set
        tr, te = split_probe_set(len(batch), 0.2, seed=cfg.seed)
        tokens, feats = trim_to_features(batch.tokens, dict(batch.features))
        what = f"{task!r}, trained run {args.run} at step {step}"
    else:
        from quietlab.models import Transformer, TransformerConfig
        from quietlab.tasks import get_task

        sizes = {"n_bits": args.n_bits} if args.task in ("addition", "multiplication") else {}
        task = get_task(args.task, **sizes)
        torch.manual_seed(0)
        model = Transformer(TransformerConfig(vocab_size=len(task.vocab), seq_len=task.seq_len, d_model=args.d_model,
                                              n_layers=args.layers, n_heads=4)).eval()
        batch = task.sample(args.examples or 10_000, seed=1, split="test")
        tr, te = split_probe_set(len(batch), 0.2, seed=0)
        tokens, feats = batch.tokens, batch.features
        what = f"{task!r}, random-init model"
    return capture_layers(model, tokens), feats, tr, te, what


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
