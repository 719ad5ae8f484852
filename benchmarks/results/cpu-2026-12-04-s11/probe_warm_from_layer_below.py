"""depth and parent probes of one layer fitted cold and started from the layer below's probes (fit_features init), one thread, with their distance from the exact optimum; run from the repository root. Argument: RUN, the trained bfs-11 run."""
import sys, time, types, dataclasses, torch, numpy as np
sys.path.insert(0, "benchmarks")
from probe_speed import probe_inputs
from quietlab.monitor.probes import fit_features

acts, feats, tr, te, what = probe_inputs(types.SimpleNamespace(run=sys.argv[-1], examples=None))
torch.set_num_threads(1)
F = {n: feats[n] for n in ("depth", "parent")}
layers = sorted(acts)
print(layers)
exact = {}
for a, b in (("blocks.0.hook_resid_post", "blocks.1.hook_resid_post"), ("blocks.2.hook_resid_post", "blocks.3.hook_resid_post")):
    src = fit_features({a: acts[a]}, F, tr, te)
    init = {n: dataclasses.replace(r, pairs=[(b, t) for _, t in r.pairs]) for n, r in src.items()}
    for name, kw in (("cold", {}), ("warm from " + a, {"init": init})):
        t0 = time.perf_counter(); r = fit_features({b: acts[b]}, F, tr, te, **kw); w = time.perf_counter() - t0
        ex = exact.get(b) or fit_features({b: acts[b]}, F, tr, te, tol=1e-7, max_iter=2000)
        exact[b] = ex
        off = np.concatenate([np.abs(r[n].metrics["acc"] - ex[n].metrics["acc"]) for n in F])
        print(b, name, f"{w:.2f} s", "passes", max(r[n].n_iter for n in F), f"off exact {off.mean():.4f}", flush=True)
