import sys, argparse, numpy as np, torch
sys.path.insert(0, "/work/main/benchmarks")
from probe_speed import probe_inputs
import quietlab.monitor.probes as probes, quietlab.monitor.lbfgs as lb
exec(compile(open("/tmp/exp/lbfgs_stats.py").read(), lb.__file__, "exec"), lb.__dict__)
torch.set_num_threads(1)
a = argparse.Namespace(run="/work/ckpt/bfs11_cpu", examples=None, task=None, n_bits=None, d_model=None, layers=None)
acts, feats, tr, te, what = probe_inputs(a)
for group in (["depth","parent"], ["queue","visited","adjacency"]):
    lb.STATS.clear()
    probes.fit_features(acts, {n: feats[n] for n in group}, tr, te)
    s = np.array(lb.STATS)
    print(group, "active problem-passes", s[:,0].sum(), "computed problem-passes", s[:,1].sum(), "ratio", s[:,0].sum()/s[:,1].sum(),
          "| pairs active", s[:,2].sum(), "pairs computed", s[:,3].sum(), "G", set(s[:,4]))
