import sys, time, argparse, numpy as np, torch
sys.path.insert(0, "/work/main/benchmarks")
from probe_speed import probe_inputs
import quietlab.monitor.probes as probes
torch.set_num_threads(int(sys.argv[1]))
a = argparse.Namespace(run="/work/ckpt/bfs11_cpu", examples=None, task=None, n_bits=None, d_model=None, layers=None)
acts, feats, tr, te, what = probe_inputs(a)
orig = probes._Group.__init__
groups = []
def init(self, *a, **k):
    orig(self, *a, **k); groups.append(self)
probes._Group.__init__ = init
probes.fit_features(acts, feats, tr, te)
for g in groups: print(g.family, g.names, len(g.pairs), "pairs", len(g.chunks), "chunks", [len(c[1]) for c in g.chunks][:12])
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU]) as prof:
    probes.fit_features(acts, feats, tr, te)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
