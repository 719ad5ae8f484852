import sys, time, argparse, numpy as np, torch
sys.path.insert(0, "/work/main/benchmarks")
from probe_speed import probe_inputs
import quietlab.monitor.probes as probes
torch.set_num_threads(2)
a = argparse.Namespace(run="/work/ckpt/bfs11_cpu", examples=None, task=None, n_bits=None, d_model=None, layers=None)
acts, feats, tr, te, what = probe_inputs(a)
sizes = [int(float(x) * 2**20) for x in sys.argv[1].split(",")]
rounds = int(sys.argv[2])
exact = probes.fit_features(acts, feats, tr, te, tol=1e-7, max_iter=3000)
best = {(n, p): v for n, r in exact.items() for p, v in zip(r.pairs, r.metrics[r.main_metric])}
probes.fit_features(acts, feats, tr, te)
times = {s: [] for s in sizes}
for r in range(rounds):
    for s in (sizes if r % 2 == 0 else sizes[::-1]):
        t = time.perf_counter(); res = probes.fit_features(acts, feats, tr, te, max_chunk_bytes=s); times[s].append(time.perf_counter() - t)
        off = np.concatenate([[abs(v - best[n, p]) for p, v in zip(x.pairs, x.metrics[x.main_metric])] for n, x in res.items()])
        print(f"round {r} {s >> 20} MB: {times[s][-1]:.2f} s off {off.mean():.4f}", flush=True)
for s in sizes: print(s >> 20, "MB median", np.median(times[s]))
