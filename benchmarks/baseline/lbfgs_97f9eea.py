"""Frozen copy of src/quietlab/monitor/lbfgs.py at commit 97f9eea (main before the probe-speed work of
issue 16), imports made absolute: the "before" arm of benchmarks/probe_step.py. Not part of the package;
do not edit.

The batched, preconditioned L-BFGS solver behind the logistic probes (see ``probes.py`` for the
objective and why the preconditioner is Böhning's bound).

``fit_logistic`` solves every output (sigmoid) or variable (softmax) of a chunk of (layer, position)
pairs at once, each its own problem with its own Armijo line search, memory and stopping test; pairs
whose problems have all stopped leave the batch. ``spd_inverse`` inverts the batched Gram matrices.
"""

from __future__ import annotations

import torch

MASKED_LOGIT = -30.0  # logit given to classes never seen on a pair's probe-train side


def fit_logistic(X, w, y, kind, C, gram, l2, max_iter, tol, start=None):
    """Logistic probes of a chunk, all pairs at once: (W (P, K, d), b (P, K), class_off, passes).

    Each output (sigmoid) or variable (softmax) is its own problem, sharing only the pair's preconditioner.
    ``start``: (W, b, has) in the standardised space, the starting point of the problems marked in has.
    X is the solver's to overwrite (finished pairs are compacted out of it in place)."""
    P, N, d = X.shape
    dev = X.device
    if kind == "categorical":
        G, g = y.shape[2], C  # G softmax variables of C classes each
        labels = y.long()
        onehot = torch.zeros(P, N, G, C, device=dev)
        onehot.scatter_(3, labels.unsqueeze(-1), 1.0)
        onehot = onehot * (w > 0)[..., None, None]
        freq = torch.einsum("pn,pnkc->pkc", w, onehot)
        present = freq > 0  # (P, G, C): classes seen on train
        frozen = present.sum(-1) <= 1  # (P, G): variable constant on train
        class_off = torch.where(present, 0.0, MASKED_LOGIT).reshape(P, 1, G * C)
        b = torch.log(freq.clamp(min=1e-6))
        b = b - b.mean(-1, keepdim=True)
        target = onehot.reshape(P, N, G * C)
        curv = 0.5  # softmax Hessian ≤ ½ I ⊗ xxᵀ
    else:
        G, g = y.shape[2], 1
        target = y.float()
        rate = torch.einsum("pn,pnk->pk", w, target)
        frozen = (rate <= 0) | (rate >= 1)
        b = torch.logit(rate.clamp(1e-4, 1 - 1e-4)).view(P, G, 1)
        class_off = None
        curv = 0.25  # sigmoid Hessian ≤ ¼ xxᵀ (Böhning)
    # Böhning's bound, inverted: the preconditioner of every problem of a pair (float32 is plenty for it)
    Ainv = spd_inverse(curv * gram + l2 * torch.eye(d, device=dev), torch.float32)
    objective = LogisticObjective(X, w, target, class_off, (~frozen).float()[..., None], Ainv, curv, kind, G, g, l2)
    W = torch.zeros(P, G, g, d, device=dev)
    if start is not None:
        # the earlier probe where it is the better start: an earlier probe of separable data can sit
        # far out on a flat part of this objective, slower to leave than the origin; problems constant
        # on train keep the bias-only start
        W0, b0, has = start
        W0, b0 = W0.view(P, G, g, d), b0.view(P, G, g)
        f0 = objective.value(W0, b0)
        use = has & ~frozen & torch.isfinite(f0) & (f0 < objective.value(W, b))
        W, b = torch.where(use[..., None, None], W0, W), torch.where(use[..., None], b0, b.view(P, G, g))
    if kind == "categorical":
        # the bound's curvature ½ overstates a C-class softmax's (its probability is spread over C classes)
        # about C/2-fold, and the bound-scaled step understates the distance left by as much
        tol = tol * min(1.0, 2.0 / C)
    W, b, passes = lbfgs(objective, W, b, ~frozen, max_iter, tol)
    return W.reshape(P, G * g, d), b.reshape(P, G * g), class_off, passes


class LogisticObjective:
    """The logistic objectives of a chunk's problems, Σ_i ω_i CE_i + ½ λ ‖W‖² per output (sigmoid) or
    variable (softmax), with the data they need; ``select`` keeps some pairs."""

    def __init__(self, X, w, target, class_off, live, Ainv, curv, kind, G, g, l2):
        self.X, self.w, self.target, self.class_off, self.live, self.Ainv = X, w, target, class_off, live, Ainv
        self.curv, self.kind, self.G, self.g, self.l2 = curv, kind, G, g, l2

    def select(self, keep: torch.Tensor) -> "LogisticObjective":
        """The objective of pairs ``keep`` (ascending) only; X is compacted in place (no new copy of it)."""
        for i, j in enumerate(keep.tolist()):
            if i != j:
                self.X[i].copy_(self.X[j])
        pick = [t if t is None else t.index_select(0, keep) for t in (self.w, self.target, self.class_off, self.live,
                                                                     self.Ainv)]
        return LogisticObjective(self.X[: len(keep)], *pick, self.curv, self.kind, self.G, self.g, self.l2)

    def _loss(self, W, b):
        X, G, g = self.X, self.G, self.g
        P, N, d = X.shape
        K = G * g
        Z = torch.baddbmm(b.view(P, 1, K), X, W.view(P, K, d).transpose(1, 2))  # (P, N, K)
        if self.kind == "categorical":
            logp = torch.log_softmax((Z + self.class_off).view(P, N, G, g), dim=-1)
            loss = -(logp * self.target.view(P, N, G, g)).sum(3)
            prob = logp.exp().view(P, N, K)
        else:
            loss = torch.nn.functional.softplus(Z) - self.target * Z
            prob = torch.sigmoid(Z)
        f = torch.einsum("pn,pnk->pk", self.w, loss) + 0.5 * self.l2 * (W * W).sum((2, 3))
        return f, prob

    def value(self, W, b):
        """Objective (P, G) of every problem at W (P, G, g, d), b (P, G, g)."""
        return self._loss(W, b)[0]

    def __call__(self, W, b):
        """Objective (P, G) and gradient (gW, gb) of every problem at W, b."""
        f, prob = self._loss(W, b)
        P, G, g, d = W.shape
        R = (prob - self.target) * self.w[..., None]
        gW = torch.bmm(R.transpose(1, 2), self.X).view(P, G, g, d)
        gW = (gW + self.l2 * W) * self.live[..., None]
        gb = R.sum(1).view(P, G, g) * self.live
        return f, gW, gb

    def logit_move(self, gW, gb, pW, pb):
        """How far the bound step −(pW, pb) = −A⁻¹g would move the standardised logits: √(c·ΔᵀXᵀΩXΔ + Δb²·c),
        their RMS change over the training examples times √c. As A = cXᵀΩX + λI, c·ΔᵀXᵀΩXΔ = Δᵀg − λ‖Δ‖²:
        what the penalty alone would move (weights along directions the data hardly spans, which no
        logit feels) is left out."""
        inner = (gW * pW).sum((2, 3)) - self.l2 * (pW * pW).sum((2, 3)) + (gb * pb).sum(2)
        return inner.clamp(min=0).sqrt()

    def precondition(self, gW, gb):
        """H0·(gW, gb): the bound (majorisation) step's inverse curvature."""
        P, G, g, d = gW.shape
        return torch.bmm(gW.view(P, G * g, d), self.Ainv).view(P, G, g, d), gb / self.curv


def lbfgs(objective, W, b, active, max_iter, tol, history=10, ftol=1e-5):
    """Preconditioned L-BFGS over a chunk's problems, each with its own Armijo line search, memory and
    stopping test: (W, b, passes). Problems start at (W, b); those not ``active`` are left as they are.
    A problem stops when one bound-scaled (MM) step would move the standardised logits by less than about
    ``tol``, or when a full step no longer lowers its objective. On a CPU, finished pairs leave the batch."""
    P = W.shape[0]
    dev = W.device

    def dot(aW, ab, bW, bb):
        return (aW * bW).sum((2, 3)) + (ab * bb).sum(2)

    def e4(v):  # (P, G) -> broadcastable against (P, G, g, d)
        return v[..., None, None]

    def e3(v):
        return v[..., None]

    W_out, b_out = W.clone(), b.clone()
    rows = torch.arange(P, device=dev)  # the pairs still in the batch
    f, gW, gb = objective(W, b)
    pW, pb = objective.precondition(gW, gb)
    active = active & (objective.logit_move(gW, gb, pW, pb) >= tol)  # already converged: nothing to do
    mem = []  # (sW, sb, yW, yb, rho, yᵀH0y), newest last; rho = 0 marks an entry a problem does not use
    dW, db = -pW, -pb
    alpha = torch.ones_like(f)
    plain = torch.ones_like(active)  # direction is the bound (MM) step -H0 g
    passes = 0
    for it in range(1, max_iter + 1):
        if dev.type == "cpu" or it % 4 == 1:  # a device sync: on a GPU not every iteration
            still = active.any(1)
            left = int(still.sum())
            if left == 0:
                break
            if left <= 0.75 * P and dev.type == "cpu":
                # drop the finished pairs from the batch, so that later passes over X cost only what is left
                # (not on a GPU: there a pass costs less than the kernel launches that compacting takes)
                W_out[rows], b_out[rows] = W, b
                keep = still.nonzero().squeeze(1)
                rows, P, objective = rows[keep], left, objective.select(keep)
                W, b, f, gW, gb, dW, db, alpha, plain, active = (
                    t.index_select(0, keep) for t in (W, b, f, gW, gb, dW, db, alpha, plain, active))
                mem = [tuple(t.index_select(0, keep) for t in entry) for entry in mem]
        slope = dot(gW, gb, dW, db)
        step = alpha * active
        Wt, bt = W + e4(step) * dW, b + e3(step) * db
        ft, gWt, gbt = objective(Wt, bt)
        passes += 1
        slack = 1e-6 * f.abs()  # float32 rounding of f: do not backtrack on noise
        ok = active & torch.isfinite(ft) & (ft <= f + 1e-4 * alpha * slope + slack)  # Armijo
        sW, sb = torch.where(e4(ok), Wt - W, 0.0), torch.where(e3(ok), bt - b, 0.0)
        yW, yb = torch.where(e4(ok), gWt - gW, 0.0), torch.where(e3(ok), gbt - gb, 0.0)
        sy = dot(sW, sb, yW, yb)
        rho = torch.where(ok & (sy > 1e-12), 1.0 / sy.clamp(min=1e-12), torch.zeros_like(sy))
        yHy = dot(yW, yb, *objective.precondition(yW, yb))  # for the H0 scaling, computed once per entry
        mem = (mem + [(sW, sb, yW, yb, rho, yHy)])[-history:]
        decrease = f - ft
        W, b = torch.where(e4(ok), Wt, W), torch.where(e3(ok), bt, b)
        f = torch.where(ok, ft, f)
        gW, gb = torch.where(e4(ok), gWt, gW), torch.where(e3(ok), gbt, gb)
        pW, pb = objective.precondition(gW, gb)
        move = objective.logit_move(gW, gb, pW, pb)
        # stop when one bound-scaled (MM) step would move the standardised logits by less than ~tol, or
        # when a full step no longer lowers the objective
        flat = decrease.abs() <= slack + ftol * f.abs()
        done = ok & ((move < tol) | (flat & (alpha == 1)))
        failed = ~ok & active & (alpha < 1e-3)  # the line search gave up on this direction
        stuck = failed & plain  # even the bound step, which cannot fail in exact arithmetic
        reset = failed & ~plain  # a bad quasi-Newton direction: forget the memory, take the bound step
        active = active & ~done & ~stuck
        # forget the reset problems' memory (no `if reset.any()`: a device sync every iteration costs
        # more on a GPU than these few elementwise ops)
        mem = [(a, b_, c, d_, torch.where(reset, 0.0, r), yhy) for a, b_, c, d_, r, yhy in mem]
        fresh = ok | reset
        # two-loop recursion (entries with rho = 0 are no-ops)
        qW, qb = gW, gb
        coef = []
        for sW_, sb_, yW_, yb_, r, _ in reversed(mem):
            a = r * dot(sW_, sb_, qW, qb)
            coef.append(a)
            qW, qb = qW - e4(a) * yW_, qb - e3(a) * yb_
        rW, rb = objective.precondition(qW, qb)
        gamma = torch.ones_like(alpha)  # H0 scaled by the newest usable sᵀy / yᵀH0y
        for *_, r, yhy in mem:
            gamma = torch.where(r > 0, 1.0 / (r * yhy).clamp(min=1e-30), gamma)
        rW, rb = rW * e4(gamma), rb * e3(gamma)
        for (sW_, sb_, yW_, yb_, r, _), a in zip(mem, reversed(coef)):
            bcoef = r * dot(yW_, yb_, rW, rb)
            rW, rb = rW + e4(a - bcoef) * sW_, rb + e3(a - bcoef) * sb_
        descent = (dot(gW, gb, rW, rb) > 0) & ~reset  # H g must point uphill so that -H g descends
        rW, rb = torch.where(e4(descent), rW, pW), torch.where(e3(descent), rb, pb)
        dW, db = torch.where(e4(fresh), -rW, dW), torch.where(e3(fresh), -rb, db)
        plain = torch.where(fresh, ~descent, plain)
        alpha = torch.where(fresh, torch.ones_like(alpha), alpha * 0.5)
    W_out[rows], b_out[rows] = W, b
    return W_out, b_out, passes


def spd_inverse(A: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
    """Inverse of a batch of symmetric positive definite matrices, factorised in ``dtype``; a matrix whose
    factorisation fails (rounding in a rank-deficient Gram matrix) gets a growing ridge until it works."""
    A64 = A.to(dtype)
    A64 = 0.5 * (A64 + A64.transpose(1, 2))
    eye = torch.eye(A.shape[-1], dtype=dtype, device=A.device)
    scale = A64.diagonal(dim1=1, dim2=2).mean(-1).clamp(min=1e-12)
    L, info = torch.linalg.cholesky_ex(A64)
    for k in range(1, 8):
        bad = info != 0
        if not bool(bad.any()):
            break
        jitter = (scale * 10.0 ** (k - 9)) * bad
        L2, info2 = torch.linalg.cholesky_ex(A64 + jitter[:, None, None] * eye)
        L = torch.where(bad[:, None, None], L2, L)
        info = torch.where(bad, info2, info)
    return torch.cholesky_inverse(L).to(A.dtype)
