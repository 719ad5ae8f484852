"""The batched, preconditioned L-BFGS solver behind the logistic probes (see ``probes.py`` for the
objective and why the preconditioner is Böhning's bound).

``fit_logistic`` solves every output (sigmoid) or variable (softmax) of a chunk of (layer, position)
pairs at once, each its own problem with its own Armijo line search, memory and stopping test; pairs
whose problems have all stopped leave the batch. ``spd_inverse`` inverts the batched Gram matrices.

Layout. A chunk's activations X (P, N, D) carry the bias as their last column (1 where an example is
defined, 0 on padding), so that the parameters of a pair are one tensor θ (P, K, D): K rows of logits,
G problems of g consecutive rows each (g = 1 for a sigmoid output; for a softmax variable, the most
classes that a variable of the chunk has seen on train: classes never seen are not solved for), and the
solver sees θ as (P, G, g·D). Logits are θ Xᵀ (P, K, N), classes on a middle axis, where a softmax
over a few classes runs many times faster on a CPU than over the last axis.

The quasi-Newton memory is kept in compact form (Byrd, Nocedal and Schnabel 1994, theorem 2.2): per
problem, a ring of the last m steps S, gradient changes Y and their preconditioned A⁻¹Y, with the
inner products SᵀY and YᵀA⁻¹Y, so that a direction costs four batched products with the memory and
two m × m triangular solves, instead of the 2m vector operations per problem of the two-loop recursion (on a GPU each of
those is a kernel launch; on a CPU a pass over memory). In exact arithmetic it gives the same
directions.
"""

from __future__ import annotations

import functools

import torch

MASKED_LOGIT = -30.0  # logit given to classes never seen on a pair's probe-train side
HISTORY = 10  # steps in the quasi-Newton memory


def fit_logistic(X, w, y, kind, C, gram, l2, max_iter, tol, start=None, history=HISTORY, compact=None):
    """Logistic probes of a chunk, all pairs at once: (W (P, K, d), b (P, K), class_off, passes).

    X (P, N, d + 1): standardised activations with the bias column last (the solver's to overwrite:
    finished pairs are compacted out of it in place); w (P, N): example weights, summing to 1 per pair;
    y (P, N, k): labels (k softmax variables of C classes, or k sigmoid outputs); gram (P, d, d):
    XᵀΩX of the activation columns; ``l2``: the penalty λ, one number or one per pair (P,). Each output
    (sigmoid) or variable (softmax) is its own problem, sharing only the pair's preconditioner. ``start``: (W, b, has) in the standardised space, the
    starting point of the problems marked in has. class_off (P, 1, K) or None: the logit offsets of
    classes never seen on train (to add to the logits when evaluating). ``compact``: as in ``lbfgs``."""
    P, N, D = X.shape
    d = D - 1
    dev = X.device
    classes = None
    if kind == "categorical":
        G = y.shape[2]  # G softmax variables of C classes each
        onehot = torch.zeros(P, G, C, N, device=dev)
        onehot.scatter_(2, y.long().permute(0, 2, 1).unsqueeze(2), 1.0)
        onehot *= (w > 0)[:, None, None, :]
        freq = torch.einsum("pn,pgcn->pgc", w, onehot)
        present = freq > 0  # (P, G, C): classes seen on train
        frozen = present.sum(-1) <= 1  # (P, G): variable constant on train
        class_off = torch.where(present, 0.0, MASKED_LOGIT).reshape(P, G * C, 1)
        b = torch.log(freq.clamp(min=1e-6))
        b = b - b.mean(-1, keepdim=True)
        # only the classes seen on train are solved for: the chunk's variables keep their g = most seen
        # classes, seen ones first (padded with unseen ones, inert under their masked logit); an unseen class
        # keeps w = 0 and its starting bias, where its vanishing gradient (~e⁻³⁰) would leave it anyway
        g = max(1, int(present.sum(-1).max()))
        if g < C:
            classes = torch.argsort((~present).to(torch.int8), dim=-1, stable=True)[..., :g]  # (P, G, g)
            b_full, class_off_full = b, class_off
            onehot = onehot.gather(2, classes[..., None].expand(P, G, g, N))
            class_off = class_off.view(P, G, C).gather(2, classes).reshape(P, G * g, 1)
            b = b.gather(2, classes)
            if start is not None:
                W0, b0, has = start
                W0 = W0.reshape(P, G, C, d).gather(2, classes[..., None].expand(P, G, g, d))
                start = (W0, b0.reshape(P, G, C).gather(2, classes), has)
        target = onehot.reshape(P, G * g, N)
        curv = 0.5  # softmax Hessian ≤ ½ I ⊗ xxᵀ
    else:
        G, g = y.shape[2], 1
        target = y.float().transpose(1, 2).contiguous()  # (P, K, N)
        rate = torch.einsum("pn,pkn->pk", w, target)
        seen = (w > 0).float()
        ones = torch.einsum("pn,pkn->pk", seen, target)  # whole numbers: exact, unlike the weighted rate
        frozen = (ones <= 0) | (ones >= seen.sum(1)[:, None])
        b = torch.logit(rate.clamp(1e-4, 1 - 1e-4))
        class_off = None
        curv = 0.25  # sigmoid Hessian ≤ ¼ xxᵀ (Böhning)
    # Böhning's bound, inverted: the preconditioner of every problem of a pair (float32 is plenty for
    # it); the bias, uncorrelated with the centred activations, has the bound's curvature alone
    l2 = torch.as_tensor(l2, dtype=torch.float32, device=dev).expand(P).contiguous()
    Ainv = torch.zeros(P, D, D, device=dev)
    Ainv[:, :d, :d] = spd_inverse(curv * gram + l2[:, None, None] * torch.eye(d, device=dev), torch.float32)
    Ainv[:, d, d] = 1.0 / curv
    objective = LogisticObjective(X, w, target, class_off, (~frozen).float(), Ainv, kind, G, g, l2)
    theta = torch.zeros(P, G * g, D, device=dev)
    theta[..., d] = b.reshape(P, G * g)
    theta = theta.view(P, G, g * D)
    if start is not None:
        # the earlier probe where it is the better start: an earlier probe of separable data can sit
        # far out on a flat part of this objective, slower to leave than the origin; problems constant
        # on train keep the bias-only start
        W0, b0, has = start
        theta0 = torch.cat([W0.reshape(P, G * g, d), b0.reshape(P, G * g, 1)], 2).view(P, G, g * D)
        f0 = objective.value(theta0)
        use = has & ~frozen & torch.isfinite(f0) & (f0 < objective.value(theta))
        theta = torch.where(use[..., None], theta0, theta)
    if kind == "categorical":
        # the bound's curvature ½ overstates a C-class softmax's (its probability is spread over C classes)
        # about C/2-fold, and the bound-scaled step understates the distance left by as much
        tol = tol * min(1.0, 2.0 / C)
    theta, passes = lbfgs(objective, theta, ~frozen, max_iter, tol, history, compact=compact)
    if classes is not None:  # back to every class: the unseen keep w = 0 and their starting bias
        unsolved = torch.zeros(P, G, C, D, device=dev)
        unsolved[..., d] = b_full
        solved = unsolved.clone().scatter_(2, classes[..., None].expand(P, G, g, D), theta.view(P, G, g, D))
        theta = torch.where(present[..., None], solved, unsolved)
        g, class_off = C, class_off_full
    theta = theta.view(P, G * g, D)
    offsets = None if class_off is None else class_off.view(P, 1, G * g)
    return theta[..., :d].contiguous(), theta[..., d].contiguous(), offsets, passes


def _dot(a, b):
    """Per-problem inner products of (P, G, L) tensors: (P, G)."""
    return torch.linalg.vecdot(a, b)


class LogisticObjective:
    """The logistic objectives of a chunk's problems, Σ_i ω_i CE_i + ½ λ ‖W‖² per output (sigmoid) or
    variable (softmax), λ one per pair (``l2``, (P,)), with the data they need; ``select`` keeps some
    pairs. Parameters θ (P, G, g·D).

    X (P, N, D), w (P, N), target (P, K, N), class_off (P, K, 1) or None, live (P, G): 0 for problems
    that are not solved (their gradient is zero), Ainv (P, D, D)."""

    def __init__(self, X, w, target, class_off, live, Ainv, kind, G, g, l2):
        P, N, D = X.shape
        self.X, self.class_off, self.Ainv, self.kind, self.G, self.g, self.l2 = X, class_off, Ainv, kind, G, g, l2
        self.target, self.w = target, w
        live_rows = live.repeat_interleave(g, 1)[..., None]  # (P, K, 1)
        self.w_live = w[:, None, :] * live_rows  # example weights of each row's gradient
        self.neg_tw = -target * w[:, None, :]
        # the penalty's weight of each parameter: λ on weights, 0 on the bias; 0 where not solved
        pen = l2[:, None].expand(P, D).clone()
        pen[:, D - 1] = 0.0
        self.pen = pen.repeat(1, g)[:, None, :]  # (P, 1, g·D)
        self.pen_live = self.pen * live[..., None]  # (P, G, g·D)

    def select(self, keep: torch.Tensor) -> "LogisticObjective":
        """The objective of pairs ``keep`` (ascending) only; X is compacted in place (no new copy of it)."""
        for i, j in enumerate(keep.tolist()):
            if i != j:
                self.X[i].copy_(self.X[j])
        out = object.__new__(LogisticObjective)
        out.__dict__.update(self.__dict__)
        out.X = self.X[: len(keep)]
        for name in ("w", "target", "class_off", "Ainv", "w_live", "neg_tw", "pen", "pen_live"):
            t = getattr(self, name)
            setattr(out, name, t if t is None else t.index_select(0, keep))
        return out

    def _loss(self, theta):
        X, G, g = self.X, self.G, self.g
        P, N, D = X.shape
        Z = torch.bmm(theta.view(P, G * g, D), X.transpose(1, 2))  # (P, K, N)
        if self.kind == "categorical":
            if self.class_off is not None:
                Z += self.class_off
            logp = torch.log_softmax(Z.view(P, G, g, N), dim=2)
            data = _dot(logp.view(P, G, g * N), self.neg_tw.view(P, G, g * N))
            prob = logp.exp_().view(P, G * g, N)
        else:
            data = _dot(torch.nn.functional.softplus(Z), self.w[:, None, :]) + _dot(Z, self.neg_tw)
            prob = torch.sigmoid(Z)
        return torch.add(data, _dot(theta, theta * self.pen), alpha=0.5), prob

    def value(self, theta):
        """Objective (P, G) of every problem at θ (P, G, g·D)."""
        return self._loss(theta)[0]

    def __call__(self, theta):
        """Objective (P, G) and gradient (P, G, g·D) of every problem at θ (zero for those not solved)."""
        f, prob = self._loss(theta)
        grad = torch.bmm(torch.addcmul(self.neg_tw, prob, self.w_live), self.X).view(theta.shape)
        return f, torch.addcmul(grad, theta, self.pen_live)

    def precondition(self, v):
        """A⁻¹v: the bound (majorisation) step's inverse curvature applied to v (P, G, g·D)."""
        P, N, D = self.X.shape
        return torch.bmm(v.view(P, -1, D), self.Ainv).view(v.shape)

    def logit_move(self, grad, step):
        """How far the bound step −A⁻¹g (``step`` = A⁻¹g) would move the standardised logits: √(c·ΔᵀXᵀΩXΔ + c·Δb²),
        their RMS change over the training examples times √c. As A = cXᵀΩX + λI, that is Δᵀg − λ‖Δ_W‖²:
        what the penalty alone would move (weights along directions the data hardly spans, which no
        logit feels) is left out."""
        return _dot(torch.addcmul(grad, step, self.pen, value=-1.0), step).clamp_(min=0).sqrt_()


def lbfgs(objective, theta, active, max_iter, tol, history=HISTORY, ftol=1e-5, compact=None):
    """Preconditioned L-BFGS over a chunk's problems, each with its own Armijo line search, memory and
    stopping test: (θ, passes). Problems start at θ (P, G, L); those not ``active`` are left as they are.
    A problem stops when one bound-scaled (MM) step would move the standardised logits by less than about
    ``tol``, or when a full step no longer lowers its objective. With ``compact`` (default: on a CPU),
    finished pairs leave the batch, so that later passes cost only what is left; without it (on a GPU,
    where a pass costs less than the operations that compacting takes) the batch keeps its shape and
    the host looks at the device's progress only every fourth pass. Either way every problem takes
    the same steps (up to rounding)."""
    P, G, L = theta.shape
    dev, m = theta.device, history
    compact = dev.type == "cpu" if compact is None else compact
    theta_out = theta.clone()
    rows = torch.arange(P, device=dev)  # the pairs still in the batch
    f, g = objective(theta)
    p = objective.precondition(g)
    active = active & (objective.logit_move(g, p) >= tol)  # already converged: nothing to do
    # the memory: slot k holds step k mod m (s, y and A⁻¹y); SY[i, j] = s_iᵀy_j, YAY[i, j] = y_iᵀA⁻¹y_j;
    # steps that a problem does not use are stored as zeros and marked invalid (valid 0)
    S, Y, AY = theta.new_zeros(P, G, m, L), theta.new_zeros(P, G, m, L), theta.new_zeros(P, G, m, L)
    SY, YAY, valid = theta.new_zeros(P, G, m, m), theta.new_zeros(P, G, m, m), theta.new_zeros(P, G, m)
    zero = theta.new_zeros(())
    gamma = torch.ones_like(f)  # H0 = γA⁻¹, γ = sᵀy / yᵀA⁻¹y of the newest step in the memory
    direction = -p
    alpha = torch.ones_like(f)
    plain = torch.ones_like(active)  # direction is the bound (MM) step -A⁻¹g
    passes = 0
    for it in range(max_iter):
        if compact or it % 4 == 0:  # a host sync
            still = active.any(1)
            left = int(still.sum())
            if left == 0:
                break
            if left <= 0.75 * P and compact:  # drop the finished pairs from the batch
                theta_out[rows] = theta
                keep = still.nonzero().squeeze(1)
                rows, P, objective = rows[keep], left, objective.select(keep)
                theta, f, g, p, direction, alpha, gamma, plain, active, S, Y, AY, SY, YAY, valid = (
                    t.index_select(0, keep) for t in (theta, f, g, p, direction, alpha, gamma, plain, active, S, Y,
                                                      AY, SY, YAY, valid))
        slope = _dot(g, direction)
        theta_t = torch.addcmul(theta, (alpha * active)[..., None], direction)
        f_t, g_t = objective(theta_t)
        p_t = objective.precondition(g_t)
        passes += 1
        # Armijo, with a slack for float32 rounding of f (≥ 0): do not backtrack on noise (NaN fails)
        ok = active & (f_t <= torch.addcmul(f * (1 + 1e-6), alpha, slope, value=1e-4))
        k = it % m
        s = torch.sub(theta_t, theta, out=S[:, :, k])
        y = g_t - g
        sy = _dot(s, y)
        use = ok & (sy > 1e-12)
        # an unused step is stored as zeros (s is finite; y can be NaN where the trial point overflowed)
        s.mul_(use[..., None])
        y = torch.where(use[..., None], y, zero, out=Y[:, :, k])
        y_pre = torch.where(use[..., None], p_t - p, zero, out=AY[:, :, k])  # A⁻¹y
        valid[:, :, k] = use
        decrease = f - f_t
        rejected = active ^ ok  # active problems whose trial point failed the line search
        if compact and not bool(rejected.any()):
            # every active problem took its step (the common case; a CPU syncs here anyway): a problem that is
            # not active had a zero step, so its trial point is its own point, and no selection is needed
            theta, f, g, p = theta_t, f_t, g_t, p_t
        else:
            theta = torch.where(ok[..., None], theta_t, theta)
            f = torch.where(ok, f_t, f)
            g, p = torch.where(ok[..., None], g_t, g), torch.where(ok[..., None], p_t, p)
        # the new entry's inner products with the memory, and the memory's with the new gradient
        s_prod = _matvecs(S, y, g)  # s_iᵀy_k, s_iᵀg
        y_prod = _matvecs(Y, s, y_pre, p)  # y_iᵀs_k, y_iᵀA⁻¹y_k, y_iᵀA⁻¹g
        SY[..., :, k], SY[..., k, :] = s_prod[..., 0], y_prod[..., 0]
        YAY[..., :, k], YAY[..., k, :] = y_prod[..., 1], y_prod[..., 1]
        gamma = torch.where(use, sy / y_prod[..., k, 1].clamp(min=1e-30), gamma)
        # stop when one bound-scaled (MM) step would move the standardised logits by less than ~tol, or
        # when a full step no longer lowers the objective
        flat = decrease.abs_() <= (1e-6 + ftol) * f
        done = ok & ((objective.logit_move(g, p) < tol) | (flat & (alpha == 1)))
        failed = rejected & (alpha < 1e-3)  # the line search gave up on this direction
        stuck = failed & plain  # even the bound step, which cannot fail in exact arithmetic
        reset = failed ^ stuck  # a bad quasi-Newton direction: forget the memory, take the bound step
        active = active & ~(done | stuck)
        valid.mul_(~reset[..., None])
        gamma = torch.where(reset, 1.0, gamma)
        fresh = ok | reset
        Hg = _inverse_hessian_times(p, S, AY, SY, YAY, valid, gamma, k + 1, s_prod[..., 1], y_prod[..., 2])
        descent = (_dot(g, Hg) > 0) & ~reset  # H g must point uphill so that -H g descends
        direction = torch.where(fresh[..., None], -torch.where(descent[..., None], Hg, p), direction)
        plain = torch.where(fresh, ~descent, plain)
        alpha = torch.where(fresh, 1.0, alpha * 0.5)
    theta_out[rows] = theta
    return theta_out, passes


@functools.lru_cache(maxsize=None)
def _slot_orders(m: int, device: torch.device) -> torch.Tensor:
    """(m, m) long tensor on ``device`` whose row k lists the ring's slots from slot k on: (k + i) mod m
    (made once per memory length and device: no copy to the device in a pass)."""
    steps = torch.arange(m, device=device)
    return (steps[:, None] + steps[None, :]) % m


def _matvecs(M, *vectors):
    """M (P, G, m, L) times each of the vectors (P, G, L), in one pass over M: (P, G, m, len(vectors))."""
    P, G, m, L = M.shape
    V = torch.stack(vectors, -2).view(P * G, len(vectors), L)
    return torch.bmm(M.view(P * G, m, L), V.transpose(1, 2)).view(P, G, m, len(vectors))


def _inverse_hessian_times(p, S, AY, SY, YAY, valid, gamma, shift, Sg, YAg):
    """H g for the L-BFGS inverse Hessian H of every problem, from H0 = γA⁻¹ and the valid memory
    entries, in compact form: H g = γ(A⁻¹g − A⁻¹Y a) + S t, a = R⁻¹Sᵀg, t = R⁻ᵀ((D + γYᵀA⁻¹Y) a − γYᵀA⁻¹g),
    R the upper triangle of SᵀY in chronological order, D its diagonal. ``p`` = A⁻¹g; ``Sg``, ``YAg``:
    Sᵀg and YᵀA⁻¹g (P, G, m) in slot order; slots ``shift``, ``shift`` + 1, ... (mod m) are the steps in
    chronological order."""
    m = S.shape[2]
    order = _slot_orders(m, S.device)
    to_chrono, to_slots = order[shift % m], order[-shift % m]  # slot of each step, oldest first; the inverse

    def chrono(t, dims=(-1,)):
        for dim in dims:
            t = t.index_select(dim, to_chrono)
        return t

    v = chrono(valid)
    both = v[..., :, None] * v[..., None, :]
    SYc = chrono(SY, (-2, -1))
    R = torch.triu(SYc).mul_(both) + torch.diag_embed(1 - v)  # invalid entries: identity rows, no effect
    Dg = SYc.diagonal(dim1=-2, dim2=-1) * v
    a = torch.linalg.solve_triangular(R, (chrono(Sg) * v)[..., None], upper=True)
    rhs = (chrono(YAY, (-2, -1)) * both) @ a - (chrono(YAg) * v)[..., None]
    rhs = torch.addcmul(Dg[..., None] * a, gamma[..., None, None], rhs)
    t = torch.linalg.solve_triangular(R.transpose(-1, -2), rhs, upper=False)
    P, G, m, L = S.shape
    a, t = a.view(P * G, 1, m).index_select(-1, to_slots), t.view(P * G, 1, m).index_select(-1, to_slots)
    AYa = torch.bmm(a, AY.view(P * G, m, L)).view(P, G, L)
    St = torch.bmm(t, S.view(P * G, m, L)).view(P, G, L)
    return torch.addcmul(St, gamma[..., None], p - AYa)


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
