import sys, time, argparse, dataclasses, numpy as np, torch
sys.path.insert(0, "/work/main/benchmarks")
from probe_speed import probe_inputs
import quietlab.monitor.probes as probes
torch.set_num_threads(2)
a = argparse.Namespace(run="/work/ckpt/bfs11_cpu", examples=None, task=None, n_bits=None, d_model=None, layers=None)
acts, feats, tr, te, what = probe_inputs(a)
layers = sorted(acts, key=probes.depth) if hasattr(probes, "depth") else list(acts)
print("layers", layers)
cold = probes.fit_features(acts, feats, tr, te)
nxt = {l: layers[i + 1] for i, l in enumerate(layers[:-1])}
init = {}
for n, r in cold.items():
    keep = [i for i, (l, t) in enumerate(r.pairs) if l in nxt]
    init[n] = dataclasses.replace(r, pairs=[(nxt[r.pairs[i][0]], r.pairs[i][1]) for i in keep],
                                  weight=r.weight[keep], bias=r.bias[keep])
for rep in range(2):
    t = time.perf_counter(); c = probes.fit_features(acts, feats, tr, te); tc = time.perf_counter() - t
    t = time.perf_counter(); w = probes.fit_features(acts, feats, tr, te, init=init); tw = time.perf_counter() - t
    print(f"cold {tc:.2f} s {dict((n, r.n_iter) for n, r in c.items())}  warm-from-previous-layer {tw:.2f} s {dict((n, r.n_iter) for n, r in w.items())}")
for n in c:
    d = np.abs(np.array(c[n].metrics[c[n].main_metric]) - np.array(w[n].metrics[w[n].main_metric]))
    print(n, "acc diff mean", d.mean())
