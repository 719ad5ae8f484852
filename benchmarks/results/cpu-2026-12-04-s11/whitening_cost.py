"""Batched inverse (Cholesky, float64) against eigendecomposition of 26 Gram matrices of 256 x 256, and the product that would whiten 26 pairs of 459 x 256 activations; one torch thread."""
import torch, time
torch.set_num_threads(1)
from quietlab.monitor.lbfgs import spd_inverse
P,D,N=26,256,459
X=torch.randn(P,N,D); G=(X.transpose(1,2)@X)/N
A=0.5*G+1e-3*torch.eye(D)
def t(f, n=3):
    f(); t0=time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter()-t0)/n*1e3
print("spd_inverse f64", t(lambda: spd_inverse(A)))
print("eigh f64", t(lambda: torch.linalg.eigh(A.double())))
print("eigh f32", t(lambda: torch.linalg.eigh(A)))
B=torch.randn(P,D,D)
print("X@B", t(lambda: torch.bmm(X, B)))
