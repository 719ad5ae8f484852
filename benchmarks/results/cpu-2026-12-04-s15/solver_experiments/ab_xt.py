import sys, pickle, time, torch
from quietlab.monitor import lbfgs as L
torch.set_num_threads(1)
chs = pickle.load(open(sys.argv[1], "rb"))
Orig = L.LogisticObjective
class WithXt(Orig):
    def __init__(self, X, *a, **k):
        super().__init__(X, *a, **k)
        self.Xt = X.transpose(1, 2).contiguous()
    def select(self, keep):
        out = super().select(keep)
        out.Xt = self.Xt.index_select(0, keep)
        return out
    def _loss(self, theta):
        X, G, g = self.X, self.G, self.g
        P, N, D = X.shape
        Z = torch.bmm(theta.view(P, G * g, D), self.Xt)
        if self.class_off is not None:
            Z += self.class_off
        logp = torch.log_softmax(Z.view(P, G, g, N), dim=2)
        data = L._dot(logp.view(P, G, g * N), self.neg_tw.view(P, G, g * N))
        prob = logp.exp_().view(P, G * g, N)
        return torch.add(data, L._dot(theta, theta * self.pen), alpha=0.5), prob
def run(cls):
    L.LogisticObjective = cls
    t0 = time.perf_counter()
    outs = []
    for ch in chs:
        X = ch["X"].clone()
        outs.append(L.fit_logistic(X, ch["w"], ch["y"], "categorical", ch["C"], ch["gram"], ch["l2"], 100, ch["tol"]))
    return time.perf_counter() - t0, outs
run(Orig)
res = {"orig": [], "xt": []}
for r in range(4):
    for name, cls in ([("orig", Orig), ("xt", WithXt)] if r % 2 == 0 else [("xt", WithXt), ("orig", Orig)]):
        dt, outs = run(cls); res[name].append(dt)
        if name == "xt": ox = outs
        else: oo = outs
print({k: [round(x, 2) for x in v] for k, v in res.items()})
print("max |W diff|", max(float((a[0] - b[0]).abs().max()) for a, b in zip(ox, oo)), "passes", [a[3] for a in ox], [b[3] for b in oo])
