"""Time ours alone on the bfs-11 probes: python time_ours.py THREADS [features] [repeats]"""
import sys, time, argparse
import numpy as np, torch
sys.path.insert(0, "/work/main/benchmarks")
import probe_speed
from threadpoolctl import threadpool_limits
from quietlab.monitor.probes import fit_features
threads = int(sys.argv[1]); torch.set_num_threads(threads)
args = argparse.Namespace(run="/work/ckpt/bfs11_s0", examples=None)
acts, feats, tr, te, what = probe_speed.probe_inputs(args)
if len(sys.argv) > 2 and sys.argv[2] != "all":
    feats = {n: feats[n] for n in sys.argv[2].split(",")}
reps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
with threadpool_limits(threads):
    small = np.arange(200)
    fit_features({l: a[small] for l, a in acts.items()}, {k: f.take(small) for k, f in feats.items()}, small[:150], small[150:], l2=1e-3)
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); c = time.process_time()
        r = fit_features(acts, feats, tr, te, l2=1e-3)
        ts.append((time.perf_counter() - t, time.process_time() - c))
print("wall", [round(a, 2) for a, _ in ts], "cpu", [round(b, 2) for _, b in ts])
print({n: float(np.mean(x.metrics[x.main_metric])) for n, x in r.items()})
