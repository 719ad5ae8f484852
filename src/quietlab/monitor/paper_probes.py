"""The quiet-feature study's probe protocol (PAPER_PROTOCOL §4), for runs of the ``paper`` preset.

- Probe set: 10,000 probe-train and 1,000 probe-test examples drawn afresh from the task's held-out side
  (never trained on), with a seed of their own (``paper_probe_set``).
- Activations: every block's output (``blocks.{l}.hook_resid_post``, before the final norm; not the
  embeddings), one probe per (layer, position) where the feature is defined.
- Probes: ``LogisticRegression(C=100)`` on the raw activations (binary; one-hot: multinomial; multi-label:
  one per column, columns constant on probe-train dropped) and ``LinearRegression`` for scalar labels
  (``PAPER_FIT``: ``probes.fit_features`` with C = 100 and l2 = 0 on unscaled activations). Positions where
  the label is constant on probe-train are skipped.
- Layer: at each position the layer with the lowest probe-train log-loss (MSE for scalars); its test
  log-loss and accuracy are the position's (``chosen_layers``). A feature's score at a checkpoint is the
  geometric mean over its positions of those test log-losses (``paper_score``; the study plots positions in
  thirds, each by its geometric mean).
- Baseline: the same probes on a separately initialised random model of the same configuration, with its
  own seed (``baseline_model``); at each position the lowest test log-loss over layers, then the geometric
  mean over positions.

The study reads quiet or loud by eye: probe loss below the baseline before the task's success threshold.
``classify_paper`` makes that automatic on a run's checkpoints: a feature is decodable at a checkpoint
whose score is below the baseline's, and again at the next probed checkpoint (one lucky checkpoint is not
enough, as in features.py); it is then placed against the loss transition by ``features.place``
(quiet: before the drop, loud: during it). The study compares separate runs at increasing compute
budgets; here the checkpoints of one run stand in for them (a run's plateau is where the study's
budgets below the threshold are).
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch

from ..models.hooks import EMBED, depth
from .features import GUARD, place
from .probes import TRAIN_METRIC, ProbeResult, capture_layers, fit_features, residual_taps

PROBE_TRAIN, PROBE_TEST = 10_000, 1_000
#: fit_features' options for the study's probes: max_iter is scikit-learn's cap for its lbfgs; tol 1e-3 (ten times
#: tighter than quietlab's default) keeps test log-losses within 0.003 of scikit-learn's converged fit
#: (tests/test_paper_probes.py)
PAPER_FIT = dict(C=100.0, l2=0.0, standardize=False, drop_constant_outputs=True, train_metrics=True, max_iter=1000,
                 tol=1e-3)
#: seed offsets of the paper protocol's probe set and of its random-model baseline
PROBE_SEED_OFFSET, BASELINE_SEED = 0x9A9E5, 0xBA5E


def paper_probe_set(task, seed: int, n_train: int = PROBE_TRAIN, n_test: int = PROBE_TEST):
    """(batch, train_idx, test_idx): ``n_train + n_test`` held-out examples of ``task`` (never trained on),
    the first ``n_train`` to fit the probes, the last ``n_test`` to test them (and to ablate on)."""
    if n_train < 1 or n_test < 1:
        raise ValueError(f"the probe set needs probe-train and probe-test examples, got {n_train} and {n_test}")
    batch = task.sample(n_train + n_test, seed=int(seed) + PROBE_SEED_OFFSET, split="test")
    return batch, np.arange(n_train), np.arange(n_train, n_train + n_test)


def block_outputs(model) -> list[str]:
    """The taps the study probes: every block's output, in depth order (no embeddings)."""
    return [name for name in residual_taps(model) if name != EMBED]


def fit_paper_probes(model, batch, features, train_idx, test_idx, device=None, init=None,
                     layers=None) -> dict[str, ProbeResult]:
    """{feature: ProbeResult} of the study's probes of ``features`` (names) on ``model``'s block outputs
    (``layers``: some of them only)."""
    from .monitor import trim_to_features

    tokens, feats = trim_to_features(batch.tokens, {n: batch.features[n] for n in features})
    taps = block_outputs(model) if layers is None else list(layers)
    acts = capture_layers(model, tokens, layers=taps, device=device)
    return fit_features(acts, feats, train_idx, test_idx, layers=taps, device=device, init=init, **PAPER_FIT)


def baseline_model(model_config, seed: int):
    """A separately initialised random model of the same configuration, seeded by (``seed``, BASELINE_SEED)."""
    from ..models.transformer import Transformer
    from ..train.loop import derive_seed

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(derive_seed(seed, BASELINE_SEED))
        return Transformer(model_config).eval()
    finally:
        torch.random.set_rng_state(state)


def _test_metric(kind: str) -> str:
    return "mse" if kind == "scalar" else "logloss"


def chosen_layers(result: ProbeResult) -> dict[int, tuple[str, int]]:
    """{position: (layer, index into result.pairs)}: the layer with the lowest probe-train loss there."""
    train = result.metrics[TRAIN_METRIC["scalar" if result.kind == "scalar" else "classification"]]
    best: dict[int, tuple[str, int]] = {}
    for i, (layer, t) in enumerate(result.pairs):
        if np.isfinite(train[i]) and (t not in best or train[i] < train[best[t][1]]):
            best[t] = (layer, i)
    return dict(sorted(best.items()))


def geometric_mean(values) -> float:
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if not len(values):
        return float("nan")
    return float(np.exp(np.mean(np.log(np.maximum(values, 1e-300)))))


def paper_score(result: ProbeResult) -> dict:
    """The study's reading of one feature's probes: per position the layer chosen by probe-train loss, its
    test loss and accuracy (R² for scalars); ``loss`` the geometric mean of the test losses over positions,
    ``score`` the mean accuracy (R²) there (``score_rows`` on the result's own rows)."""
    return score_rows(result.rows(0), result.feature).get(0, {})


def baseline_score(result: ProbeResult) -> dict:
    """The random-model baseline of one feature: per position the lowest test loss over layers, their
    geometric mean (``loss``), and the best accuracy (R²) over layers, averaged (``score``)."""
    loss_name, score_name = _test_metric(result.kind), result.main_metric
    lowest, highest = defaultdict(lambda: math.inf), defaultdict(lambda: -math.inf)
    for i, (_, t) in enumerate(result.pairs):
        lowest[t] = min(lowest[t], float(result.metrics[loss_name][i]))
        highest[t] = max(highest[t], float(result.metrics[score_name][i]))
    positions = sorted(lowest)
    return {"metric": loss_name, "positions": positions, "losses": [lowest[t] for t in positions],
            "loss": geometric_mean([lowest[t] for t in positions]),
            "score": float(np.mean([highest[t] for t in positions])) if positions else float("nan")}


def score_rows(rows, feature: str) -> dict[int, dict]:
    """{step: paper_score-like dict} of one feature from stored probe rows (step, feature, layer, position,
    metric, value) that carry probe-train losses (the paper protocol's ``quietlab probe`` rows)."""
    by_step: dict[int, dict[tuple[str, int], dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for step, feat, layer, pos, metric, value in rows:
        if feat == feature and value is not None:
            by_step[int(step)][(str(layer), int(pos))][metric] = float(value)
    out = {}
    for step, pairs in sorted(by_step.items()):
        train = next((m for m in TRAIN_METRIC.values() if any(m in v for v in pairs.values())), None)
        if train is None:
            continue
        scalar = train == TRAIN_METRIC["scalar"]
        loss_name, score_name = ("mse", "r2") if scalar else ("logloss", "acc")
        best: dict[int, tuple[str, dict]] = {}
        for (layer, t), v in sorted(pairs.items(), key=lambda kv: (depth(kv[0][0]), kv[0][1])):
            if train in v and (t not in best or v[train] < best[t][1][train]):
                best[t] = (layer, v)
        positions = sorted(best)
        losses = [best[t][1].get(loss_name, math.nan) for t in positions]
        scores = [best[t][1].get(score_name, math.nan) for t in positions]
        out[step] = {"metric": loss_name, "positions": positions, "layers": [best[t][0] for t in positions],
                     "losses": losses, "scores": scores, "loss": geometric_mean(losses),
                     "score": float(np.nanmean(scores)) if scores else float("nan")}
    return out


def classify_paper(scores: dict[int, dict], baseline: dict, transition=None, plateau_start: float | None = None,
                   feature: str = "", guard: float = GUARD) -> dict:
    """Quiet, loud, absent or unresolved by the study's metric: decodable from the first probed step (after
    the first) whose score's ``loss`` is below the baseline's and stays so at the next probed step; placed
    against the loss transition as ``features.place`` does. ``scores``: {step: paper_score dict}."""
    steps = sorted(scores)
    below = [scores[s]["loss"] < baseline["loss"] for s in steps]
    decodable = prev = None
    for i in range(1, len(steps)):
        if below[i] and (i == len(steps) - 1 or below[i + 1]):
            decodable, prev = steps[i], steps[i - 1]
            break
    placed = place(decodable, prev, transition, plateau_start, guard)
    before = [s for s in steps if placed["start"] is not None and s < placed["start"]]
    last = scores[steps[-1]] if steps else {}
    return {
        "feature": feature,
        "class": placed["class"],
        "metric": baseline.get("metric", "logloss"),
        "decodable_step": decodable,
        "loss_before_transition": scores[before[-1]]["loss"] if before else None,
        "loss_final": last.get("loss"),
        "baseline_loss": baseline.get("loss"),
        "score_before_transition": scores[before[-1]]["score"] if before else None,
        "score_final": last.get("score"),
        "baseline_score": baseline.get("score"),
        "final_layers": dict(zip(map(str, last.get("positions", [])), last.get("layers", []))),
        "steps": steps,
        "losses": [scores[s]["loss"] for s in steps],
        "onset": placed["onset"],
        "end": placed["end"],
        "drop_start": placed["start"],
        "note": placed["note"] if decodable is not None else "never below the random model's probe loss",
    }
