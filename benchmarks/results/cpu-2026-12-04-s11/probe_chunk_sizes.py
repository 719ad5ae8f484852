"""fit_features on the bfs-11 probes (2 threads) at max_chunk_bytes 16, 32, 64 MiB; argument: the sizes. The saved output is one round, cut short. Arguments: SIZES RUN (run from the repository root)."""
import sys, time, types, torch, numpy as np
sys.path.insert(0, "benchmarks")
from probe_speed import probe_inputs
from quietlab.monitor.probes import fit_features
acts, feats, tr, te, what = probe_inputs(types.SimpleNamespace(run=sys.argv[-1], examples=None))
torch.set_num_threads(2)
fit_features(acts, feats, tr, te, l2=1e-3)
sizes = [int(x) for x in sys.argv[1].split(",")]
res = {}
for rnd in range(2):
    for mb in (sizes if rnd % 2 == 0 else sizes[::-1]):
        t0 = time.perf_counter(); c0 = time.process_time()
        fit_features(acts, feats, tr, te, l2=1e-3, max_chunk_bytes=mb << 20)
        w = time.perf_counter() - t0
        res.setdefault(mb, []).append(w)
        print(rnd, mb, "MiB", round(w, 2), "s wall", round(time.process_time() - c0, 2), "s CPU", flush=True)
for k, v in res.items(): print(k, "mean", round(float(np.mean(v)), 2))
