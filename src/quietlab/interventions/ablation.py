"""Causal ablations of probed features, with random-direction controls and bootstrap intervals.

The paper's recipe, generalised to every method of ``edits.py``: fit the feature's probes on held-out
examples at every layer and position; at each position take the probe of the best layer (or of the
layer given); intervene there during batched greedy generation and under teacher forcing; compare
exact-match accuracy with the unablated model and with the same intervention along random unit
directions (same rank, same places, scaled to move the activations as far: the same mean ‖Δx‖ at
each position, measured under teacher forcing on the evaluation batch). Drops are relative, in percent of the baseline accuracy, as the
paper reports them; intervals are 95% percentile-bootstrap intervals over examples (and, for the
controls, over directions too).

``ablate`` is quietlab's protocol; ``ablate_paper`` the quiet-feature study's exactly (PAPER_PROTOCOL §5),
which runs of the paper preset get: the study's probes (monitor/paper_probes.py: C = 100 on raw block
outputs, 10,000 probe-train examples), at each position the layer with the lowest probe-train log-loss,
the sum of per-row steps x − Σ_v (ŵ_v·x + b̂_v) ŵ_v with unit rows, applied under teacher forcing and at
every step of greedy decoding of the 1,000 probe-test examples; 32 controls, each a fresh unit Gaussian
direction per (layer, position, row) keeping the probe's normalised bias (not scaled to the ablation's
size); intervals from 10,000 bootstrap resamples of the questions, the controls' from each question's
accuracy averaged over the trials. Both report the drop relative to the baseline (in percent, as the
paper's figures are read) and in points of accuracy (the paper's code computes neither), and for tasks of
the paper preset the exact match with ``=`` given as well as the paper's (the model emits ``=``).

The probes of ``ablate`` are fitted on raw (centred, unscaled) activations with an L2 penalty, as the
paper's scikit-learn probes were. A probe fitted on standardised activations reads the feature as well
but leans on low-variance directions that the network itself hardly reads: on our addition models,
ablating along such a direction left accuracy untouched, while the raw-space probe's direction, with
the same intervention, cut it by half (see the README's ablation section).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..models.hooks import check_hook, depth
from ..monitor.probes import capture_layers, fit_probes, residual_taps, split_probe_set
from ..tasks.base import Batch, Feature
from ..train.evaluate import after_first_target, masked_loss, teacher_forced_exact
from .edits import METHODS, AffineEdit, build_edit, paper_controls, paper_edit, probe_rank, random_probes

NAN_PAIR = (float("nan"), float("nan"))


@dataclass
class AblationResult:
    feature: str
    method: str
    layer: str  # the hook used, or "best per position"
    layers: dict[int, str]  # position -> hook intervened at
    n_examples: int
    baseline_acc: float
    ablated_acc: float
    drop_pct: float
    drop_ci: tuple[float, float]
    control_acc: float
    control_drop_pct: float
    control_drop_ci: tuple[float, float]
    n_controls: int
    baseline_loss: float
    ablated_loss: float
    control_loss: float
    probe_acc: float  # mean probe accuracy (R² for scalars) at the places intervened on
    edit_size: float = float("nan")  # mean ‖Δx‖ of the feature's edit over the places it applies to
    control_edit_size: float = float("nan")  # the same for the controls, mean over them
    control_accs: list[float] = field(default_factory=list)
    protocol: str = "quietlab"  # quietlab (ablate) or paper (ablate_paper)
    drop_points: float = float("nan")  # baseline minus ablated accuracy, in points of accuracy
    drop_points_ci: tuple[float, float] = NAN_PAIR
    control_acc_ci: tuple[float, float] = NAN_PAIR  # 95% interval of the controls' mean accuracy
    control_loss_sem: float = float("nan")  # standard error of the mean of the controls' losses
    probe_logloss: float = float("nan")  # mean probe test log-loss at the places intervened on (classification)
    # tasks of the paper preset: exact match with '=' given in the prompt (the fields above: the model emits it)
    baseline_acc_given_eq: float = float("nan")
    ablated_acc_given_eq: float = float("nan")
    control_acc_given_eq: float = float("nan")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = {str(k): v for k, v in self.layers.items()}
        return d


def relative_drop(base: np.ndarray, other: np.ndarray) -> float:
    """100 · (acc(base) − acc(other)) / acc(base) for per-example correctness arrays."""
    b = float(np.mean(base))
    return 100.0 * (b - float(np.mean(other))) / b if b > 0 else float("nan")


def bootstrap_drop(base: np.ndarray, other: np.ndarray, rng: np.random.Generator, n_boot: int = 2000,
                   relative: bool = True):
    """95% interval of the relative drop in percent (``relative=False``: of the drop in points of accuracy);
    ``other`` is (n,) or (n_controls, n) per-example correctness: examples are resampled, and controls too."""
    other = np.atleast_2d(other)
    n, m = base.shape[0], other.shape[0]
    ex = rng.integers(0, n, size=(n_boot, n))
    ctl = rng.integers(0, m, size=(n_boot, m))
    b = base[ex].mean(1)
    o = np.stack([other[ctl[i]][:, ex[i]].mean() for i in range(n_boot)])
    drops = 100.0 * (b - o) / (np.where(b > 0, b, np.nan) if relative else 1.0)
    if np.isnan(drops).all():  # the model never answers right: no relative drop to speak of
        return float("nan"), float("nan")
    lo, hi = np.nanpercentile(drops, [2.5, 97.5])
    return float(lo), float(hi)


def _labels_matrix(feature: Feature, idx: np.ndarray, t: int) -> np.ndarray:
    values = feature.values[idx, t]
    if feature.kind == "categorical":
        return np.eye(feature.n_classes)[values.astype(np.int64)].reshape(len(idx), -1)
    return values.astype(np.float64)


def _flat(w: torch.Tensor, b: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """A probe's weights as (outputs, d) and (outputs,), categorical classes flattened."""
    d = w.shape[-1]
    return w.reshape(-1, d).double().cpu().numpy(), b.reshape(-1).double().cpu().numpy()


class _Measured(Exception):
    """Raised by the deepest edit of a sizing pass: the layers after it cannot change the sizes."""


class _Run:
    """Decoding and loss of one evaluation batch under a set of edits."""

    def __init__(self, model, batch: Batch, device, paper_task: bool = False):
        self.model, self.paper_task = model, paper_task
        self.tokens = torch.as_tensor(batch.tokens, device=device).long()
        self.mask = torch.as_tensor(batch.loss_mask, device=device)
        self.start = torch.as_tensor(batch.answer_start, device=device)

    def _measuring(self, edits: dict[str, AffineEdit], stop_after_last: bool = False):
        """(the edits wrapped to record how far they move x, a function giving the mean ‖Δx‖ per position
        (T,) once a pass has run, NaN where nothing is edited). ``stop_after_last``: the deepest edit raises
        _Measured once it has been measured, ending the pass there."""
        T = self.tokens.shape[1]
        total, count = torch.zeros(T, device=self.tokens.device), torch.zeros(T, device=self.tokens.device)
        last = max(edits, key=depth) if edits else None

        def measured(name, edit):
            def apply(x, positions):
                moved, n = edit.sizes(x, positions)
                total.index_add_(0, positions, moved)
                count.index_add_(0, positions, n.to(count))
                if stop_after_last and name == last:
                    raise _Measured
                return edit(x, positions)
            return apply

        return ({name: measured(name, e) for name, e in edits.items()},
                lambda: total / count.where(count > 0, torch.nan))

    @torch.no_grad()
    def sizes(self, edits: dict[str, AffineEdit]) -> torch.Tensor:
        """Mean ‖Δx‖ of the edits at each position (T,), under teacher forcing on this batch (NaN where
        nothing is edited): how far they move the residual stream where they apply. The pass ends at the
        deepest edit: nothing after it changes the sizes."""
        wrapped, sizes = self._measuring(edits, stop_after_last=True)
        try:
            self.model(self.tokens, edit=wrapped)
        except _Measured:
            pass
        return sizes()

    @torch.no_grad()
    def __call__(self, edits: dict[str, AffineEdit] | None) -> tuple[np.ndarray, float, np.ndarray | None]:
        """(exact match of greedy decoding under ``edits``, teacher-forced loss, and for a paper task the
        exact match with '=' given, or None), all from one teacher-forced pass: the edits act on each
        position from the prefix alone, so every answer token being the argmax under teacher forcing is
        the same event as greedy decoding getting the answer right (tests/test_ablation.py checks it
        against ``greedy_decode`` under edits), and one pass replaces a decoding step per answer token."""
        return self._score(self.model(self.tokens, edit=edits))

    @torch.no_grad()
    def measured(self, edits: dict[str, AffineEdit]) -> tuple[np.ndarray, float, np.ndarray | None, torch.Tensor]:
        """``self(edits)`` and ``self.sizes(edits)`` from the one pass they share."""
        wrapped, sizes = self._measuring(edits)
        return (*self._score(self.model(self.tokens, edit=wrapped)), sizes())

    def _score(self, logits) -> tuple[np.ndarray, float, np.ndarray | None]:
        correct = teacher_forced_exact(logits, self.tokens, self.mask).cpu().numpy()
        loss = float(masked_loss(logits, self.tokens, self.mask))
        given_eq = (teacher_forced_exact(logits, self.tokens, after_first_target(self.mask)).cpu().numpy()
                    if self.paper_task else None)
        return correct, loss, given_eq


def ablate(model, task, feature: str, *, method: str = "boundary", layer: str = "auto",
           probe_batch: Batch | None = None, eval_batch: Batch | None = None, n_probe: int = 2000,
           n_eval: int = 1000, n_controls: int = 32, seed: int = 0, probe_l2: float = 1e-3,
           progress=None) -> AblationResult:
    """Ablate ``feature`` in ``model`` (see the module docstring); ``layer``: "auto" or a residual hook name
    (``hook_embed``, ``blocks.{l}.hook_resid_post``). ``progress(done, total)`` is called as the controls run."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    model.eval()
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    probe_batch = probe_batch if probe_batch is not None else task.sample(n_probe, seed=10_000 + seed, split="test")
    eval_batch = eval_batch if eval_batch is not None else task.sample(n_eval, seed=20_000 + seed, split="test")
    if feature not in probe_batch.features:
        raise ValueError(f"{task.name} has no feature {feature!r}; choose one of: {', '.join(probe_batch.features)}")
    taps = residual_taps(model)
    layers = taps if layer == "auto" else [check_hook(layer, ["auto"] + taps)]

    # probes are fitted where the model is: in raw space a trained model's near-separable features
    # take the solver's full max_iter, minutes of work on a CPU for a model that sits on a GPU
    acts = capture_layers(model, probe_batch.tokens, layers=layers)
    f = probe_batch.features[feature]
    train_idx, test_idx = split_probe_set(len(probe_batch), seed=seed)
    probes = fit_probes(acts, f, train_idx, test_idx, name=feature, l2=probe_l2, standardize=False)
    if not probes.pairs:
        raise ValueError(f"feature {feature!r} is defined at too few places to fit a probe")

    # at each position, the probe of the best layer
    score = probes.metrics[probes.main_metric]
    best: dict[int, tuple[str, int]] = {}
    for i, (l, t) in enumerate(probes.pairs):
        if t not in best or score[i] > score[best[t][1]]:
            best[t] = (l, i)
    chosen = {t: l for t, (l, _) in best.items()}
    probe_acc = float(np.mean([score[i] for _, i in best.values()]))

    d = model.config.d_model
    where = eval_batch.features[feature].mask
    defined = {t: np.nonzero(f.mask[:, t])[0] for t in chosen}
    reference = {t: acts[chosen[t]][torch.as_tensor(defined[t], device=device), t].double().cpu().numpy() for t in chosen}
    labels = {t: _labels_matrix(f, defined[t], t) for t in chosen} if method == "erase" else None

    def edits_for(method_: str, per_position: dict[int, tuple[np.ndarray, np.ndarray]], labels_=None):
        """One edit per tap: the positions whose chosen layer is that tap's."""
        edits = {}
        for l in sorted(set(chosen.values()), key=depth):
            positions = [t for t, lt in chosen.items() if lt == l]
            here = np.zeros_like(where)
            here[:, positions] = where[:, positions]
            edit = build_edit(method_, {t: per_position[t] for t in positions}, here, d,
                              {t: reference[t] for t in positions},
                              {t: labels_[t] for t in positions} if labels_ else None,
                              rng=rng, batch_size=len(eval_batch))
            edits[l] = edit.to(device)
        return edits

    real = {t: _flat(*probes.probe(chosen[t], t)) for t in chosen}
    run = _Run(model, eval_batch, device, paper_task=task.preset == "paper")
    base_correct, base_loss, base_eq = run(None)
    ablation = edits_for(method, real, labels)
    abl_correct, abl_loss, abl_eq, size = run.measured(ablation)  # size: (T,)
    edited = size.isfinite()

    # controls: the same method along random directions of the same rank. LEACE's control is LEACE
    # fitted to the labels shuffled across examples: a random subspace of the same rank, drawn the way
    # LEACE draws one (through the whitening, so leaning on high-variance directions as it does), which
    # is what erasing a feature the model does not carry costs. Plain random directions would understate it.
    ranks = {t: probe_rank(W) for t, (W, _) in real.items()}
    ctl_correct, ctl_losses, ctl_sizes, ctl_eq = [], [], [], []
    for c in range(n_controls):
        if method == "erase":
            shuffled = {t: z[rng.permutation(len(z))] for t, z in labels.items()}
            edits = edits_for("erase", real, shuffled)
        else:
            edits = edits_for(method, random_probes(ranks, d, rng, reference))
        # as far as the feature's edit at each position; an edit at an earlier tap changes what a later
        # one sees, so the scaled controls are measured again
        factor = torch.where(edited, size / run.sizes(edits), 1.0).nan_to_num(nan=1.0, posinf=1.0)
        edits = {name: e.scaled(factor) for name, e in edits.items()}
        correct, loss, eq, moved = run.measured(edits)
        ctl_sizes.append(_mean_size(moved, edited))
        ctl_correct.append(correct)
        ctl_losses.append(loss)
        ctl_eq.append(eq)
        if progress is not None:
            progress(c + 1, n_controls)
    ctl = np.stack(ctl_correct) if ctl_correct else np.zeros((0, len(base_correct)))

    return AblationResult(
        feature=feature, method=method, layer=layer if layer != "auto" else "best per position",
        layers=chosen, n_examples=len(eval_batch),
        baseline_acc=float(base_correct.mean()), ablated_acc=float(abl_correct.mean()),
        drop_pct=relative_drop(base_correct, abl_correct), drop_ci=bootstrap_drop(base_correct, abl_correct, rng),
        control_acc=float(ctl.mean()) if len(ctl) else float("nan"),
        control_drop_pct=relative_drop(base_correct, ctl.mean(0)) if len(ctl) else float("nan"),
        control_drop_ci=bootstrap_drop(base_correct, ctl, rng) if len(ctl) else (float("nan"),) * 2,
        n_controls=n_controls, baseline_loss=base_loss, ablated_loss=abl_loss,
        control_loss=float(np.mean(ctl_losses)) if ctl_losses else float("nan"),
        probe_acc=probe_acc, edit_size=_mean_size(size, edited),
        control_edit_size=float(np.mean(ctl_sizes)) if ctl_sizes else float("nan"),
        control_accs=[float(c.mean()) for c in ctl],
        **_common_figures(base_correct, abl_correct, ctl, ctl_losses, rng, 2000, base_eq, abl_eq, ctl_eq),
    )


def _common_figures(base, ablated, controls, control_losses, rng, n_boot, base_eq, ablated_eq, controls_eq) -> dict:
    """The drop in points with its interval, the controls' accuracy interval (each question's accuracy
    averaged over the trials, resampled), the SEM of their losses, and the '='-given exact matches."""
    out = {"drop_points": 100.0 * float(np.mean(base) - np.mean(ablated)),
           "drop_points_ci": bootstrap_drop(base, ablated, rng, n_boot, relative=False)}
    if len(controls):
        per_question = controls.mean(0)
        means = per_question[rng.integers(0, len(per_question), size=(n_boot, len(per_question)))].mean(1)
        out["control_acc_ci"] = tuple(float(x) for x in np.percentile(means, [2.5, 97.5]))
        out["control_loss_sem"] = (float(np.std(control_losses, ddof=1) / np.sqrt(len(control_losses)))
                                   if len(control_losses) > 1 else float("nan"))
    if base_eq is not None:
        out.update(baseline_acc_given_eq=float(base_eq.mean()), ablated_acc_given_eq=float(ablated_eq.mean()),
                   control_acc_given_eq=float(np.mean(controls_eq)) if len(controls) else float("nan"))
    return out


def ablate_paper(model, task, feature: str, *, probe_seed: int = 0, n_controls: int = 32, seed: int = 0,
                 layer: str = "auto", paper_split: tuple[int, int] | None = None, progress=None) -> AblationResult:
    """The quiet-feature study's ablation of ``feature`` (module docstring): probes on the paper
    protocol's probe set of ``probe_seed`` (the run's seed, so that they are ``quietlab probe``'s at this
    checkpoint), at each position the layer with the lowest probe-train log-loss (or the block output
    ``layer``), on the probe-test examples; ``seed`` draws the controls' directions. ``paper_split``:
    (probe-train, probe-test) counts in place of 10,000 and 1,000 (for tests)."""
    from ..monitor.paper_probes import PROBE_TEST, PROBE_TRAIN, block_outputs, chosen_layers, fit_paper_probes, paper_probe_set

    model.eval()
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    batch, train_idx, test_idx = paper_probe_set(task, probe_seed, *(paper_split or (PROBE_TRAIN, PROBE_TEST)))
    if feature not in batch.features:
        raise ValueError(f"{task.name} has no feature {feature!r}; choose one of: {', '.join(batch.features)}")
    taps = block_outputs(model)
    layers = taps if layer == "auto" else [check_hook(layer, ["auto"] + taps)]
    probes = fit_paper_probes(model, batch, [feature], train_idx, test_idx, device=device, layers=layers)[feature]
    if not probes.pairs:
        raise ValueError(f"feature {feature!r} is defined at too few places, or is constant, on the probe set")
    chosen = {t: l for t, (l, _) in chosen_layers(probes).items()}
    where_chosen = {t: i for t, (_, i) in chosen_layers(probes).items()}
    scalar = probes.kind == "scalar"

    eval_batch = batch.take(test_idx)
    where = eval_batch.features[feature].mask
    d = model.config.d_model
    real = {t: _flat(*probes.probe(chosen[t], t)) for t in chosen}

    def edits_of(per_position):
        """One edit per tap: the positions whose chosen layer is that tap's."""
        edits = {}
        for tap in sorted(set(chosen.values()), key=depth):
            positions = [t for t, lt in chosen.items() if lt == tap]
            here = np.zeros_like(where)
            here[:, positions] = where[:, positions]
            edits[tap] = paper_edit({t: per_position[t] for t in positions}, here, d).to(device)
        return edits

    run = _Run(model, eval_batch, device, paper_task=task.preset == "paper")
    base_correct, base_loss, base_eq = run(None)
    ablation = edits_of(real)
    abl_correct, abl_loss, abl_eq, size = run.measured(ablation)
    edited = size.isfinite()
    ctl_correct, ctl_losses, ctl_sizes, ctl_eq = [], [], [], []
    for c in range(n_controls):
        edits = edits_of(paper_controls(real, d, rng))
        correct, loss, eq, moved = run.measured(edits)
        ctl_sizes.append(_mean_size(moved, edited))
        ctl_correct.append(correct)
        ctl_losses.append(loss)
        ctl_eq.append(eq)
        if progress is not None:
            progress(c + 1, n_controls)
    ctl = np.stack(ctl_correct) if ctl_correct else np.zeros((0, len(base_correct)))
    n_boot = 10_000
    score = probes.metrics[probes.main_metric]
    return AblationResult(
        feature=feature, method="boundary", layer=layer if layer != "auto" else "best per position (probe-train loss)",
        layers=chosen, n_examples=len(eval_batch),
        baseline_acc=float(base_correct.mean()), ablated_acc=float(abl_correct.mean()),
        drop_pct=relative_drop(base_correct, abl_correct),
        drop_ci=bootstrap_drop(base_correct, abl_correct, rng, n_boot),
        control_acc=float(ctl.mean()) if len(ctl) else float("nan"),
        control_drop_pct=relative_drop(base_correct, ctl.mean(0)) if len(ctl) else float("nan"),
        control_drop_ci=bootstrap_drop(base_correct, ctl.mean(0), rng, n_boot) if len(ctl) else NAN_PAIR,
        n_controls=n_controls, baseline_loss=base_loss, ablated_loss=abl_loss,
        control_loss=float(np.mean(ctl_losses)) if ctl_losses else float("nan"),
        probe_acc=float(np.mean([score[i] for i in where_chosen.values()])),
        probe_logloss=float("nan") if scalar else float(np.mean([probes.metrics["logloss"][i]
                                                                  for i in where_chosen.values()])),
        edit_size=_mean_size(size, edited), control_edit_size=float(np.mean(ctl_sizes)) if ctl_sizes else float("nan"),
        control_accs=[float(c.mean()) for c in ctl], protocol="paper",
        **_common_figures(base_correct, abl_correct, ctl, ctl_losses, rng, n_boot, base_eq, abl_eq, ctl_eq),
    )


def _mean_size(size: torch.Tensor, edited: torch.Tensor) -> float:
    """Mean ‖Δx‖ over the edited positions (each position's mean over the examples edited there)."""
    return float(size[edited].mean()) if bool(edited.any()) else float("nan")
