import sys, time, argparse, numpy as np, torch
sys.path.insert(0, "/work/main/benchmarks")
from probe_speed import probe_inputs
import quietlab.monitor.probes as probes
torch.set_num_threads(1)
a = argparse.Namespace(run="/work/ckpt/bfs11_cpu", examples=None, task=None, n_bits=None, d_model=None, layers=None)
acts, feats, tr, te, what = probe_inputs(a)
sub = {k: feats[k] for k in sys.argv[1].split(",")}
probes.fit_features(acts, sub, tr, te)
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
    probes.fit_features(acts, sub, tr, te)
print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=12, max_shapes_column_width=60))
