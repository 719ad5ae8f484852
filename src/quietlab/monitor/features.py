"""Quiet, loud or absent: the paper's classification of features, made automatic.

Inputs: the probe rows of a run (step, feature, layer, position, metric, value) and its loss curve.

Per feature, with ``m`` its score (``acc`` for classification features, ``r2`` for scalar ones) and
``m_lo``/``m_hi`` the ends of its 95% interval (``acc_lo``/``acc_hi``, ``r2_lo``/``r2_hi``; the score
itself where they were not logged):

- *Aggregate.* At each probed step and layer, the mean over the positions where the feature was
  probed of m, of m_lo and of m_hi (the mean of the bounds is a conservative bound for the mean).
- *Best layer*: the layer with the highest aggregate m at the last probed step (ties: the lower layer).
- *Baseline*: the aggregate at step 0, the random-init model, layer by layer (the earliest probed step
  if step 0 was not probed).
- *Decodable step*: the first probed step s > baseline step at which some layer l clearly beats its
  own baseline, ``m_lo(l, s) > m_hi(l, 0) + margin`` (default margin 0.02: two points of accuracy or
  of R²), and does so again at the next probed step (when there is one): one lucky checkpoint is not
  enough. ``decodable_layer`` says which layer did it first.
- *Transition*: ``detect_transitions`` on the loss curve (log-step axis): ``eval/loss``, or where it
  shows none, the per-step ``train/loss`` (see ``LOSS_CURVES``); with several, the one that improves the
  loss by the largest factor (``main_transition``).

Classes, with ``start`` the transition's onset moved back by ``guard`` (default ½) of the drop's width
on the log-step axis, ``start = onset / 10^(guard · width)``: the detector's onset is where the steepest
tangent meets the plateau level, by which point a logistic drop has already done about 12% of its fall,
so a feature first decodable just before it cannot be told apart from the drop:
- ``quiet``: decodable before ``start`` (during the plateau or earlier);
- ``loud``: decodable from ``start`` to the end of the drop (inclusive);
- ``absent``: never decodable beyond the baseline, or only after the drop was over (``note`` says which);
- ``unresolved``: first decodable after the drop while the probe before that came before it: with no
  probe in between (a run probed too sparsely), the feature cannot be placed.

Runs without a transition (none yet, or a smooth curve): a feature that became decodable while the loss
sat on the plateau it ends on (``current_plateau``; decodable step at or after the plateau's start) was
learned while the loss did not move: ``quiet``. One that became decodable while the loss was still
falling without an abrupt drop has no phase to be compared with: ``unresolved``. The others ``absent``.

Each classification is a plain dict (stored as result ``feature_class``, key = feature name):
``feature, class, metric, best_layer, decodable_step, decodable_layer, {m}_before_transition,
{m}_final, baseline_{m}, baseline_step, final_step, onset, end, drop_start, transition_curve, margin,
note, probe_fit`` (layers are hook names, ``models.hooks``; ``probe_fit``: which fit's rows were used,
``RunStore.shown_fit``) ({m} is ``acc`` or ``r2``); ``{m}_before_transition`` is the best layer's aggregate at the last
probed step before ``drop_start`` (None without a transition).

Runs probed with the quiet-feature study's protocol (``quietlab probe`` on a run of the paper preset:
probe rows with probe-train losses, and results ``paper_baseline``) are also classified by the study's
metric, ``paper_probes.classify_paper``, placed against the same transition by ``place``: results
``feature_class_paper``.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from typing import Iterable

import numpy as np

from ..models.hooks import depth

CLASSES = ("quiet", "loud", "absent", "unresolved")
GUARD = 0.5  # share of the drop's width (log-step axis) by which the quiet/loud line precedes its onset


def probe_curves(rows: Iterable[tuple], feature: str) -> dict | None:
    """Aggregates of one feature: {"metric", "steps", "layers", "m", "lo", "hi"} with (S, L) arrays (NaN
    where a layer was not probed at a step), or None when the feature has no probe rows."""
    by = defaultdict(lambda: defaultdict(list))  # (metric) -> (step, layer) -> values
    for step, feat, layer, _pos, metric, value in rows:
        if feat == feature and value is not None:
            by[metric][(int(step), str(layer))].append(float(value))
    metric = "acc" if "acc" in by else "r2" if "r2" in by else None
    if metric is None:
        return None
    keys = by[metric]
    steps = sorted({s for s, _ in keys})
    layers = sorted({l for _, l in keys}, key=depth)
    si, li = {s: i for i, s in enumerate(steps)}, {l: i for i, l in enumerate(layers)}

    def grid(name):
        src = by.get(name) or keys
        out = np.full((len(steps), len(layers)), np.nan)
        for (s, l), vals in src.items():
            if s in si and l in li:
                out[si[s], li[l]] = float(np.mean(vals))
        return out

    return {"metric": metric, "steps": steps, "layers": layers, "m": grid(metric), "lo": grid(f"{metric}_lo"),
            "hi": grid(f"{metric}_hi")}


def beats_baseline(curves: dict, margin: float = 0.02) -> np.ndarray:
    """(S, L) bool: where a layer's aggregate clearly beats its own baseline, ``m_lo(l, s) > m_hi(l, 0) +
    margin`` (never at the baseline row itself, the first)."""
    lo, hi = curves["lo"], curves["hi"]
    beats = lo > (hi[0][None, :] + margin)  # NaN compares False
    beats[0] = False
    return beats


def first_decodable(beats: np.ndarray, confirmed_at_end: bool = True) -> int | None:
    """Row of the decodable step: the first probed step after the baseline at which some layer beats its
    baseline and does so again at the next probed step. ``confirmed_at_end``: the last row needs no next
    one (a finished run); False while training, when a next probe may still come (then the returned
    row is settled: no later probe can change it)."""
    any_layer = beats.any(axis=1)
    last = len(any_layer) - 1
    for i in range(1, last + 1):
        if any_layer[i] and ((i == last and confirmed_at_end) or (i < last and any_layer[i + 1])):
            return i
    return None


def main_transition(transitions) -> object | None:
    """The transition that improves the curve by the largest factor (level before / level after, for
    a loss whose levels are both positive), else by the largest drop; None without one.

    A factor, not a difference: an 11-node BFS model's training loss falls from 2.2 to 0.75 in a first
    drop and from 0.78 to 0.02 in the later one that ends the long plateau; the first is the larger
    difference (1.45 against 0.76), the second the transition into the solved phase (a factor of 39
    against 3)."""
    transitions = list(transitions or [])
    return max(transitions, key=_improvement) if transitions else None


def _improvement(t) -> tuple[int, float]:
    """Sort key of ``main_transition``: factors (rank 1) above plain drops (rank 0) where both occur."""
    before, after = _get(t, "level_before"), _get(t, "level_after")
    if (_get(t, "direction") or "down") == "down" and before is not None and after is not None and after > 0 \
            and before > after and math.isfinite(before):
        return 1, math.log(before / after)
    return 0, float(_get(t, "drop") or 0.0)


def classify_feature(curves: dict, transition=None, *, feature: str = "", margin: float = 0.02,
                     guard: float = GUARD, plateau_start: float | None = None, curve_name: str = "eval/loss") -> dict:
    """The classification dict of one feature from its ``probe_curves`` and the main transition (an
    object or dict with ``onset``, ``end`` and ``width``; None without one). ``plateau_start`` matters
    only without a transition: where the plateau the loss ends on began (None: it ends falling)."""
    metric, steps, layers = curves["metric"], curves["steps"], curves["layers"]
    m = curves["m"]
    last = len(steps) - 1
    final = m[last]
    best = int(np.nanargmax(np.where(np.isnan(final), -np.inf, final))) if np.isfinite(final).any() else 0
    base_row = 0  # step 0 if probed, else the earliest probed step
    beats = beats_baseline(curves, margin)
    decodable_step = decodable_layer = prev_step = None
    i = first_decodable(beats, confirmed_at_end=True)
    if i is not None:
        decodable_step, prev_step = steps[i], steps[i - 1]
        decodable_layer = layers[int(np.flatnonzero(beats[i])[0])]

    placed = place(decodable_step, prev_step, transition, plateau_start, guard)
    cls, note, onset, end, start = placed["class"], placed["note"], placed["onset"], placed["end"], placed["start"]
    before = None
    if start is not None:
        prior = [i for i, s in enumerate(steps) if s < start]
        if prior:
            before = _num(m[prior[-1], best])
    if decodable_step is None:
        note = "never decodable beyond the random-init baseline"

    return {
        "feature": feature,
        "class": cls,
        "metric": metric,
        "best_layer": layers[best],
        "decodable_step": None if decodable_step is None else int(decodable_step),
        "decodable_layer": decodable_layer,
        f"{metric}_before_transition": before,
        f"{metric}_final": _num(final[best]),
        f"baseline_{metric}": _num(m[base_row, best]),
        "baseline_step": int(steps[base_row]),
        "final_step": int(steps[last]),
        "onset": onset,
        "end": end,
        "drop_start": start,
        "transition_curve": curve_name if transition is not None else None,
        "margin": margin,
        "note": note,
    }


def guarded_start(transition, guard: float = GUARD) -> float:
    """The step before which a feature must be decodable to be quiet: the ``transition``'s onset moved back
    by ``guard`` of its width on the log-step axis (the onset itself when the width is unknown)."""
    onset, width = float(_get(transition, "onset")), _get(transition, "width")
    return onset / 10 ** (guard * float(width)) if width is not None and onset > 0 else onset


def place(decodable_step, prev_step, transition, plateau_start: float | None = None, guard: float = GUARD) -> dict:
    """The class of a feature first decodable (persistently) at ``decodable_step``, the probed step before
    it being ``prev_step``, against the main ``transition`` (see the module docstring): {"class", "note",
    "onset", "end", "start"} (``start``: ``guarded_start``; None without a transition)."""
    onset = end = start = None
    if transition is not None:
        onset, end = float(_get(transition, "onset")), float(_get(transition, "end"))
        start = guarded_start(transition, guard)
    note = ""
    if decodable_step is None:
        cls = "absent"
        note = "never decodable beyond the baseline"
    elif transition is not None:
        if decodable_step < start:
            cls = "quiet"
        elif decodable_step <= end:
            cls = "loud"
        elif prev_step is not None and prev_step < start:
            cls = "unresolved"  # not decodable at prev_step, decodable at decodable_step: no probe in between
            note = (f"no probe between step {prev_step} (before the drop) and step {decodable_step} (after it): "
                    "too few probes to place the feature")
        else:
            cls = "absent"
            note = f"decodable only after the transition (from step {decodable_step})"
    elif plateau_start is not None and decodable_step >= plateau_start:
        cls = "quiet"
        note = f"no transition: decodable while the loss sat on its plateau (since step {plateau_start:g})"
    else:
        cls = "unresolved"
        note = "no transition in the loss curve, which was still falling when the feature became decodable"
    return {"class": cls, "note": note, "onset": onset, "end": end, "start": start}


def classify_features(probe_rows, loss_steps, loss_values, *, features: Iterable[str] | None = None,
                      margin: float = 0.02, guard: float = GUARD, curve_name: str = "eval/loss",
                      transitions=None) -> tuple[list, dict]:
    """(transitions found in the loss curve, {feature: classification dict})."""
    from .transitions import detect_transitions

    rows = list(probe_rows)
    names = sorted({r[1] for r in rows}) if features is None else list(features)
    steps = np.asarray(loss_steps, dtype=float)
    values = np.asarray([np.nan if v is None else v for v in loss_values], dtype=float)
    if transitions is None:
        transitions = detect_transitions(steps, values, log_x=True, direction="down") if len(steps) >= 8 else []
    main = main_transition(transitions)
    plateau_start = final_plateau_start(steps, values) if main is None else None
    out = {}
    for name in names:
        curves = probe_curves(rows, name)
        if curves is not None:
            out[name] = classify_feature(curves, main, feature=name, margin=margin, guard=guard,
                                         plateau_start=plateau_start, curve_name=curve_name)
    return transitions, out


def final_plateau_start(steps, values) -> float | None:
    """Where the plateau a loss curve ends on began (None: it ends falling, or is too short to tell)."""
    from .transitions import current_plateau

    steps = np.asarray(steps, dtype=float)
    values = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    if len(steps) < 8:
        return None
    plateau = current_plateau(steps, values, log_x=True, direction="down")
    return None if plateau is None else float(plateau.start)


#: Loss curves a run's transition is looked for in, in order: the held-out loss, then the training
#: loss, which is logged every step and, since every step draws fresh examples, estimates the same
#: population loss; its density resolves a plateau that the sparser evaluations only touch.
LOSS_CURVES = ("eval/loss", "train/loss")


def classify_run(store, *, features: Iterable[str] | None = None, curve: str | None = None, margin: float = 0.02,
                 write: bool = True) -> dict:
    """Classify a run's probed features from its store; writes results ``transition`` (key: each loss
    curve looked at, a list of transition dicts) and ``feature_class`` (one per feature). ``curve``:
    the loss curve to use; by default the first of ``LOSS_CURVES`` with a transition (else the first
    that was logged). Returns {"transitions": [...], "main": dict | None, "curve": name, "features": {...}}."""
    fit = store.shown_fit()
    rows = store.probes(fit=fit) if features is None else [r for f in features for r in store.probes(f, fit=fit)]
    used, found = _loss_transitions(store, curve)
    steps, values, transitions = found[used]
    _, classes = classify_features(rows, steps, values, features=features, margin=margin, curve_name=used,
                                   transitions=transitions)
    for c in classes.values():
        c["probe_fit"] = fit
    main = main_transition(transitions)
    paper = _paper_classes(store, rows, classes, main, None if main is not None else final_plateau_start(steps, values))
    if write:
        for name, (_, _, ts) in found.items():
            store.put("transition", name, [_as_dict(t) for t in ts])
        for name, c in classes.items():
            store.put("feature_class", name, c)
        for name, c in paper.items():
            store.put("feature_class_paper", name, c)
    return {"transitions": [_as_dict(t) for t in transitions], "main": None if main is None else _as_dict(main),
            "curve": used, "features": classes, "paper_features": paper}


def _paper_classes(store, rows, features, main, plateau_start) -> dict:
    """The study's classification (``paper_probes.classify_paper``) of each feature whose probe rows carry
    probe-train losses and whose random-model baseline the store holds (results ``paper_baseline``, written
    by ``quietlab probe`` on runs of the paper preset); {} otherwise."""
    from .paper_probes import classify_paper, score_rows

    baselines = store.results("paper_baseline")
    out = {}
    for name in features:
        if name in baselines:
            scores = score_rows(rows, name)
            if scores:
                out[name] = classify_paper(scores, baselines[name], main, plateau_start, feature=name)
    return out


def run_transition(store, curve: str | None = None) -> tuple[dict | None, str]:
    """(the main transition of a run as ``classify_run`` finds it, as a dict, or None; the loss curve it
    was looked for in): the first of ``LOSS_CURVES`` with a transition, or ``curve``."""
    transitions, used = run_transitions(store, curve)
    main = main_transition(transitions)
    return main, used


def run_transitions(store, curve: str | None = None) -> tuple[list[dict], str]:
    """(every transition found in the loss curve that ``run_transition`` reads, as dicts in step order;
    that curve's name): the main one is among them, the others say what it was chosen over."""
    used, found = _loss_transitions(store, curve)
    return [_as_dict(t) for t in found[used][2]], used


def _loss_transitions(store, curve: str | None) -> tuple[str, dict[str, tuple]]:
    """(the curve used, {curve looked at: (steps, values, transitions)}): ``curve``, or ``LOSS_CURVES`` in
    order up to the first with a transition (the first logged one is used when none has)."""
    from .transitions import detect_transitions

    found: dict[str, tuple] = {}
    for name in (curve,) if curve else LOSS_CURVES:
        steps, values = store.series(name)
        if len(steps) == 0 and curve is None:
            continue
        ts = detect_transitions(steps, values, log_x=True, direction="down") if len(steps) >= 8 else []
        found[name] = (steps, values, ts)
        if main_transition(ts) is not None:
            break
    if not found:
        found[LOSS_CURVES[0]] = ([], [], [])
    used = next((n for n, (_, _, ts) in found.items() if main_transition(ts) is not None), next(iter(found)))
    return used, found


# ------------------------------------------------------------------------------------------------
def _get(t, key):
    return t.get(key) if isinstance(t, dict) else getattr(t, key, None)


def _as_dict(t) -> dict:
    d = dataclasses.asdict(t) if dataclasses.is_dataclass(t) else dict(t)
    return {k: (float(v) if isinstance(v, (np.floating, np.integer)) else v) for k, v in d.items()}


def _num(x) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None
