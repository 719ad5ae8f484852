import sys, time, argparse, functools, numpy as np, torch
sys.path.insert(0, "/work/main/benchmarks")
from probe_speed import probe_inputs
import quietlab.monitor.probes as probes
from quietlab.monitor.lbfgs import fit_logistic
torch.set_num_threads(2)
a = argparse.Namespace(run="/work/ckpt/bfs11_cpu", examples=None, task=None, n_bits=None, d_model=None, layers=None)
acts, feats, tr, te, what = probe_inputs(a)
exact = probes.fit_features(acts, feats, tr, te, tol=1e-7, max_iter=3000)
best = {(n, p): v for n, r in exact.items() for p, v in zip(r.pairs, r.metrics[r.main_metric])}
def arm(spec):
    # spec: dict kind -> dict(history=, tol_mult=, max_iter=)
    def patched(X, w, y, kind, C, gram, l2, max_iter, tol, start=None, history=10, compact=None):
        s = spec.get(kind, {})
        return fit_logistic(X, w, y, kind, C, gram, l2, s.get("max_iter", max_iter), tol * s.get("tol_mult", 1.0), start,
                            s.get("history", history), compact)
    return patched
arms = eval(sys.argv[1])
rounds = int(sys.argv[2])
probes.fit_features(acts, feats, tr, te)
res = {k: [] for k in arms}
for r in range(rounds):
    for name in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
        probes.fit_logistic = arm(arms[name])
        t = time.perf_counter(); out = probes.fit_features(acts, feats, tr, te); dt = time.perf_counter() - t
        probes.fit_logistic = fit_logistic
        offb = {n: np.mean([abs(v - best[n, p]) for p, v in zip(x.pairs, x.metrics[x.main_metric])]) for n, x in out.items()}
        off = np.concatenate([[abs(v - best[n, p]) for p, v in zip(x.pairs, x.metrics[x.main_metric])] for n, x in out.items()])
        res[name].append(dt)
        print(f"r{r} {name:>10} {dt:.2f} s off {off.mean():.4f} " + " ".join(f"{n[:4]} {v:.4f}" for n, v in offb.items()) + f" passes {dict((n, x.n_iter) for n, x in out.items())}", flush=True)
for k in arms: print(k, "median", np.median(res[k]))
