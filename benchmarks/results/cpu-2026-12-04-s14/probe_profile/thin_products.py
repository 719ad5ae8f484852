import torch, time
torch.set_num_threads(1)
P,K,D,N=26,22,257,400
A=torch.randn(P,D,D); g=torch.randn(P,K,D); X=torch.randn(P,N,D); R=torch.randn(P,K,N)
At=A.transpose(1,2).contiguous()
def t(f, n=50):
    f(); t0=time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter()-t0)/n*1e3
out=torch.empty(P,K,D)
for name,f in [("bmm g A", lambda: torch.bmm(g,A)),
               ("bmm g A out", lambda: torch.bmm(g,A,out=out)),
               ("bmm A^T g^T", lambda: torch.bmm(At,g.transpose(1,2))),
               ("loop mm", lambda: [torch.mm(g[i],A[i]) for i in range(P)]),
               ("Z = g X^T", lambda: torch.bmm(g, X.transpose(1,2))),
               ("grad = R X", lambda: torch.bmm(R, X)),
               ("grad via X^T R^T", lambda: torch.bmm(X.transpose(1,2), R.transpose(1,2))),
               ]:
    print(f"{name:20s} {t(f):7.3f} ms")
print(torch.__config__.show().split('\n')[:12])
