"""A/B behind probe_chunks_side_by_side_ab.txt: fit_features on a trained run's probes (2 torch threads),
chunks one after another (each operation split over the threads) against side by side (one thread each),
at 256 and 64 MiB chunks, three alternated rounds.  Run from the repository root:
    .venv/bin/python benchmarks/results/cpu-2026-12-04-s10/probe_chunks_side_by_side_ab.py RUN"""
import sys, time, types, torch, numpy as np
sys.path.insert(0, "benchmarks")
from probe_speed import probe_inputs
import quietlab.monitor.probes as probes
from quietlab.monitor.probes import fit_features
args = types.SimpleNamespace(run=sys.argv[1], examples=None)
acts, feats, tr, te, what = probe_inputs(args)
torch.set_num_threads(2)
parallel = probes._fit_chunks
serial = lambda fit, chunks, device, buffers: [fit(s, sub, buffers) for s, sub in chunks]
fit_features(acts, feats, tr, te, l2=1e-3)
res = {}
for rnd in range(3):
    for name, f in (("serial", serial), ("parallel", parallel)):
        for mb in (256, 64):
            probes._fit_chunks = f
            t0 = time.perf_counter(); c0 = time.process_time()
            fit_features(acts, feats, tr, te, l2=1e-3, max_chunk_bytes=mb << 20)
            w = time.perf_counter() - t0
            res.setdefault((name, mb), []).append(w)
            print(rnd, name, mb, round(w, 2), round(time.process_time() - c0, 2), flush=True)
for k, v in res.items(): print(k, "median", round(float(np.median(v)), 2))
