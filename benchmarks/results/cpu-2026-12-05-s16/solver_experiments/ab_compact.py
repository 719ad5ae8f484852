import sys, time, argparse, numpy as np, torch
sys.path.insert(0, "/work/main/benchmarks")
from probe_speed import probe_inputs
import quietlab.monitor.probes as probes, quietlab.monitor.lbfgs as lb
src = {k: compile(open(f"/tmp/exp/lbfgs_{k}.py").read(), lb.__file__, "exec") for k in ("old", "new")}
torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
a = argparse.Namespace(run="/work/ckpt/bfs11_cpu", examples=None, task=None, n_bits=None, d_model=None, layers=None)
acts, feats, tr, te, what = probe_inputs(a)
rounds = int(sys.argv[1])
times = {"old": [], "new": []}; out = {}
for r in range(rounds + 1):
    for k in (("old", "new") if r % 2 == 0 else ("new", "old")):
        exec(src[k], lb.__dict__)
        t = time.perf_counter(); res = probes.fit_features(acts, feats, tr, te); dt = time.perf_counter() - t
        if r: times[k].append(dt)
        out[k] = res
        print(f"round {r} {k} {dt:.2f} s passes {dict((n, x.n_iter) for n, x in res.items())}", flush=True)
for n in out["old"]:
    a_, b_ = out["old"][n], out["new"][n]
    d = np.abs(np.array(a_.metrics[a_.main_metric]) - np.array(b_.metrics[b_.main_metric]))
    w = (a_.weight - b_.weight).abs().max().item() / a_.weight.abs().max().item()
    print(n, "acc diff mean", d.mean(), "max", d.max(), "weight rel diff", w)
print({k: np.median(v) for k, v in times.items()})
