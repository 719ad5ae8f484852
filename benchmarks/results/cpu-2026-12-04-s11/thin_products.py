"""Per-pass matrix products of a 26-pair chunk of softmax probes (N 459 examples, D 257 with the bias) by logit rows K: the logits, the gradient, the preconditioner; one torch thread. Run from the repository root."""
import torch, time
torch.set_num_threads(1)
def t(f, n=15):
    f(); f(); best=1e9
    for _ in range(3):
        t0=time.perf_counter()
        for _ in range(n): f()
        best=min(best,(time.perf_counter()-t0)/n*1e3)
    return best
P,D,N=26,257,459
X=torch.randn(P,N,D)
A=torch.randn(P,D,D)
for K in (8,11,16,22,24,32,33,40,48,55,64):
    th=torch.randn(P,K,D); R=torch.randn(P,K,N)
    z=t(lambda: torch.bmm(th, X.transpose(1,2))); g=t(lambda: torch.bmm(R, X)); p=t(lambda: torch.bmm(th, A))
    print(f"K={K:3d} Z {z:6.2f} grad {g:6.2f} precond {p:5.2f}  per row {(z+g+p)/K:.3f} ms")
