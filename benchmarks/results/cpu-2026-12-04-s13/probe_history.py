"""Softmax probes (depth, parent) of bfs-11: time and distance from the exact optimum at several L-BFGS memories."""
import sys, time, argparse, pickle, os
import numpy as np, torch
sys.path.insert(0, "/work/main/benchmarks")
import probe_speed
import quietlab.monitor.lbfgs as lb
from quietlab.monitor.probes import fit_features
from threadpoolctl import threadpool_limits
torch.set_num_threads(2)
acts, feats, tr, te, what = probe_speed.probe_inputs(argparse.Namespace(run="/work/ckpt/bfs11_s0", examples=None))
feats = {n: feats[n] for n in sys.argv[1].split(",")}
def scores(r):
    return {(n, l, t): r[n].get(l, t)[r[n].main_metric] for n in r for (l, t) in r[n].pairs}
cache = f"/tmp/pf/exact_{sys.argv[1]}.pkl"
with threadpool_limits(2):
    if os.path.exists(cache):
        best = pickle.load(open(cache, "rb"))
    else:
        t = time.perf_counter()
        best = scores(fit_features(acts, feats, tr, te, l2=1e-3, tol=1e-7, max_iter=3000))
        pickle.dump(best, open(cache, "wb")); print("exact", time.perf_counter() - t)
    for m in [int(x) for x in sys.argv[2].split(",")]:
        orig = lb.fit_logistic.__defaults__
        lb.fit_logistic.__defaults__ = (orig[0], m, orig[2])
        ts = []
        for _ in range(2):
            t = time.perf_counter(); c = time.process_time()
            r = fit_features(acts, feats, tr, te, l2=1e-3)
            ts.append((time.perf_counter() - t, time.process_time() - c))
        lb.fit_logistic.__defaults__ = orig
        s = scores(r); off = np.array([abs(s[j] - best[j]) for j in best])
        print(f"history {m}: wall {[round(a,2) for a,_ in ts]} cpu {[round(b,2) for _,b in ts]} passes {[x.n_iter for x in r.values()]} off-optimum mean {off.mean():.4f} max {off.max():.4f}", flush=True)
