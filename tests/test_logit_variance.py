"""NormSoftmax's logit variance (models/logit_variance.py) against the variance of written-out logits in
float64: the PyTorch formula here, the Triton kernels in Triton's CPU interpreter (a subprocess, because
the interpreter is chosen when the kernels are defined)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from quietlab.models.logit_variance import reference, triton

# q and k as the attention makes them: views of one (B, T, 3, H, D) projection, so strided
KERNEL_CHECK = r"""
import json, torch
from quietlab.models import logit_variance as lv

def written_out(q, k):
    return (q @ k.transpose(-2, -1)).var(-1, unbiased=False, keepdim=True)

torch.manual_seed(0)
out = {}
for dtype, T in ((torch.float32, 197), (torch.float32, 5), (torch.float16, 70)):
    B, H, D = 2, 2, 32
    qkv = (torch.randn(B, T, 3, H, D) * 1.5 + 0.4).to(dtype).requires_grad_(True)
    q, k = qkv.permute(2, 0, 3, 1, 4)[:2]
    var = lv._logit_variance(q, k)[0]
    g = torch.randn(B, H, T, 1)
    (var * g).sum().backward()
    exact = qkv.detach().double().requires_grad_(True)
    eq, ek = exact.permute(2, 0, 3, 1, 4)[:2]
    ref = written_out(eq, ek)
    (ref * g.double()).sum().backward()
    rel = lambda a, b: ((a.double() - b).abs().max() / b.abs().max()).item()
    out[f"{dtype}-{T}"] = {"var": rel(var, ref), "dq": rel(qkv.grad[:, :, 0], exact.grad[:, :, 0]),
                           "dk": rel(qkv.grad[:, :, 1], exact.grad[:, :, 1]),
                           "dv_untouched": qkv.grad[:, :, 2].abs().max().item()}

# under vmap (packed models): the models' axis folded into the batch, forward and backward
qs = torch.randn(3, 2, 2, 40, 16, requires_grad=True)
ks = torch.randn(3, 2, 2, 40, 16, requires_grad=True)
batched = torch.vmap(lambda q, k: lv._logit_variance(q, k)[0])(qs, ks)
looped = torch.stack([lv._logit_variance(qs[i], ks[i])[0] for i in range(3)])
grads = torch.autograd.grad(batched.square().sum(), (qs, ks))
grads_looped = torch.autograd.grad(looped.square().sum(), (qs, ks))
out["vmap"] = {"var": (batched - looped).abs().max().item(),
               "grad": max((a - b).abs().max().item() for a, b in zip(grads, grads_looped))}
print(json.dumps(out))
"""


def test_reference_equals_the_variance_of_written_out_logits():
    torch.manual_seed(1)
    qkv = torch.randn(2, 9, 3, 3, 8, dtype=torch.float64) + 0.5
    q, k = qkv.permute(2, 0, 3, 1, 4)[:2]
    written_out = (q @ k.transpose(-2, -1)).var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(reference(q, k), written_out.float(), rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(triton is None, reason="Triton is not installed (the test extra installs it)")
def test_triton_kernels_match_float64_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", KERNEL_CHECK], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    for case in ("torch.float32-197", "torch.float32-5"):  # 197: three blocks, the last partial; 5: one partial
        assert max(errors[case][n] for n in ("var", "dq", "dk")) < 1e-5, errors[case]
        assert errors[case]["dv_untouched"] == 0.0
    assert max(errors["torch.float16-70"][n] for n in ("var", "dq", "dk")) < 5e-3, errors["torch.float16-70"]
    assert errors["vmap"]["var"] < 1e-5 and errors["vmap"]["grad"] < 1e-4, errors["vmap"]
