"""A/B behind probe_seen_classes_ab.txt: fit_features on a trained run's probes (2 torch threads), the softmax
probes solved over every class (the solver before, its source file the second argument) against over the
classes seen on probe-train only (this tree's), four rounds, the arms' order reversed every other round
(a first arm ran about 7% slower in a first try that kept one order), for all features together and for
the categorical `depth` alone; then how far the two sets of probes are apart.
Run from the repository root:
    git show ad267b1:src/quietlab/monitor/lbfgs.py > /tmp/lbfgs_old.py
    .venv/bin/python benchmarks/results/cpu-2026-12-04-s11/probe_seen_classes_ab.py RUN /tmp/lbfgs_old.py"""
import importlib.util, sys, time, types, torch, numpy as np
sys.path.insert(0, "benchmarks")
from probe_speed import probe_inputs
import quietlab.monitor.probes as probes
from quietlab.monitor.probes import fit_features
spec = importlib.util.spec_from_file_location("lbfgs_old", sys.argv[2])
old = importlib.util.module_from_spec(spec); spec.loader.exec_module(old)
args = types.SimpleNamespace(run=sys.argv[1], examples=None)
acts, feats, tr, te, what = probe_inputs(args)
torch.set_num_threads(2)
arms = {"all classes": old.fit_logistic, "seen classes": probes.fit_logistic}
fit_features(acts, feats, tr, te, l2=1e-3)
res, out = {}, {}
for rnd in range(4):
    for which, fs in (("all features", feats), ("depth alone", {"depth": feats["depth"]})):
        for name, f in (list(arms.items()) if rnd % 2 == 0 else list(arms.items())[::-1]):
            probes.fit_logistic = f
            t0 = time.perf_counter(); c0 = time.process_time()
            got = fit_features(acts, fs, tr, te, l2=1e-3)
            w = time.perf_counter() - t0
            out[which, name] = got
            res.setdefault((which, name), []).append(w)
            print(rnd, which, name, round(w, 2), "s wall", round(time.process_time() - c0, 2), "s CPU", flush=True)
for k, v in res.items():
    print(k, "median", round(float(np.median(v)), 2))
for which, n in [("all features", n) for n in feats] + [("depth alone", "depth")]:
    a, b = out[which, "all classes"][n], out[which, "seen classes"][n]
    acc = np.abs(a.metrics["acc"] - b.metrics["acc"])
    ll = np.abs(a.metrics["logloss"] - b.metrics["logloss"])
    print(f"{which}, {n}: test accuracy |difference| mean {acc.mean():.5f} max {acc.max():.5f}; log-loss mean {ll.mean():.5f} "
          f"max {ll.max():.5f}; passes {a.n_iter} / {b.n_iter}")
