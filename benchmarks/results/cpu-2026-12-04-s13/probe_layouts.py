import torch, time
torch.set_num_threads(1)
P, N, D, K = 26, 430, 257, 22
X = torch.randn(P, N, D); th = torch.randn(P, K, D); R = torch.randn(P, K, N); A = torch.randn(P, D, D)
Xt = X.transpose(1, 2).contiguous()
Rt = R.transpose(1, 2).contiguous()
thT = th.transpose(1, 2).contiguous()
arms = {
 "loss  th @ X^T (now)": lambda: torch.bmm(th, X.transpose(1, 2)),
 "loss  X @ th^T": lambda: torch.bmm(X, th.transpose(1, 2)),
 "loss  X @ thT(contig)": lambda: torch.bmm(X, thT),
 "loss  th @ Xt(contig)": lambda: torch.bmm(th, Xt),
 "grad  R @ X (now)": lambda: torch.bmm(R, X),
 "grad  (X^T @ R^T)": lambda: torch.bmm(X.transpose(1, 2), R.transpose(1, 2)),
 "grad  Xt @ Rt": lambda: torch.bmm(Xt, Rt),
 "prec  th @ A (now)": lambda: torch.bmm(th, A),
 "prec  A @ thT": lambda: torch.bmm(A, thT),
 "loss  loop mm": lambda: [th[i] @ X[i].T for i in range(P)],
}
res = {k: [] for k in arms}
for r in range(7):
    for k, f in arms.items():
        f(); s = time.perf_counter(); f(); f(); f(); res[k].append((time.perf_counter() - s) / 3 * 1e3)
for k, v in res.items():
    print(f"{k:28s} {sorted(v)[3]:.2f} ms")
