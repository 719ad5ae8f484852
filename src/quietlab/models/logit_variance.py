"""var_j(q_i·k_j): each query's variance of logits over all keys, which NormSoftmax divides by.

The variance of a row of logits is q_iᵀ C q_i with C the keys' biased covariance, so it needs no (T, T)
logits matrix: ``logit_variance(q, k)`` computes C and the quadratic forms. In PyTorch (any device, and the
reference) that is three small batched matrix products per head, which cuBLAS runs on slow unaligned
kernels at the ViT's 197 tokens (2.6 ms of a 20 ms training step on an H200, benchmarks/vit_step.py
--profile). On CUDA with Triton it is one kernel per direction, one program per (batch, head): centre the
keys, accumulate C in float32 on the tensor cores, then q·C·q; the backward recomputes nothing but q·C.

Gradients (g the variance's gradient, G = Σ_i g_i q_i q_iᵀ): dq_i = 2 g_i C q_i and dk_j = (2/T) G (k_j − μ)
(the centring's own term vanishes because the centred keys sum to zero).
"""

from __future__ import annotations

import contextlib

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU wheel of torch comes without Triton: the PyTorch formula serves
    triton = None

BLOCK_T = 64  # tokens a program takes at a time


def reference(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(..., T, 1) float32: the variance of q·kᵀ over the keys, as batched matrix products in the inputs'
    dtype (accumulated in float32 by the products, the reduction in float32)."""
    kc = k - k.mean(dim=-2, keepdim=True)
    cov = kc.transpose(-2, -1) @ kc / k.shape[-2]
    return ((q @ cov).float() * q.float()).sum(-1, keepdim=True)


def triton_supports(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether the Triton kernels take these inputs: CUDA (or Triton's CPU interpreter), four dimensions
    (batch, heads, tokens, head size), a power-of-two head size from 16 to 128, a floating dtype Triton's
    dot takes."""
    d = q.shape[-1]
    return (triton is not None and q.dim() == 4 and q.shape == k.shape and q.numel() > 0 and q.dtype == k.dtype
            and q.dtype in (torch.float16, torch.bfloat16, torch.float32) and 16 <= d <= 128 and d & (d - 1) == 0)


def logit_variance(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, H, T, 1) float32 variance of each query's logits over all T keys (unscaled: q·k, not q·k/√d)."""
    if q.is_cuda and triton_supports(q, k):
        return _logit_variance(q, k)[0]
    return reference(q, k)


if triton is not None:

    @triton.jit
    def _rows(base, t, stride, dims, T):
        """The (BLOCK, D) rows ``t`` of one (batch, head) slab; zeros past the T tokens."""
        return tl.load(base + t[:, None] * stride + dims[None, :], mask=(t < T)[:, None], other=0.0)

    @triton.jit
    def _centred(keys, mean, t, T, dtype):
        """Keys minus their mean, in float32, rounded to ``dtype`` for the dot; zeros past the T tokens."""
        return tl.where((t < T)[:, None], keys.to(tl.float32) - mean[None, :], 0.0).to(dtype)

    @triton.jit
    def _forward_kernel(q_ptr, k_ptr, var_ptr, mean_ptr, cov_ptr, T, H,
                        sqb, sqh, sqt, skb, skh, skt,
                        D: tl.constexpr, BLOCK: tl.constexpr, PRECISION: tl.constexpr):
        pid = tl.program_id(0)
        q_base = q_ptr + (pid // H) * sqb + (pid % H) * sqh
        k_base = k_ptr + (pid // H) * skb + (pid % H) * skh
        dims = tl.arange(0, D)
        dtype = q_ptr.dtype.element_ty

        total = tl.zeros([D], dtype=tl.float32)
        for t0 in range(0, T, BLOCK):
            total += tl.sum(_rows(k_base, t0 + tl.arange(0, BLOCK), skt, dims, T).to(tl.float32), axis=0)
        mean = total / T

        cov = tl.zeros([D, D], dtype=tl.float32)
        for t0 in range(0, T, BLOCK):
            t = t0 + tl.arange(0, BLOCK)
            centred = _centred(_rows(k_base, t, skt, dims, T), mean, t, T, dtype)
            cov += tl.dot(tl.trans(centred), centred, input_precision=PRECISION)
        cov = cov / T

        stats = pid * D
        tl.store(mean_ptr + stats + dims, mean)
        tl.store(cov_ptr + stats * D + dims[:, None] * D + dims[None, :], cov)
        cov_in = cov.to(dtype)
        for t0 in range(0, T, BLOCK):
            t = t0 + tl.arange(0, BLOCK)
            queries = _rows(q_base, t, sqt, dims, T)
            projected = tl.dot(queries, cov_in, input_precision=PRECISION)
            var = tl.sum(projected * queries.to(tl.float32), axis=1)
            tl.store(var_ptr + pid * T + t, var, mask=t < T)

    @triton.jit
    def _backward_kernel(q_ptr, k_ptr, grad_ptr, mean_ptr, cov_ptr, dq_ptr, dk_ptr, T, H,
                         sqb, sqh, sqt, skb, skh, skt,
                         D: tl.constexpr, BLOCK: tl.constexpr, PRECISION: tl.constexpr):
        pid = tl.program_id(0)
        q_base = q_ptr + (pid // H) * sqb + (pid % H) * sqh
        k_base = k_ptr + (pid // H) * skb + (pid % H) * skh
        dims = tl.arange(0, D)
        dtype = q_ptr.dtype.element_ty
        stats = pid * D
        mean = tl.load(mean_ptr + stats + dims)
        cov_in = tl.load(cov_ptr + stats * D + dims[:, None] * D + dims[None, :]).to(dtype)

        weighted = tl.zeros([D, D], dtype=tl.float32)  # G = Σ_i g_i q_i q_iᵀ
        for t0 in range(0, T, BLOCK):
            t = t0 + tl.arange(0, BLOCK)
            queries = _rows(q_base, t, sqt, dims, T)
            g = tl.load(grad_ptr + pid * T + t, mask=t < T, other=0.0)
            scaled = (queries.to(tl.float32) * g[:, None]).to(dtype)
            weighted += tl.dot(tl.trans(scaled), queries, input_precision=PRECISION)
        weighted_in = (weighted * (2.0 / T)).to(dtype)

        out = pid * T * D
        for t0 in range(0, T, BLOCK):
            t = t0 + tl.arange(0, BLOCK)
            queries = _rows(q_base, t, sqt, dims, T)
            g = tl.load(grad_ptr + pid * T + t, mask=t < T, other=0.0)
            dq = 2.0 * g[:, None] * tl.dot(queries, cov_in, input_precision=PRECISION)
            centred = _centred(_rows(k_base, t, skt, dims, T), mean, t, T, dtype)
            dk = tl.dot(centred, weighted_in, input_precision=PRECISION)
            where = out + t[:, None] * D + dims[None, :]
            tl.store(dq_ptr + where, dq.to(dtype), mask=(t < T)[:, None])
            tl.store(dk_ptr + where, dk.to(dtype), mask=(t < T)[:, None])


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # the latter is ignored for 16-bit inputs


def _grid_args(q: torch.Tensor, k: torch.Tensor) -> tuple:
    # a (batch, head) slab of tokens × head size with unit stride along the head size is all the kernels need
    return (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2))


def _on(device: torch.device):
    """Launch on the inputs' GPU, not the current one (Triton launches on the current device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _unit_last(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


@torch.library.custom_op("quietlab::logit_variance", mutates_args=())
def _logit_variance(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(variance (B, H, T, 1) float32, the keys' mean (B, H, D) and covariance (B, H, D, D), float32)."""
    q, k = _unit_last(q), _unit_last(k)
    B, H, T, D = q.shape
    var = torch.empty(B, H, T, 1, device=q.device, dtype=torch.float32)
    mean = torch.empty(B, H, D, device=q.device, dtype=torch.float32)
    cov = torch.empty(B, H, D, D, device=q.device, dtype=torch.float32)
    with _on(q.device):
        _forward_kernel[(B * H,)](q, k, var, mean, cov, T, H, *_grid_args(q, k),
                                  D=D, BLOCK=BLOCK_T, PRECISION=_precision(q.dtype))
    return var, mean, cov


@_logit_variance.register_fake
def _(q, k):
    B, H, T, D = q.shape
    return (q.new_empty(B, H, T, 1, dtype=torch.float32), q.new_empty(B, H, D, dtype=torch.float32),
            q.new_empty(B, H, D, D, dtype=torch.float32))


@torch.library.custom_op("quietlab::logit_variance_backward", mutates_args=())
def _logit_variance_backward(q: torch.Tensor, k: torch.Tensor, grad: torch.Tensor, mean: torch.Tensor,
                             cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q, k = _unit_last(q), _unit_last(k)
    B, H, T, D = q.shape
    dq = torch.empty(B, H, T, D, device=q.device, dtype=q.dtype)
    dk = torch.empty_like(dq)
    with _on(q.device):
        _backward_kernel[(B * H,)](q, k, grad.contiguous(), mean, cov, dq, dk, T, H, *_grid_args(q, k),
                                   D=D, BLOCK=BLOCK_T, PRECISION=_precision(q.dtype))
    return dq, dk


@_logit_variance_backward.register_fake
def _(q, k, grad, mean, cov):
    return torch.empty_like(q, memory_format=torch.contiguous_format), torch.empty_like(k, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    q, k = inputs
    _, mean, cov = output
    ctx.save_for_backward(q, k, mean, cov)
    ctx.mark_non_differentiable(mean, cov)


def _backward(ctx, grad_var, _grad_mean, _grad_cov):
    q, k, mean, cov = ctx.saved_tensors
    return _logit_variance_backward(q, k, grad_var, mean, cov)


_logit_variance.register_autograd(_backward, setup_context=_setup_context)


def _vmap_rule(info, in_dims, q, k):
    """Under vmap (packed models, train/packed.py) the models' axis joins the batch axis."""
    n = info.batch_size
    q = q.movedim(in_dims[0], 0) if in_dims[0] is not None else q.expand(n, *q.shape)
    k = k.movedim(in_dims[1], 0) if in_dims[1] is not None else k.expand(n, *k.shape)
    outs = _logit_variance(q.flatten(0, 1), k.flatten(0, 1))
    return tuple(o.unflatten(0, (n, -1)) for o in outs), (0, 0, 0)


_logit_variance.register_vmap(_vmap_rule)


def _backward_vmap_rule(info, in_dims, q, k, grad, mean, cov):
    n = info.batch_size
    flat = [(x.movedim(d, 0) if d is not None else x.expand(n, *x.shape)).flatten(0, 1)
            for x, d in zip((q, k, grad, mean, cov), in_dims)]
    return tuple(o.unflatten(0, (n, -1)) for o in _logit_variance_backward(*flat)), (0, 0)


_logit_variance_backward.register_vmap(_backward_vmap_rule)
