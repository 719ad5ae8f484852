"""Linear probes on the residual stream, fitted for every (layer, position) of a checkpoint at once.

A probe reads one feature (see ``tasks.base.Feature``) from the activations at one layer and one token
position. A layer is named by its hook (``hook_embed``, ``blocks.{l}.hook_resid_post``; see ``models.hooks``).

Kinds and models (all linear in the activation x, fitted on standardised x, reported in x's own space):

- ``binary`` / ``multilabel``: k independent logistic regressions (sigmoid per label);
- ``categorical``: k independent multinomial logistic regressions (softmax per variable over n_classes);
- ``scalar``: ridge regression, closed form, k outputs.

Objective per pair (classification), with weights ω_i = 1/n over the n training examples defined there:
    Σ_i ω_i CE_i(W, b) + ½ λ ‖W‖²          (bias unpenalised; λ = ``l2``; sklearn's C = 1 / (λ n))
and for ridge Σ_i ω_i ‖y_i − W x_i − b‖² + λ ‖W‖² (sklearn's alpha = λ n), both on standardised x.

All pairs of a chunk are solved together in torch (CPU or GPU): each pair's activations at the examples
where its features are defined (and only those: where answers start at varying places, a position is
defined on a fraction of the probe set) are copied once into X of shape (P, N, d), padded to the chunk's
largest count with zero-weight rows, and standardised in place. The features of one solver family whose
masks agree at a position share one multi-output problem there (one copy of the activations, one Gram
matrix): e.g. all bit features of an answer digit; on a GPU all problems of a family are one batch.
Logistic fits run a batched, preconditioned L-BFGS (``lbfgs.py``): Böhning's bound (the logistic Hessian
is at most ¼ XᵀΩX, the softmax Hessian at most ½ I ⊗ XᵀΩX) gives one fixed preconditioner per pair,
A = c XᵀΩX + λI (XᵀΩX estimated from ~1,000 examples, inverted once), used as L-BFGS's initial inverse
Hessian; the bound step −A⁻¹∇f is a safe descent step, and the quasi-Newton memory makes the method
converge in tens of passes. Every output (sigmoid) or variable (softmax) is its own problem, with its
own Armijo line search, memory and stopping test; on a CPU, pairs whose problems have all stopped leave
the batch, so that the slow few do not keep every pass at full size. Ridge is one exact solve per pair.

Metrics on the probe-test examples (mean over the k outputs when k > 1):
``acc`` (accuracy), ``logloss`` (mean cross-entropy, nats), ``acc_lo``/``acc_hi`` (95% Wilson interval;
for k > 1 with the effective sample size n·p(1−p)/s², s² the variance over test examples of their
mean-over-outputs correctness, so correlated outputs do not narrow it), ``n_test``; for scalars ``r2``,
``mse``, ``r2_lo``/``r2_hi`` (95% bootstrap interval over test examples, fixed seed), ``n_test``; with
``train_metrics``, ``train_logloss`` or ``train_mse`` on the probe-train examples too.

The quiet-feature study's probes (scikit-learn's ``LogisticRegression(C=100)`` and ``LinearRegression``
on raw activations, constant multi-label columns dropped) are the options ``C``, ``l2=0``,
``standardize=False``, ``drop_constant_outputs`` (``paper_probes.PAPER_FIT``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from ..models.hooks import EMBED, block_of, depth
from ..tasks.base import Feature
from ..train.threads import set_cpu_threads
from .lbfgs import HISTORY, fit_logistic, spd_inverse

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


#: the solver's default cap on passes, for the Monitor, ``quietlab.watch`` and ``quietlab probe`` alike (an 11-class
#: probe of a trained BFS model reaches it; sigmoid probes stop by ``tol`` well before it)
MAX_ITER = 60


def fit_features(
    acts: Mapping[str, torch.Tensor],
    features: Mapping[str, Feature],
    train_idx: Sequence[int],
    test_idx: Sequence[int],
    *,
    layers: Iterable[str] | None = None,
    positions: Iterable[int] | None = None,
    l2: float = 1e-3,
    max_iter: int = MAX_ITER,
    tol: float = 1e-2,
    min_train: int = 8,
    min_test: int = 4,
    device=None,
    max_chunk_bytes: int | None = None,
    bootstrap: int = 400,
    seed: int = 0,
    standardize: bool = True,
    init: Mapping[str, ProbeResult] | None = None,
    C: float | None = None,
    drop_constant_outputs: bool = False,
    train_metrics: bool = False,
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
    one batch of pairs (default 64 MiB on CPU, where several chunks are fitted side by side, one thread
    each; on a GPU 40% of its free memory, at most 8 GiB).
    ``standardize=False`` fits on centred but unscaled activations, so that the L2 penalty acts on the
    weights in residual space (as scikit-learn's probes on raw activations do); the ablations use it.
    ``init``: earlier ProbeResults of the same features (the monitor's previous checkpoint), whose
    probes start the logistic fits at the pairs they share: the optimum moves little between nearby
    checkpoints, so the solver needs far fewer passes. The optimum reached does not depend on it.
    ``C``: scikit-learn's inverse regularisation strength for the logistic probes, in place of ``l2``:
    λ = 1/(C·n) at each pair, n its probe-train examples, which with ``standardize=False`` is exactly
    ``LogisticRegression(C=C)`` on the raw activations (the quiet-feature study's probes: C = 100).
    Scalar probes keep ``l2``; ``l2=0`` makes them ordinary least squares (scikit-learn's
    ``LinearRegression``; the minimum-norm solution where the activations are rank-deficient).
    ``drop_constant_outputs``: outputs (sigmoid) or variables (softmax) of a multi-output feature that are
    constant on a pair's probe-train examples are left out of its metrics, as the study's
    ``MultiOutputClassifier`` drops such columns (their probes keep w = 0, and ``per_output`` is NaN there),
    instead of counting as bias-only probes. ``train_metrics``: also ``train_logloss`` (classification) or
    ``train_mse`` (scalars) on the probe-train examples, by which the study picks each position's layer.
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
        max_chunk_bytes = 64 << 20
        if device.type == "cuda":  # big batches: a GPU is bound by kernel launches, not by memory
            free, _ = torch.cuda.mem_get_info(device)
            max_chunk_bytes = int(min(8 << 30, 0.4 * free))
    pos_list = list(range(T)) if positions is None else [int(t) for t in positions]

    # one problem per solver family and position: the features of a family whose masks agree at a position
    # share its activations and Gram matrix (e.g. every bit feature of an addition answer digit)
    families: dict[tuple[str, int], list[str]] = {}
    for name, f in features.items():
        families.setdefault(solver_family(f), []).append(name)
    problems: dict[tuple, list[int]] = {}
    for (family, n_classes), names in families.items():
        for t in pos_list:
            sharing: dict[bytes, list[str]] = {}
            for n in names:
                column = features[n].mask[:, t]
                if column.any():
                    sharing.setdefault(column.tobytes(), []).append(n)
            for together in sharing.values():
                problems.setdefault((family, n_classes, tuple(together)), []).append(t)

    batches: dict[tuple, list[tuple[tuple[str, ...], int]]] = {}
    for (family, n_classes, names), positions in problems.items():
        key = (family, n_classes) if one_batch_per_family(device) else (family, n_classes, names)
        batches.setdefault(key, []).extend((names, t) for t in positions)

    groups = []
    for (family, n_classes, *_), sites in batches.items():
        names = [n for n in features if any(n in present for present, _ in sites)]
        groups.append(_Group(acts, names, [features[n] for n in names], family, n_classes, sites, train_idx, test_idx,
                             layer_list, device, l2, max_iter, tol, min_train, min_test, max_chunk_bytes, bootstrap,
                             seed, standardize, init if family != "ridge" else None,
                             _Options(C, drop_constant_outputs, train_metrics)))
    # every group's chunks in one queue, the dearest first, so that no thread waits at the end of a group
    # (the order changes no probe: each chunk is the same computation wherever and whenever it runs)
    work = sorted(((group, s, sub) for group in groups for s, sub in group.chunks), key=lambda job: -job[0].cost(job[2]))
    with _full_precision():
        done = _fit_chunks(work, device)
    fitted_chunks = {(id(group), s): part for (group, s, _), part in zip(work, done)}
    parts: dict[str, list[ProbeResult]] = {name: [] for name in features}
    for group in groups:
        fitted = group.collect([fitted_chunks[id(group), s] for s, _ in group.chunks])
        for name, result in fitted.items():
            parts[name].append(result)
    return {name: _merge(name, features[name], parts[name], d, train_metrics) for name in features}


_FAMILY = {"binary": "sigmoid", "multilabel": "sigmoid", "categorical": "softmax", "scalar": "ridge"}


def solver_family(feature: Feature) -> tuple[str, int]:
    """(solver, classes): features of one family are fitted together (``fit_features``)."""
    family = _FAMILY[feature.kind]
    return family, int(feature.n_classes) if family == "softmax" else 0


@dataclass(frozen=True)
class _Options:
    """The fit options that change the objective or the metrics (``fit_features``)."""

    C: float | None = None
    drop_constant_outputs: bool = False
    train_metrics: bool = False


def one_batch_per_family(device: torch.device) -> bool:
    """Whether the problems of a solver family are fitted as one batch, their features' outputs side by
    side (on a GPU, whose passes cost their operations' count rather than their size), or each problem
    as a batch of its own (on a CPU, so that no pass computes an output that a pair does not have)."""
    return device.type == "cuda"


def _unfitted(name: str, feature: Feature, d: int, skipped=(), train_metrics: bool = False) -> ProbeResult:
    """A ProbeResult with no fitted pair."""
    shape = (0, feature.k, feature.n_classes, d) if feature.kind == "categorical" else (0, feature.k, d)
    metric_names = _metric_names(feature.kind == "scalar", train_metrics)
    return ProbeResult(feature=name, kind=feature.kind, pairs=[], weight=torch.zeros(shape),
                       bias=torch.zeros(shape[:-1]), metrics={m: np.zeros(0) for m in metric_names},
                       per_output=np.zeros((0, feature.k)), n_train=np.zeros(0), skipped=list(skipped))


def _merge(name: str, feature: Feature, parts: list[ProbeResult], d: int, train_metrics: bool = False) -> ProbeResult:
    """One feature's ProbeResult from the problems it was fitted in, pairs in (layer, position) order."""
    if not parts:
        return _unfitted(name, feature, d, train_metrics=train_metrics)
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


class _Group:
    """Probes of the features ``names`` (one solver family) at ``sites``: (features, position) of features
    whose masks agree at that position, at every layer. All sites are one batch of pairs (chunked by
    memory), the features' outputs side by side; a site's absent features have zero labels (constant,
    so never fitted) and no results. ``chunks``: (first index, pairs) of each chunk; ``fit`` fits one,
    ``collect`` makes the features' ProbeResults from every chunk's fit, in the order of ``chunks``."""

    def __init__(self, acts, names, feats, family, C, sites, train_idx, test_idx, layer_list, device, l2, max_iter,
                 tol, min_train, min_test, max_chunk_bytes, bootstrap, seed, standardize=True, init=None,
                 options: _Options = _Options()):
        first = acts[layer_list[0]]
        N, T, d = first.shape
        self.acts, self.names, self.feats, self.family, self.C = acts, names, feats, family, C
        self.train_idx, self.test_idx, self.device, self.d = train_idx, test_idx, device, d
        self.solver = (l2, max_iter, tol, bootstrap, seed, standardize)
        self.init, self.options = init, options
        of = dict(zip(names, feats))
        dtype = np.int64 if family == "softmax" else np.float32
        bounds = np.cumsum([0] + [f.k for f in feats])
        self.slices = [slice(int(bounds[i]), int(bounds[i + 1])) for i in range(len(feats))]
        where_in = dict(zip(names, self.slices))

        # per site: the features fitted there (enough examples, not constant on probe-train), their rows and labels
        self.skipped = {n: [] for n in names}
        fit_sites = []  # (features fitted, position, probe-train rows, probe-test rows, labels there (N, k))
        for present, t in sites:
            column = of[present[0]].mask[:, t]
            rows_tr, rows_te = np.flatnonzero(column[train_idx]), np.flatnonzero(column[test_idx])
            if len(rows_tr) == 0:
                continue  # undefined here: not a probe site at all
            if len(rows_tr) < min_train or len(rows_te) < min_test:
                for n in present:
                    self.skipped[n] += [(l, t, "too few examples") for l in layer_list]
                continue
            labels = np.zeros((N, int(bounds[-1])), dtype=dtype)
            fitted = []
            for n in present:
                v = of[n].values[:, t]
                if np.all(v[train_idx[rows_tr]] == v[train_idx[rows_tr[:1]]]):
                    self.skipped[n] += [(l, t, "constant") for l in layer_list]
                else:
                    fitted.append(n)
                    labels[:, where_in[n]] = v
            if fitted:
                fit_sites.append((tuple(fitted), t, rows_tr, rows_te, labels))
        self.fit_sites = fit_sites
        self.pairs = pairs = [(l, i) for l in layer_list for i in range(len(fit_sites))]  # (layer, site)

        # each pair is fitted on the examples where its features are defined, and no others: where answers
        # start at varying places a position is defined on a fraction of the probe set, and the passes over
        # the other rows would cost as much as over these. Pairs of similar counts are chunked together (in
        # decreasing order), padded to the largest count of their chunk.
        self.order = order = sorted(range(len(pairs)), key=lambda j: -len(fit_sites[pairs[j][1]][2]))
        outputs = int(bounds[-1]) * max(C, 1)  # logits per example
        item_bytes = (d + 1) * 4 + outputs * 4 * 4 + 64  # per example: activations, logits and what the solver derives
        pair_bytes = d * d * 16 + (0 if family == "ridge" else 3 * HISTORY * outputs * (d + 1) * 4)  # Gram, inverse; memory
        most_te = max((len(site[3]) for site in fit_sites), default=0)
        self.chunks, s = [], 0  # (first index in order, pairs): decided by sizes alone, however they are then fitted
        while s < len(order):
            bytes_per_pair = (len(fit_sites[pairs[order[s]][1]][2]) + most_te) * item_bytes + pair_bytes
            chunk = max(1, int(max_chunk_bytes // bytes_per_pair))
            self.chunks.append((s, [pairs[j] for j in order[s : s + chunk]]))
            s += chunk

    def cost(self, sub) -> float:
        """A guess at a chunk's fitting time, used only to fit the dearest first: its activations' size
        times a family's typical passes (a softmax problem takes several times a sigmoid's; ridge is one
        solve). The logit rows, which also cost, are left out of the guess."""
        passes = {"softmax": 4.0, "sigmoid": 1.0, "ridge": 0.1}[self.family]
        return passes * len(sub) * len(self.fit_sites[sub[0][1]][2]) * (self.d + 1)

    def fit(self, s, sub, buffers):
        acts, device, family, C, d = self.acts, self.device, self.family, self.C, self.d
        train_idx, test_idx = self.train_idx, self.test_idx
        l2, max_iter, tol, bootstrap, seed, standardize = self.solver
        at = [self.fit_sites[i] for _, i in sub]
        located = [(l, site[1]) for (l, _), site in zip(sub, at)]
        idx_tr, mtr = _padded_rows([site[2] for site in at])
        idx_te, mte = _padded_rows([site[3] for site in at])
        Xtr = _gather(acts, located, train_idx[idx_tr], device, buffers[0], bias_column=family != "ridge")
        Xte = _gather(acts, located, test_idx[idx_te], device, buffers[1])
        ytr = torch.as_tensor(np.stack([site[4][train_idx[r]] for site, r in zip(at, idx_tr)]), device=device)
        yte = torch.as_tensor(np.stack([site[4][test_idx[r]] for site, r in zip(at, idx_te)]), device=device)
        mtr, mte = torch.as_tensor(mtr, device=device), torch.as_tensor(mte, device=device)
        start = None
        if self.init:
            start = _initial_probes(self.init, self.names, self.slices,
                                    [(l, site[1], site[0]) for (l, _), site in zip(sub, at)], family, C, d, device)
        part = _fit_chunk(Xtr, mtr, ytr, Xte, mte, yte, family, C, self.slices, l2, max_iter, tol, bootstrap, seed + s,
                          standardize, start, self.options)
        if "train_loss" in part:  # on the raw activations, the probes being in their space
            on_train = part.pop("train_loss")(_gather(acts, located, train_idx[idx_tr], device, buffers[0]))
            for m, t in zip(part["metrics"], on_train):
                m[TRAIN_METRIC["classification"]] = t["logloss"]
        return part

    def collect(self, parts) -> dict[str, ProbeResult]:
        """{feature: ProbeResult} from ``parts``, the fits of ``chunks`` in their order."""
        pairs, fit_sites, d, options = self.pairs, self.fit_sites, self.d, self.options
        if not parts:
            return {n: _unfitted(n, f, d, self.skipped[n], options.train_metrics) for n, f in zip(self.names, self.feats)}
        n_iter = max(part["n_iter"] for part in parts)
        fitted_at = {j: i for i, j in enumerate(self.order)}  # pair j's row in the chunks' results
        results = {}
        metric_names = _metric_names(self.family == "ridge", options.train_metrics)
        for i, (n, f, sl) in enumerate(zip(self.names, self.feats, self.slices)):
            keep = sorted((j for j, (l, site) in enumerate(pairs) if n in fit_sites[site][0]),
                          key=lambda j: (depth(pairs[j][0]), fit_sites[pairs[j][1]][1]))
            if not keep:
                results[n] = _unfitted(n, f, d, self.skipped[n], options.train_metrics)
                continue
            take = [fitted_at[j] for j in keep]
            take = None if take == list(range(len(pairs))) else take  # None: every pair of the group, in order
            W = _joined([p["weight"][:, sl] for p in parts], take)
            B = _joined([p["bias"][:, sl] for p in parts], take)
            metrics = {m: _joined([p["metrics"][i][m] for p in parts], take) for m in metric_names}
            per_output = _joined([p["metrics"][i]["per_output"] for p in parts], take)
            n_train = _joined([p["n_train"] for p in parts], take)
            results[n] = ProbeResult(feature=n, kind=f.kind,
                                     pairs=[(pairs[j][0], fit_sites[pairs[j][1]][1]) for j in keep],
                                     weight=W, bias=B, metrics=metrics, per_output=per_output, n_train=n_train,
                                     skipped=self.skipped[n], n_iter=n_iter)
        return results


def _fit_chunks(work, device) -> list:
    """``group.fit(s, pairs, buffers)`` of every (group, s, pairs) in ``work``, in order. On a CPU with several
    threads and several chunks, the chunks are fitted side by side, one thread each (with its own activation
    buffers): a chunk's solver is a few hundred small operations a pass, which split over threads each wait
    at every operation's end (on 2 cores 1.2x the CPU time of one thread); whole chunks in parallel wait only
    for the last chunk. Each chunk is the same computation either way."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2 or len(work) < 2:
        buffers = ([], [])  # reused activation copies (probe-train, probe-test) of a chunk
        return [group.fit(s, sub, buffers) for group, s, sub in work]
    local = threading.local()

    def start_worker():
        set_cpu_threads(1)
        local.buffers = ([], [])

    try:
        with concurrent.futures.ThreadPoolExecutor(min(threads, len(work)), initializer=start_worker) as pool:
            return list(pool.map(lambda job: job[0].fit(job[1], job[2], local.buffers), work))
    finally:
        set_cpu_threads(threads)


def _padded_rows(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(index (P, n), mask (P, n)) of P lists of rows, padded to the longest: pads repeat the list's first
    row (any real row will do: the mask zeroes it) and are False in the mask."""
    n = max(len(r) for r in rows)
    idx = np.zeros((len(rows), n), dtype=np.int64)
    mask = np.zeros((len(rows), n), dtype=bool)
    for i, r in enumerate(rows):
        idx[i, : len(r)], idx[i, len(r) :], mask[i, : len(r)] = r, r[0] if len(r) else 0, True
    return idx, mask


def _gather(acts, pairs, rows: np.ndarray, device, buffer: list, bias_column: bool = False) -> torch.Tensor:
    """The activations of ``pairs`` (layer, position) at ``rows[i]`` (the probe-set rows of pair i) as one float32
    (P, n, d) tensor on ``device``, which the solver may overwrite; with ``bias_column`` (P, n, d + 1),
    the last column 1 (the logistic solver's bias). One copy, of only what is needed, into ``buffer[0]``
    (a flat tensor kept between chunks and grown when too small): fresh memory costs a page fault per 4 KiB."""
    first = acts[pairs[0][0]]
    d = first.shape[-1]
    shape = (len(pairs), rows.shape[1], d + int(bias_column))
    size = shape[0] * shape[1] * shape[2]
    if not buffer or buffer[0].numel() < size:
        buffer[:] = [torch.empty(size, dtype=torch.float32, device=first.device)]
    out = buffer[0][:size].view(shape)
    where = torch.as_tensor(rows, device=first.device)
    layers = {}
    for i, (l, t) in enumerate(pairs):
        layers.setdefault(l, []).append(i)
    for l, at in layers.items():  # one gather per layer (a GPU is bound by the operations' count)
        at_t = torch.as_tensor(at, device=first.device)
        ts = torch.as_tensor([pairs[i][1] for i in at], device=first.device)
        out[at_t, :, :d] = acts[l][where[at_t], ts[:, None]].to(torch.float32)
    if bias_column:
        out[..., d] = 1.0
    return out.to(device)


def _initial_probes(init, names, slices, pairs, family, C, d, device):
    """Raw-space (W, b, has) for a chunk of pairs (layer, position, features fitted there) from earlier
    ProbeResults: W (P, K, d) or (P, K, C, d), b (P, K) or (P, K, C), has (P, K) marking the outputs that
    have an earlier probe; None if none do."""
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
        found = [(j, where[(l, t)]) for j, (l, t, present) in enumerate(pairs) if name in present and (l, t) in where]
        if not found:
            continue
        j, i = (torch.as_tensor(x) for x in zip(*found))
        W[j, sl], b[j, sl], has[j, sl] = earlier.weight[i], earlier.bias[i], True
    if not bool(has.any()):
        return None
    return W.to(device), b.to(device), has.to(device)


_METRICS = {"classification": ("acc", "logloss", "acc_lo", "acc_hi", "n_test"),
            "scalar": ("r2", "mse", "r2_lo", "r2_hi", "n_test")}
#: the probe-train loss, lower is better: what the study picks each position's layer by (``train_metrics``)
TRAIN_METRIC = {"classification": "train_logloss", "scalar": "train_mse"}


def _metric_names(scalar: bool, train_metrics: bool) -> tuple[str, ...]:
    group = "scalar" if scalar else "classification"
    return _METRICS[group] + ((TRAIN_METRIC[group],) if train_metrics else ())


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
               start=None, options: _Options = _Options()):
    """Probes of one chunk of pairs. Xtr and Xte are the chunk's own copies: they are standardised in place."""
    dev = Xtr.device
    P, N, d = Xte.shape
    X_solver = Xtr  # the logistic solver's: with the bias column
    Xtr = Xtr[..., :d]
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
        if l2 > 0:
            inverse = spd_inverse(gram + l2 * torch.eye(d, device=dev))
        else:  # ordinary least squares: the minimum-norm solution where the Gram matrix is singular
            inverse = torch.linalg.pinv(gram.double(), rtol=1e-6, hermitian=True).to(gram.dtype)
        Ws = torch.bmm(inverse, rhs).transpose(1, 2)  # (P, k, d)
        bs = ybar
        n_iter = 1
        metrics = _eval_scalar(Xts, Ws, bs, yte.float(), mte, wte, slices, bootstrap, seed)
        if options.train_metrics:
            err2 = (torch.baddbmm(bs[:, None, :], Xs, Ws.transpose(1, 2)) - y) ** 2
            per_output = torch.einsum("pn,pnk->pk", wtr, err2)
            for m, sl in zip(metrics, slices):
                m[TRAIN_METRIC["scalar"]] = per_output[:, sl].mean(1).double().cpu().numpy()
    else:
        kind = "categorical" if family == "softmax" else "binary"
        if start is not None:  # into the standardised space: w_s = w·σ, b_s = b + w·μ
            W0, b0, has = start
            if family == "softmax":
                start = (W0 * sd[:, None, None], b0 + torch.einsum("pkcd,pd->pkc", W0, mu), has)
            else:
                start = (W0 * sd[:, None], b0 + torch.einsum("pkd,pd->pk", W0, mu), has)
        X_solver[..., d] = mtr  # the bias column: 1 on the pair's examples, 0 on padding
        penalty = l2 if options.C is None else 1.0 / (options.C * n_tr)  # sklearn's C: λ = 1/(C·n) per pair
        Ws, bs, class_off, n_iter = fit_logistic(X_solver, wtr, ytr, kind, C, gram, penalty, max_iter, tol,
                                                 start=start)
        live = _varying_outputs(ytr, wtr, kind, C) if options.drop_constant_outputs else None
        metrics = _eval_logistic(Xts, Ws, bs, class_off, yte, mte, wte, kind, C, slices, live)
    # back to the original activation space: w·(x−μ)/σ + b_s = (w/σ)·x + (b_s − (w/σ)·μ)
    if family == "softmax":
        k = ytr.shape[2]
        W = Ws.view(P, k, C, d) / sd[:, None, None]
        b = bs.view(P, k, C) - torch.einsum("pkcd,pd->pkc", W, mu)
    else:
        W = Ws / sd[:, None]
        b = bs - torch.einsum("pkd,pd->pk", W, mu)
    out = {"weight": W.cpu(), "bias": b.cpu(), "n_train": n_tr.cpu().double().numpy(), "n_iter": n_iter,
           "metrics": metrics}
    if options.train_metrics and family != "ridge":
        # the solver has overwritten Xtr: the probe-train activations are gathered again (``_fit_group``)
        out["train_loss"] = lambda X: _eval_logistic(X, W.reshape(P, -1, d), b.reshape(P, -1), class_off, ytr, mtr,
                                                     wtr, kind, C, slices, live)
    return out


def _varying_outputs(y, w, kind, C) -> torch.Tensor:
    """(P, K): the outputs (sigmoid) or variables (softmax) that are not constant on each pair's
    probe-train examples (weights ``w`` > 0)."""
    if kind == "categorical":
        seen = torch.zeros(*y.shape[:1], y.shape[2], C, device=y.device)
        seen.scatter_add_(2, y.long().transpose(1, 2), (w > 0).float()[:, None, :].expand(-1, y.shape[2], -1))
        return (seen > 0).sum(-1) > 1
    seen = (w > 0).float()
    ones = torch.einsum("pn,pnk->pk", seen, y.float())  # counts of whole numbers: exact in float32
    return (ones > 0) & (ones < seen.sum(1)[:, None])


def _eval_logistic(X, W, b, class_off, y, m, w, kind, C, slices, live=None):
    """Metrics of each feature (a slice of the outputs / variables) on the examples of X (weights ``w``);
    ``live`` (P, K): the outputs to average over (None: all)."""
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
    weight = torch.ones_like(per_output_all) if live is None else live.float()  # (P, K)
    if live is not None:
        per_output_all = per_output_all.masked_fill(~live, float("nan"))
    out = []
    for sl in slices:
        share = weight[:, sl] / weight[:, sl].sum(1, keepdim=True).clamp(min=1)  # each output's share of the mean
        k_live = weight[:, sl].sum(1).double().cpu().numpy()
        ex_acc = torch.einsum("pnk,pk->pn", correct[..., sl], share)  # (P, N): each example's mean correctness
        acc = (w * ex_acc).sum(1)
        logloss = (w * torch.einsum("pnk,pk->pn", nll[..., sl], share)).sum(1)
        var = (w * (ex_acc - acc[:, None]) ** 2).sum(1) * n / (n - 1).clamp(min=1)
        acc_np, var_np = acc.double().cpu().numpy(), var.double().cpu().numpy()
        pq = acc_np * (1 - acc_np)
        n_eff = np.where(var_np > 1e-12, n_np * pq / np.maximum(var_np, 1e-12), n_np * k_live)
        n_eff = np.clip(n_eff, np.minimum(n_np, 1), np.maximum(n_np * k_live, 1))
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
