import torch, time
torch.set_num_threads(1)
P,N,D,K=26,459,257,22
X=torch.randn(P,N,D); Xt=X.transpose(1,2).contiguous(); th=torch.randn(P,K,D); R=torch.randn(P,K,N); A=torch.randn(P,D,D)
def t(f,r=20):
    for _ in range(3): f()
    t0=time.perf_counter()
    for _ in range(r): f()
    return (time.perf_counter()-t0)/r*1e3
for name,f in [("Z=th@X^T (view)",lambda: torch.bmm(th,X.transpose(1,2))),
               ("Z=th@Xt (contig)",lambda: torch.bmm(th,Xt)),
               ("Z^T=X@th^T",lambda: torch.bmm(X,th.transpose(1,2))),
               ("grad=R@X",lambda: torch.bmm(R,X)),
               ("grad=R@Xt^T view",lambda: torch.bmm(R,Xt.transpose(1,2))),
               ("grad^T=Xt@R^T",lambda: torch.bmm(Xt,R.transpose(1,2))),
               ("prec th@A",lambda: torch.bmm(th,A)),
               ("prec A@th^T",lambda: torch.bmm(A,th.transpose(1,2))),
               ("einsum Z",lambda: torch.einsum("pkd,pnd->pkn",th,X)),
               ]:
    print(f"{name:22s} {t(f):6.2f} ms")
