import sys, time, argparse, numpy as np, torch
sys.path.insert(0, "/work/main/benchmarks")
from probe_speed import probe_inputs
import quietlab.monitor.probes as probes, quietlab.monitor.lbfgs as lb
torch.set_num_threads(1)
a = argparse.Namespace(run="/work/ckpt/bfs11_cpu", examples=None, task=None, n_bits=None, d_model=None, layers=None)
acts, feats, tr, te, what = probe_inputs(a)
log=[]
orig=lb.LogisticObjective.__call__
def call(self, theta):
    log.append((self.kind, theta.shape[0], self.Xt.shape[2] if hasattr(self,'Xt') else self.X.shape[1], theta.shape[1], theta.shape[2]))
    return orig(self, theta)
lb.LogisticObjective.__call__=call
res=probes.fit_features(acts, feats, tr, te)
import collections
for kind in ("categorical","binary"):
    L=[l for l in log if l[0]==kind]
    work=sum(P*N for _,P,N,G,Lw in L)
    print(kind, "objective calls", len(L), "pair-passes", sum(l[1] for l in L), "sum P*N", work)
    # histogram of P per call
    print(collections.Counter((l[1]) for l in L).most_common(12))
    print("N range", min(l[2] for l in L), max(l[2] for l in L), "G,L", set((l[3],l[4]) for l in L))
