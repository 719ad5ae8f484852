"""Frozen copy of src/quietlab/monitor/probes.py at commit 97f9eea (main before the probe-speed work of
issue 16), imports made absolute: the "before" arm of benchmarks/probe_step.py. Not part of the package;
do not edit.

Linear probes on the residual stream, fitted for every (layer, position) of a checkpoint at once.

A probe reads one feature (see ``tasks.base.Feature``) from the activations at one layer and one token
position. A layer is named by its hook (``hook_embed``, ``blocks.{l}.hook_resid_post``; see ``models.hooks``).

Kinds and models (all linear in the activation x, fitted on standardised x, reported in x's own space):

- ``binary`` / ``multilabel``: k independent logistic regressions (sigmoid per label);
- ``categorical``: k independent multinomial logistic regressions (softmax per variable over n_classes);
- ``scalar``: ridge regression, closed form, k outputs.

Objective per pair (classification), with weights ω_i = 1/n over the n training examples defined there:
    Σ_i ω_i CE_i(W, b) + ½ λ ‖W‖²          (bias unpenalised; λ = ``l2``; sklearn's C = 1 / (λ n))
and for ridge Σ_i ω_i ‖y_i − W x_i − b‖² + λ ‖W‖² (sklearn's alpha = λ n), both on standardised x.

All pairs of a chunk are solved together in torch (CPU or GPU): activations are copied once into X of
shape (P, N, d), standardised in place, with per-pair example weights (zero where the feature is
undefined). The features of one solver family whose masks agree at a position share one multi-output
problem there (one copy of the activations, one Gram matrix): e.g. all bit features of an answer digit.
Logistic fits run a batched, preconditioned L-BFGS: Böhning's bound (the logistic Hessian is at most
¼ XᵀΩX, the softmax Hessian at most ½ I ⊗ XᵀΩX) gives one fixed preconditioner per pair,
A = c XᵀΩX + λI (XᵀΩX estimated from ~1,000 examples, inverted once), used as L-BFGS's initial inverse
Hessian; the bound step −A⁻¹∇f is a safe descent step, and the quasi-Newton memory makes the method
converge in tens of passes. Every output (sigmoid) or variable (softmax) is its own problem, with its
own Armijo line search, memory and stopping test; pairs whose problems have all stopped leave the batch,
so that the slow few do not keep every pass at full size. Ridge is one exact solve per pair.

Metrics on the probe-test examples (mean over the k outputs when k > 1):
``acc`` (accuracy), ``logloss`` (mean cross-entropy, nats), ``acc_lo``/``acc_hi`` (95% Wilson interval;
for k > 1 with the effective sample size n·p(1−p)/s², s² the variance over test examples of their
mean-over-outputs correctness, so correlated outputs do not narrow it), ``n_test``; for scalars ``r2``,
``mse``, ``r2_lo``/``r2_hi`` (95% bootstrap interval over test examples, fixed seed), ``n_test``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from quietlab.models.hooks import EMBED, block_of, depth
from quietlab.tasks.base import Feature
from .lbfgs_97f9eea import fit_logistic, spd_inverse

CLASSIFICATION = ("binary", "multilabel", "categorical")
Z95 = 1.959963984540054
PRECONDITIONER_EXAMPLES = 1024  # examples behind a logistic probe's preconditioner (its Gram matrix)


# --------------------------------------------------------------------------------------------------
# results
@dataclass
class ProbeResult:
    """Probes of one feature at every fitted (layer, position) pair, in the order of ``pairs``.

    ``weight``: (P, k, d) for binary/multilabel/scalar, (P, k, C, d) for categorical; ``bias``: (P, k)
    or (P, k, C). Both act on the ORIGINAL activations: output = weight · x + bias (a logit, class
    logits, or the predicted value). ``metrics[name]`` is a (P,) float64 array (names in the module
    docstring); ``per_output`` (P, k): accuracy (R² for scalars) of each output on its own.
    ``skipped``: (layer, position, reason) of pairs not fitted; ``n_iter``: solver passes used.
    """

    feature: str
    kind: str
    pairs: list[tuple[str, int]]
    weight: torch.Tensor
    bias: torch.Tensor
    metrics: dict[str, np.ndarray]
    per_output: np.ndarray
    n_train: np.ndarray
    skipped: list[tuple[str, int, str]] = field(default_factory=list)
    n_iter: int = 0

    @property
    def main_metric(self) -> str:
        return "r2" if self.kind == "scalar" else "acc"

    def index(self, layer: str, position: int) -> int:
        return self.pairs.index((str(layer), int(position)))

    def probe(self, layer: str, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(w, b) of the probe at (layer, position): x → w·x + b in residual space."""
        i = self.index(layer, position)
        return self.weight[i], self.bias[i]

    def get(self, layer: str, position: int) -> dict[str, float]:
        i = self.index(layer, position)
        return {k: float(v[i]) for k, v in self.metrics.items()}

    def grid(self, metric: str | None = None) -> tuple[list[str], list[int], np.ndarray]:
        """(layers in depth order, positions, values (L, T) with NaN where no probe was fitted)."""
        metric = metric or self.main_metric
        layers = sorted({l for l, _ in self.pairs}, key=depth)
        positions = sorted({t for _, t in self.pairs})
        out = np.full((len(layers), len(positions)), np.nan)
        li, ti = {l: i for i, l in enumerate(layers)}, {t: i for i, t in enumerate(positions)}
        for (l, t), v in zip(self.pairs, self.metrics[metric]):
            out[li[l], ti[t]] = v
        return layers, positions, out

    def rows(self, step: int, name: str | None = None) -> list[tuple]:
        """Store rows (step, feature, layer, position, metric, value) of every fitted pair."""
        name = name or self.feature
        rows = []
        for metric, values in self.metrics.items():
            for (l, t), v in zip(self.pairs, values):
                if np.isfinite(v):
                    rows.append((int(step), name, str(l), int(t), metric, float(v)))
        return rows


# --------------------------------------------------------------------------------------------------
# helpers used by the monitor and the CLI
def split_probe_set(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint probe-train / probe-test indices into a probe set of ``n`` held-out examples."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def residual_taps(model) -> list[str]:
    """The model's residual-stream taps in depth order: ``hook_embed``, ``blocks.{l}.hook_resid_post``."""
    names = [n for n in model.tap_names() if n == EMBED or n.endswith(".hook_resid_post") and block_of(n) is not None]
    return sorted(names, key=depth)


@torch.no_grad()
def capture_layers(model, tokens, batch_size: int = 500, device=None, layers: Iterable[str] | None = None,
                   dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Residual-stream activations {hook name: (N, T, d)} of ``tokens`` (numpy or tensor), in eval mode.

    Kept on ``device`` (default: the model's), in ``dtype``."""
    taps = residual_taps(model) if layers is None else list(layers)
    p = next(model.parameters())
    device = torch.device(device) if device is not None else p.device
    tokens = torch.as_tensor(np.asarray(tokens) if not isinstance(tokens, torch.Tensor) else tokens).long()
    was_training = model.training
    model.eval()
    try:
        chunks: dict[str, list[torch.Tensor]] = {l: [] for l in taps}
        for s in range(0, len(tokens), batch_size):
            _, acts = model(tokens[s : s + batch_size].to(p.device), capture=taps)
            for l in taps:
                chunks[l].append(acts[l].to(device=device, dtype=dtype))
    finally:
        model.train(was_training)
    return {l: torch.cat(c) for l, c in chunks.items()}


def wilson_interval(p: np.ndarray, n: np.ndarray, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a proportion ``p`` observed on ``n`` (possibly fractional) trials."""
    p, n = np.asarray(p, float), np.maximum(np.asarray(n, float), 1e-12)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(np.maximum(p * (1 - p) / n + z * z / (4 * n * n), 0)) / denom
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


# --------------------------------------------------------------------------------------------------
# fitting
def fit_probes(acts: Mapping[str, torch.Tensor], feature: Feature, train_idx: Sequence[int], test_idx: Sequence[int],
               *, name: str = "", **kwargs) -> ProbeResult:
    """Fit one probe per (layer, position) where ``feature`` is defined, all pairs batched.

    ``acts[layer]``: (N, T, d) activations of the probe set, keyed by hook name (``capture_layers``);
    ``feature``: the labels of the same N examples; ``train_idx`` / ``test_idx``: disjoint indices into
    the probe set. Keyword options as in ``fit_features``.
    """
    return fit_features(acts, {name: feature}, train_idx, test_idx, **kwargs)[name]


def fit_features(
    acts: Mapping[str, torch.Tensor],
    features: Mapping[str, Feature],
    train_idx: Sequence[int],
    test_idx: Sequence[int],
    *,
    layers: Iterable[str] | None = None,
    positions: Iterable[int] | None = None,
    l2: float = 1e-3,
    max_iter: int = 100,
    tol: float = 1e-2,
    min_train: int = 8,
    min_test: int = 4,
    device=None,
    max_chunk_bytes: int | None = None,
    bootstrap: int = 400,
    seed: int = 0,
    standardize: bool = True,
    init: Mapping[str, ProbeResult] | None = None,
) -> dict[str, ProbeResult]:
    """Probes of several features on the same activations: {name: ProbeResult}.

    Features of one solver family (sigmoid: binary + multilabel; softmax with the same n_classes;
    ridge) whose masks agree at a position are solved together there as one multi-output problem: their
    outputs are independent, so this gives the same probes as fitting them one by one, for the price of
    one pass over the activations.

    A pair is skipped for a feature (listed in ``result.skipped``) when the feature is defined on fewer
    than ``min_train`` probe-train or ``min_test`` probe-test examples there, or is constant on its
    probe-train examples. Outputs of a multi-output feature that are constant on train keep a
    bias-only probe (w = 0) and still count in the mean over outputs. ``tol``: a problem stops when a
    bound-scaled Newton step would move the standardised logits by less than ``tol`` (√c times their
    RMS change over the training examples, c the bound's curvature: ¼ sigmoid, ½ softmax; a C-class
    softmax stops at tol·2/C), or the objective stops falling;
    ``max_iter`` caps the passes. The default, 0.01, leaves test accuracies 0.0009 from the exact
    optimum's on average (at most 0.0075, over the 165 probes of benchmarks/probe_speed.py), closer than
    scikit-learn's default fit gets (0.0036, at most 0.0175). ``max_chunk_bytes`` bounds the memory of
    one batch of pairs (default 256 MiB on CPU; on a GPU 40% of its free memory, at most 8 GiB).
    ``standardize=False`` fits on centred but unscaled activations, so that the L2 penalty acts on the
    weights in residual space (as scikit-learn's probes on raw activations do); the ablations use it.
    ``init``: earlier ProbeResults of the same features (the monitor's previous checkpoint), whose
    probes start the logistic fits at the pairs they share: the optimum moves little between nearby
    checkpoints, so the solver needs far fewer passes. The optimum reached does not depend on it.
    """
    train_idx = np.asarray(train_idx, dtype=np.int64)
    test_idx = np.asarray(test_idx, dtype=np.int64)
    if np.intersect1d(train_idx, test_idx).size:
        raise ValueError("probe-train and probe-test examples overlap")
    layer_list = sorted(acts, key=depth) if layers is None else [str(l) for l in layers]
    first = acts[layer_list[0]]
    N, T, d = first.shape
    for name, f in features.items():
        if f.values.shape[:2] != (N, T):
            raise ValueError(f"feature {name!r} of shape {f.values.shape[:2]} does not match activations {(N, T)}")
    device = torch.device(device) if device is not None else first.device
    if max_chunk_bytes is None:
        max_chunk_bytes = 256 << 20
        if device.type == "cuda":  # big batches: a GPU is bound by kernel launches, not by memory
            free, _ = torch.cuda.mem_get_info(device)
            max_chunk_bytes = int(min(8 << 30, 0.4 * free))
    pos_list = list(range(T)) if positions is None else [int(t) for t in positions]

    # one problem per solver family and position: the features of a family whose masks agree at a position
    # share its activations and Gram matrix (e.g. every bit feature of an addition answer digit)
    families: dict[tuple[str, int], list[str]] = {}
    for name, f in features.items():
        family = _FAMILY[f.kind]
        families.setdefault((family, int(f.n_classes) if family == "softmax" else 0), []).append(name)
    problems: dict[tuple, list[int]] = {}
    for (family, C), names in families.items():
        for t in pos_list:
            sharing: dict[bytes, list[str]] = {}
            for n in names:
                column = features[n].mask[:, t]
                if column.any():
                    sharing.setdefault(column.tobytes(), []).append(n)
            for together in sharing.values():
                problems.setdefault((family, C, tuple(together)), []).append(t)

    parts: dict[str, list[ProbeResult]] = {name: [] for name in features}
    buffers = ([], [])  # reused activation copies (probe-train, probe-test) of a chunk
    with _full_precision():
        for (family, C, names), positions in problems.items():
            feats = [features[n] for n in names]
            fitted = _fit_group(acts, names, feats, family, C, train_idx, test_idx, layer_list, positions, device,
                                l2, max_iter, tol, min_train, min_test, max_chunk_bytes, bootstrap, seed,
                                buffers, standardize, init if family != "ridge" else None)
            for name, result in fitted.items():
                parts[name].append(result)
    return {name: _merge(name, features[name], parts[name], d) for name in features}


_FAMILY = {"binary": "sigmoid", "multilabel": "sigmoid", "categorical": "softmax", "scalar": "ridge"}


def _unfitted(name: str, feature: Feature, d: int, skipped=()) -> ProbeResult:
    """A ProbeResult with no fitted pair."""
    shape = (0, feature.k, feature.n_classes, d) if feature.kind == "categorical" else (0, feature.k, d)
    metric_names = _METRICS["scalar" if feature.kind == "scalar" else "classification"]
    return ProbeResult(feature=name, kind=feature.kind, pairs=[], weight=torch.zeros(shape),
                       bias=torch.zeros(shape[:-1]), metrics={m: np.zeros(0) for m in metric_names},
                       per_output=np.zeros((0, feature.k)), n_train=np.zeros(0), skipped=list(skipped))


def _merge(name: str, feature: Feature, parts: list[ProbeResult], d: int) -> ProbeResult:
    """One feature's ProbeResult from the problems it was fitted in, pairs in (layer, position) order."""
    if not parts:
        return _unfitted(name, feature, d)
    if len(parts) == 1:
        return parts[0]
    pairs = [pair for r in parts for pair in r.pairs]
    order = sorted(range(len(pairs)), key=lambda i: (depth(pairs[i][0]), pairs[i][1]))
    take = None if order == list(range(len(pairs))) else order
    return ProbeResult(
        feature=name, kind=feature.kind, pairs=[pairs[i] for i in order],
        weight=_joined([r.weight for r in parts], take), bias=_joined([r.bias for r in parts], take),
        metrics={m: _joined([r.metrics[m] for r in parts], take) for m in parts[0].metrics},
        per_output=_joined([r.per_output for r in parts], take), n_train=_joined([r.n_train for r in parts], take),
        skipped=sorted(s for r in parts for s in r.skipped), n_iter=max(r.n_iter for r in parts))


def _joined(pieces: list, take: list[int] | None):
    """Tensors or arrays concatenated along their first axis, then rows ``take`` (None: all), copying once."""
    if isinstance(pieces[0], torch.Tensor):
        whole = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
        return whole.contiguous() if take is None else whole.index_select(0, torch.as_tensor(take))
    whole = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    return whole if take is None else whole[take]


@contextlib.contextmanager
def _full_precision():
    """float32 matrix products in full precision while probes are fitted (the training loop may have
    switched TF32 on, whose 10-bit mantissa is too coarse for Gram matrices)."""
    old = torch.get_float32_matmul_precision()
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)
        torch.backends.cuda.matmul.allow_tf32 = old_tf32


def _fit_group(acts, names, feats, family, C, train_idx, test_idx, layer_list, pos_list, device, l2, max_iter,
               tol, min_train, min_test, max_chunk_bytes, bootstrap, seed, buffers, standardize=True, init=None):
    first = acts[layer_list[0]]
    N, T, d = first.shape
    mask = feats[0].mask
    mask_tr, mask_te = mask[train_idx], mask[test_idx]
    dtype = np.int64 if family == "softmax" else np.float32
    vals = np.concatenate([f.values.astype(dtype, copy=False) for f in feats], axis=2)
    vals_tr, vals_te = vals[train_idx], vals[test_idx]
    bounds = np.cumsum([0] + [f.k for f in feats])
    slices = [slice(int(bounds[i]), int(bounds[i + 1])) for i in range(len(feats))]

    # per feature: the positions it can be probed at
    usable = {n: [] for n in names}
    skipped = {n: [] for n in names}
    for t in pos_list:
        ntr, nte = int(mask_tr[:, t].sum()), int(mask_te[:, t].sum())
        if ntr == 0:
            continue  # undefined here: not a probe site at all
        if ntr < min_train or nte < min_test:
            for n in names:
                skipped[n] += [(l, t, "too few examples") for l in layer_list]
            continue
        v = vals_tr[mask_tr[:, t], t]
        for n, sl in zip(names, slices):
            if np.all(v[:, sl] == v[:1, sl]):
                skipped[n] += [(l, t, "constant") for l in layer_list]
            else:
                usable[n].append(t)
    fit_pos = sorted(set().union(*usable.values()))
    pairs = [(l, t) for l in layer_list for t in fit_pos]

    bytes_per_pair = (len(train_idx) + len(test_idx)) * (d * 4 + vals.shape[2] * C * 4 * 4 + 64) + d * d * 16
    chunk = max(1, int(max_chunk_bytes // bytes_per_pair))
    parts, n_iter = [], 0
    tr_i, te_i = (torch.as_tensor(i, device=first.device) for i in (train_idx, test_idx))
    for s in range(0, len(pairs), chunk):
        sub = pairs[s : s + chunk]
        ts = [t for _, t in sub]
        Xtr, Xte = _gather(acts, sub, tr_i, device, buffers[0]), _gather(acts, sub, te_i, device, buffers[1])
        mtr = torch.as_tensor(np.ascontiguousarray(mask_tr[:, ts].T), device=device)
        mte = torch.as_tensor(np.ascontiguousarray(mask_te[:, ts].T), device=device)
        ytr = torch.as_tensor(np.ascontiguousarray(vals_tr[:, ts].transpose(1, 0, 2)), device=device)
        yte = torch.as_tensor(np.ascontiguousarray(vals_te[:, ts].transpose(1, 0, 2)), device=device)
        start = _initial_probes(init, names, slices, sub, family, C, d, device) if init else None
        part = _fit_chunk(Xtr, mtr, ytr, Xte, mte, yte, family, C, slices, l2, max_iter, tol, bootstrap, seed + s,
                          standardize, start)
        n_iter = max(n_iter, part["n_iter"])
        parts.append(part)
    if not parts:
        return {n: _unfitted(n, f, d, skipped[n]) for n, f in zip(names, feats)}

    results = {}
    metric_names = _METRICS["scalar" if family == "ridge" else "classification"]
    for i, (n, f, sl) in enumerate(zip(names, feats, slices)):
        at = set(usable[n])
        keep = [j for j, (l, t) in enumerate(pairs) if t in at]
        take = None if len(keep) == len(pairs) else keep  # None: every pair of the group
        W = _joined([p["weight"][:, sl] for p in parts], take)
        B = _joined([p["bias"][:, sl] for p in parts], take)
        metrics = {m: _joined([p["metrics"][i][m] for p in parts], take) for m in metric_names}
        per_output = _joined([p["metrics"][i]["per_output"] for p in parts], take)
        n_train = _joined([p["n_train"] for p in parts], take)
        results[n] = ProbeResult(feature=n, kind=f.kind, pairs=[pairs[j] for j in keep], weight=W, bias=B,
                                 metrics=metrics, per_output=per_output, n_train=n_train, skipped=skipped[n],
                                 n_iter=n_iter)
    return results


def _gather(acts, pairs, rows: torch.Tensor, device, buffer: list) -> torch.Tensor:
    """The activations of ``pairs`` at the probe-set ``rows`` as one contiguous float32 (P, n, d) tensor on
    ``device``, which the solver may overwrite. One copy, of only what is needed, into ``buffer[0]`` (a
    flat tensor kept between chunks and grown when too small): fresh memory costs a page fault per 4 KiB."""
    first = acts[pairs[0][0]]
    shape = (len(pairs), len(rows), first.shape[-1])
    size = shape[0] * shape[1] * shape[2]
    if not buffer or buffer[0].numel() < size:
        buffer[:] = [torch.empty(size, dtype=torch.float32, device=first.device)]
    out = buffer[0][:size].view(shape)
    for i, (l, t) in enumerate(pairs):
        a = acts[l][:, t]
        if a.dtype == torch.float32:
            torch.index_select(a, 0, rows, out=out[i])
        else:
            out[i].copy_(a.index_select(0, rows))
    return out.to(device)


def _initial_probes(init, names, slices, pairs, family, C, d, device):
    """Raw-space (W, b, has) for a chunk of pairs from earlier ProbeResults: W (P, K, d) or (P, K, C, d),
    b (P, K) or (P, K, C), has (P, K) marking the outputs that have an earlier probe; None if none do."""
    P, K = len(pairs), slices[-1].stop
    shape = (P, K, C) if family == "softmax" else (P, K)
    W, b = torch.zeros(*shape, d), torch.zeros(*shape)
    has = torch.zeros(P, K, dtype=torch.bool)
    for name, sl in zip(names, slices):
        earlier = init.get(name)
        if earlier is None or not earlier.pairs:
            continue
        if earlier.weight.shape[1] != sl.stop - sl.start:
            continue
        where = {pair: i for i, pair in enumerate(earlier.pairs)}
        found = [(j, where[pair]) for j, pair in enumerate(pairs) if pair in where]
        if not found:
            continue
        j, i = (torch.as_tensor(x) for x in zip(*found))
        W[j, sl], b[j, sl], has[j, sl] = earlier.weight[i], earlier.bias[i], True
    if not bool(has.any()):
        return None
    return W.to(device), b.to(device), has.to(device)


_METRICS = {"classification": ("acc", "logloss", "acc_lo", "acc_hi", "n_test"),
            "scalar": ("r2", "mse", "r2_lo", "r2_hi", "n_test")}


# --------------------------------------------------------------------------------------------------
# the batched solvers
def _standardise(X: torch.Tensor, m: torch.Tensor, n: torch.Tensor, scale: bool = True, gram_examples: int | None = None):
    """In place, X (P, N, d) becomes (X − μ)/σ, zero where m (P, N) is False; μ, σ are the mean and standard
    deviation over the n (P,) examples where m is True (σ = 1 without ``scale``). Returns (μ, σ, XᵀΩX) of
    the result, Ω = diag(m / n). With ``gram_examples``, XᵀΩX is estimated from the first rows of X that
    hold about that many defined examples (enough for a preconditioner, a fraction of the cost)."""
    P, N, d = X.shape
    w = m.to(X.dtype) / n[:, None]
    mu = torch.bmm(w[:, None, :], X).squeeze(1)
    masked = not bool(m.all())
    if scale:
        sumsq = torch.zeros_like(mu)
        for s in range(0, N, 512):  # by blocks of rows, centred in cache: no copy of X is written
            block = X[:, s : s + 512] - mu[:, None]
            if masked:
                block *= m[:, s : s + 512, None]
            sumsq += block.square_().sum(1)
        sd = (sumsq / n[:, None]).sqrt()
        sd = torch.where(sd > 1e-6 * (1 + mu.abs()), sd, torch.ones_like(sd))
    else:
        sd = torch.ones_like(mu)
    torch.addcmul((-mu / sd)[:, None], X, (1 / sd)[:, None], out=X)  # (X − μ)/σ in one pass
    if masked:
        X.mul_(m[..., None])
    rows = N
    if gram_examples is not None:
        rows = min(N, int(np.ceil(gram_examples * N / max(float(n.min()), 1.0))))
    sub = X[:, :rows]
    n_sub = n if rows == N else m[:, :rows].sum(1).to(X.dtype).clamp(min=1)
    gram = torch.bmm(sub.transpose(1, 2), sub) / n_sub[:, None, None]
    return mu, sd, gram


def _fit_chunk(Xtr, mtr, ytr, Xte, mte, yte, family, C, slices, l2, max_iter, tol, bootstrap, seed, standardize=True,
               start=None):
    """Probes of one chunk of pairs. Xtr and Xte are the chunk's own copies: they are standardised in place."""
    P, N, d = Xtr.shape
    dev = Xtr.device
    n_tr = mtr.sum(1).float()
    wtr = mtr.float() / n_tr[:, None]
    # XᵀΩX of the standardised X: exact for ridge, whose solution it is; sampled for the logistic
    # preconditioner, which need only be close
    mu, sd, gram = _standardise(Xtr, mtr, n_tr, scale=standardize,
                                gram_examples=None if family == "ridge" else PRECONDITIONER_EXAMPLES)
    Xs = Xtr
    n_te = mte.sum(1).float()
    wte = mte.float() / n_te.clamp(min=1)[:, None]
    Xts = torch.addcmul((-mu / sd)[:, None], Xte, (1 / sd)[:, None], out=Xte).mul_(mte[..., None])

    if family == "ridge":
        y = ytr.float()
        ybar = torch.einsum("pn,pnk->pk", wtr, y)
        rhs = torch.bmm(Xs.transpose(1, 2), (y - ybar[:, None]) * wtr[..., None])  # (P, d, k)
        Ws = torch.bmm(spd_inverse(gram + l2 * torch.eye(d, device=dev)), rhs).transpose(1, 2)  # (P, k, d)
        bs = ybar
        n_iter = 1
        metrics = _eval_scalar(Xts, Ws, bs, yte.float(), mte, wte, slices, bootstrap, seed)
    else:
        kind = "categorical" if family == "softmax" else "binary"
        if start is not None:  # into the standardised space: w_s = w·σ, b_s = b + w·μ
            W0, b0, has = start
            if family == "softmax":
                start = (W0 * sd[:, None, None], b0 + torch.einsum("pkcd,pd->pkc", W0, mu), has)
            else:
                start = (W0 * sd[:, None], b0 + torch.einsum("pkd,pd->pk", W0, mu), has)
        Ws, bs, class_off, n_iter = fit_logistic(Xs, wtr, ytr, kind, C, gram, l2, max_iter, tol, start=start)
        metrics = _eval_logistic(Xts, Ws, bs, class_off, yte, mte, wte, kind, C, slices)
    # back to the original activation space: w·(x−μ)/σ + b_s = (w/σ)·x + (b_s − (w/σ)·μ)
    if family == "softmax":
        k = ytr.shape[2]
        W = Ws.view(P, k, C, d) / sd[:, None, None]
        b = bs.view(P, k, C) - torch.einsum("pkcd,pd->pkc", W, mu)
    else:
        W = Ws / sd[:, None]
        b = bs - torch.einsum("pkd,pd->pk", W, mu)
    return {"weight": W.cpu(), "bias": b.cpu(), "n_train": n_tr.cpu().double().numpy(), "n_iter": n_iter,
            "metrics": metrics}


def _eval_logistic(X, W, b, class_off, y, m, w, kind, C, slices):
    """Test metrics of each feature (a slice of the outputs / variables)."""
    P, N, d = X.shape
    Z = torch.baddbmm(b[:, None, :], X, W.transpose(1, 2))
    if kind == "categorical":
        k = y.shape[2]
        Z = (Z + class_off).view(P, N, k, C)
        logp = torch.log_softmax(Z, dim=-1)
        labels = y.long()
        correct = (Z.argmax(-1) == labels).float()  # (P, N, k)
        nll = -logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    else:
        yf = y.float()
        correct = ((Z > 0).float() == yf).float()
        nll = torch.nn.functional.binary_cross_entropy_with_logits(Z, yf, reduction="none")
    n = m.float().sum(1)
    n_np = n.double().cpu().numpy()
    per_output_all = torch.einsum("pn,pnk->pk", w, correct)
    out = []
    for sl in slices:
        k = sl.stop - sl.start
        ex_acc = correct[..., sl].mean(-1)  # (P, N): each test example's mean correctness over outputs
        acc = (w * ex_acc).sum(1)
        logloss = (w * nll[..., sl].mean(-1)).sum(1)
        var = (w * (ex_acc - acc[:, None]) ** 2).sum(1) * n / (n - 1).clamp(min=1)
        acc_np, var_np = acc.double().cpu().numpy(), var.double().cpu().numpy()
        pq = acc_np * (1 - acc_np)
        n_eff = np.where(var_np > 1e-12, n_np * pq / np.maximum(var_np, 1e-12), n_np * k)
        n_eff = np.clip(n_eff, np.minimum(n_np, 1), n_np * k)
        lo, hi = wilson_interval(acc_np, n_eff)
        out.append({"acc": acc_np, "logloss": logloss.double().cpu().numpy(), "acc_lo": lo, "acc_hi": hi,
                    "n_test": n_np, "per_output": per_output_all[:, sl].double().cpu().numpy()})
    return out


def _eval_scalar(X, W, b, y, m, w, slices, bootstrap, seed):
    P, N, d = X.shape
    pred = torch.baddbmm(b[:, None, :], X, W.transpose(1, 2))
    mf = m.float()
    err2 = (pred - y) ** 2 * mf[..., None]
    ybar = torch.einsum("pn,pnk->pk", w, y)
    sse, sst = err2.sum(1), ((y - ybar[:, None]) ** 2 * mf[..., None]).sum(1)  # (P, k)
    ok = sst > 1e-12 * (1 + ybar.abs())
    r2_out = torch.where(ok, 1 - sse / sst.clamp(min=1e-30), torch.full_like(sse, float("nan")))
    n = mf.sum(1)
    # bootstrap over test examples: example i drawn c_i times in each of the resamples
    gen = torch.Generator(device="cpu").manual_seed(seed)
    idx = torch.randint(0, N, (bootstrap, N), generator=gen)
    counts = torch.zeros(bootstrap, N).scatter_add_(1, idx, torch.ones(bootstrap, N)).to(X.device)  # (B, N)
    ym = y * mf[..., None]
    s0 = (counts @ mf.T).clamp(min=1)  # (B, P)
    s_err = torch.einsum("bn,pnk->bpk", counts, err2)
    s_y = torch.einsum("bn,pnk->bpk", counts, ym)
    s_yy = torch.einsum("bn,pnk->bpk", counts, ym * y)
    sst_b = s_yy - s_y * s_y / s0[..., None]
    r2_b = torch.where(sst_b > 1e-12, 1 - s_err / sst_b.clamp(min=1e-30), torch.full_like(sst_b, float("nan")))
    out = []
    for sl in slices:
        mse = (sse[:, sl] / n.clamp(min=1)[:, None]).mean(1)
        r2 = torch.nanmean(r2_out[:, sl], dim=1)
        rb = torch.nanmean(r2_b[..., sl], dim=-1)  # (B, P)
        lo, hi = torch.nanquantile(rb, 0.025, dim=0), torch.nanquantile(rb, 0.975, dim=0)
        out.append({"r2": r2.double().cpu().numpy(), "mse": mse.double().cpu().numpy(),
                    "r2_lo": lo.double().cpu().numpy(), "r2_hi": hi.double().cpu().numpy(),
                    "n_test": n.double().cpu().numpy(), "per_output": r2_out[:, sl].double().cpu().numpy()})
    return out
