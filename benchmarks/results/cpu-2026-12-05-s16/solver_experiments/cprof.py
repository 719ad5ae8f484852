import sys, argparse, cProfile, pstats, torch
sys.path.insert(0, "/work/main/benchmarks")
from probe_speed import probe_inputs
import quietlab.monitor.probes as probes
torch.set_num_threads(1)
a = argparse.Namespace(run="/work/ckpt/bfs11_cpu", examples=None, task=None, n_bits=None, d_model=None, layers=None)
acts, feats, tr, te, what = probe_inputs(a)
probes.fit_features(acts, feats, tr, te)
import quietlab.monitor.probes as p
p._fit_chunks.__globals__  # noqa
# run chunks in this thread so cProfile sees them
cProfile.run("probes.fit_features(acts, feats, tr, te)", "/tmp/exp/cp.out")
st = pstats.Stats("/tmp/exp/cp.out"); st.sort_stats("cumulative").print_stats(30)
