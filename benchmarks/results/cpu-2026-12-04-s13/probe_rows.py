import torch, time
torch.set_num_threads(1)
P, N, D = 26, 430, 257
X = torch.randn(P, N, D); A = torch.randn(P, D, D)
def t(f, n=15):
    f(); ts = []
    for _ in range(n):
        s = time.perf_counter(); f(); ts.append(time.perf_counter() - s)
    return sorted(ts)[n // 2] * 1e3
for K in (22, 33, 55):
    th = torch.randn(P, K, D); R = torch.randn(P, K, N)
    a = t(lambda: torch.bmm(th, X.transpose(1, 2))); b = t(lambda: torch.bmm(R, X)); c = t(lambda: torch.bmm(th, A))
    print(f"K={K}: loss {a:.2f} ms, grad {b:.2f} ms, precondition {c:.2f} ms, sum {a+b+c:.2f}")
