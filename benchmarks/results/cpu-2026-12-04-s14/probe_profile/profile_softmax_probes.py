import sys, time, argparse, torch
sys.path.insert(0, 'benchmarks')
import probe_speed as ps
from quietlab.monitor.probes import fit_features
torch.set_num_threads(int(__import__("os").environ.get("T", "2")))
args = argparse.Namespace(task='bfs', n_bits=8, examples=None, d_model=256, layers=4, run='/work/ckpt/bfs11_s0', l2=1e-3, device='cpu', seed=0)
acts, feats, tr, te, what = ps.probe_inputs(args)
sel = sys.argv[1].split(',') if len(sys.argv) > 1 else list(feats)
feats = {k: feats[k] for k in sel}
fit_features(acts, feats, tr, te, l2=1e-3)
for r in range(1):
    t0=time.perf_counter(); fit_features(acts, feats, tr, te, l2=1e-3); print(sel, 'wall', time.perf_counter()-t0)
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
    fit_features(acts, feats, tr, te, l2=1e-3)
print(p.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=20, max_shapes_column_width=70))
