import sys, time, argparse, numpy as np, torch
sys.path.insert(0, "/work/main/benchmarks")
from probe_speed import probe_inputs
import quietlab.monitor.probes as probes, quietlab.monitor.lbfgs as lb
src = {k: compile(open(f"/tmp/exp/lbfgs_{k}.py").read(), lb.__file__, "exec") for k in ("old", "new")}
torch.set_num_threads(1)
a = argparse.Namespace(run="/work/ckpt/bfs11_cpu", examples=None, task=None, n_bits=None, d_model=None, layers=None)
acts, feats, tr, te, what = probe_inputs(a)
sub = {n: feats[n] for n in sys.argv[1].split(",")}
for r in range(3):
    for k in (("old", "new") if r % 2 == 0 else ("new", "old")):
        exec(src[k], lb.__dict__)
        t = time.perf_counter(); res = probes.fit_features(acts, sub, tr, te); dt = time.perf_counter() - t
        print(f"round {r} {k} {dt:.2f} s", flush=True)
