import torch, time
torch.set_num_threads(1)
P,N,D=26,459,257
X=torch.randn(P,N,D); A=torch.randn(P,D,D)
def t(f,r=15):
    for _ in range(3): f()
    t0=time.perf_counter()
    for _ in range(r): f()
    return (time.perf_counter()-t0)/r*1e3
for rep in range(2):
  for K in [11,22,33,55,88]:
    th=torch.randn(P,K,D); R=torch.randn(P,K,N)
    a=t(lambda: torch.bmm(th,X.transpose(1,2))); b=t(lambda: torch.bmm(R,X)); c=t(lambda: torch.bmm(th,A))
    print(K, f"Z {a:.2f} grad {b:.2f} prec {c:.2f} total {a+b+c:.2f} ms")
