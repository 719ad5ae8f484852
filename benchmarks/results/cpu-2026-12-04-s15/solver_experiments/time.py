import sys, time, pickle, torch, numpy as np
from quietlab.monitor.probes import fit_features
torch.set_num_threads(int(sys.argv[2]))
acts, feats, tr, te = pickle.load(open(sys.argv[1], "rb"))
groups = [g.split(",") for g in sys.argv[3:]] or [list(feats)]
for g in groups:
    sub = {n: feats[n] for n in g}
    t0, c0 = time.perf_counter(), time.process_time()
    r = fit_features(acts, sub)  if False else fit_features(acts, sub, tr, te)
    print(",".join(g), f"wall {time.perf_counter()-t0:.2f} cpu {time.process_time()-c0:.2f}",
          {n: (len(x.pairs), x.n_iter, round(float(np.mean(x.metrics['acc'])),4)) for n, x in r.items()}, flush=True)
