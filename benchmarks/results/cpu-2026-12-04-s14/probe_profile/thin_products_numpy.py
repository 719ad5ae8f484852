import time, numpy as np, os
os.environ.setdefault("OPENBLAS_NUM_THREADS","1")
from threadpoolctl import threadpool_limits
P,K,D,N=26,22,257,400
rng=np.random.default_rng(0)
A=rng.standard_normal((P,D,D),dtype=np.float32); g=rng.standard_normal((P,K,D),dtype=np.float32); X=rng.standard_normal((P,N,D),dtype=np.float32)
def t(f, n=50):
    f(); t0=time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter()-t0)/n*1e3
with threadpool_limits(1):
    print("numpy g@A", t(lambda: g@A)); print("numpy g@X^T", t(lambda: g@X.transpose(0,2,1)))
    print([ (i['internal_api'], i.get('architecture')) for i in __import__('threadpoolctl').threadpool_info()])
