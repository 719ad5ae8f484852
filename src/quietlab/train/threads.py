"""``torch.set_num_threads`` without what it does to MKL.

Besides PyTorch's own count, ``torch.set_num_threads(n)`` fixes MKL's thread count for the calling thread at
n and turns MKL's dynamic adjustment off for the whole process. PyTorch's CPU kernels call MKL from inside
their own OpenMP regions (the CPU flash attention's small products), and with those two settings each such
call starts n threads of its own. On the 2-core CPU one call, even with the count it already had, took the
demo model's training step from about 61 to 80 ms for the rest of the process
(benchmarks/results/cpu-2026-12-05-s20/README.md). ``set_cpu_threads`` sets PyTorch's count, then gives MKL
its start-up behaviour: no count of the thread's own (so it follows OpenMP's, which ``torch.set_num_threads``
has set to n) and dynamic (so that a call from inside a parallel region runs on its thread alone).
"""

from __future__ import annotations

import ctypes
import functools
import os

import torch


@functools.cache
def _mkl_setters():
    """(MKL_Set_Num_Threads_Local, MKL_Set_Dynamic) of the MKL linked into PyTorch, or None without one."""
    if not torch.backends.mkl.is_available():
        return None
    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        setters = lib.MKL_Set_Num_Threads_Local, lib.MKL_Set_Dynamic
    except (OSError, AttributeError):  # another platform's library names, or MKL linked otherwise
        return None
    for f in setters:
        f.argtypes = [ctypes.c_int]
    return setters


def set_cpu_threads(n: int) -> None:
    """``torch.set_num_threads(n)``, and MKL held to ``n`` threads without nesting them."""
    torch.set_num_threads(n)
    setters = _mkl_setters()
    if setters is not None:
        set_local, set_dynamic = setters
        set_local(0)  # 0: no count of its own
        set_dynamic(1)
