"""Probing that follows the plateau: part of the probe budget is held back and spent densely while the
loss sits on a plateau, so that whether a feature is quiet there rests on several points, not one.

The Monitor's probe budget (training steps' worth of probing, from the run's configuration) is split:
the log-spaced schedule keeps ``1 - share`` of what is left after step 0 and the last step, the rest is
a *reserve*. While the online detectors say the loss is on a plateau (the latest analysis of either
finds the curve ending on one: ``OnlineDetector.plateau``), the steps of a denser log-spaced grid
(``per_decade`` per decade, never closer together than ``MIN_GAP`` of the run) are probed too, from
the moment the plateau is seen, until the reserve is spent; a plateau counts once it is half as long as
the final offline reading's shortest plateau (1.5% of the run's span of log-steps), so that a flat
stretch early in the run, short against the run, is not followed, nor one shorter in steps than the
closest two plateau probes may be (``MIN_GAP`` of the run: the first few steps, flat before the loss
starts to fall, span a decade on the log axis). A plateau probe fits only the features still undecided
(``features.first_decodable``: not yet decodable at two probe steps in a row; a decided feature's
decodable step cannot change), and costs the reserve only its estimate (``monitor.probe_cost``), so the
reserve buys more of them as features are decided, and none once every feature is. A run without a plateau spends less than the budget.

Decisions are taken only at *sync points*, steps at which the detectors have seen every loss up to that
step (the Monitor syncs at each evaluation and checkpoint, before which the training loop hands over
all pending losses): what the follower does then depends on the losses, the probes' results and the
step, never on when the loop happened to flush or on the clock, so one seed gives the same probe steps
on any machine and under any load.
"""

from __future__ import annotations

import math
from typing import Iterable

from .transitions import MIN_PLATEAU_FRAC


#: plateau probes are never closer together than this fraction of the run (probes a few steps apart
#: early in a run would see nearly the same model)
MIN_GAP = 1 / 250


def dense_grid(total: int, per_decade: float) -> list[int]:
    """Steps 1 .. ``total`` - 1 rounded from ``10 ** (i / per_decade)``, each at least ``MIN_GAP`` of the run
    after the one before: the plateau probes' grid."""
    steps, i, gap = [], 0, total * MIN_GAP
    while per_decade > 0:
        s = round(10 ** (i / per_decade))
        if s >= total:
            break
        if s >= 1 and (not steps or s - steps[-1] >= gap):
            steps.append(s)
        i += 1
    return steps


def split_budget(inner: list[int], budget: float | None, cost: float, share: float) -> tuple[list[int], float]:
    """(the schedule's interior steps kept, the reserve) for ``budget`` training steps' worth of optional
    probing (None: no budget, the whole schedule and no reserve) and probe steps of ``cost`` each. The
    schedule gets ``1 - share`` of the budget, its kept steps spread evenly along it (the middle step of
    each of equally many stretches of it); what it does not use is the reserve."""
    if budget is None:
        return list(inner), 0.0
    base = int((1 - share) * budget / cost) if cost > 0 else len(inner)
    if base >= len(inner):
        return list(inner), max(0.0, budget - len(inner) * cost)
    kept = [inner[int((j + 0.5) * len(inner) / base)] for j in range(base)] if base > 0 else []
    return kept, budget - base * cost


class PlateauFollower:
    """Which extra steps to probe while the loss is on a plateau (see the module docstring).

    ``total``: the run's last step; ``reserve``: how many training steps' worth of extra probing it may
    spend; ``per_decade``: density of its grid; ``scheduled``: the steps probed anyway (not counted).
    ``sync(step, detectors)`` at each sync point, with the online detectors; ``due(step, cost)`` after
    each training step, with what a probe now would cost; ``took(step, cost)`` when one was taken.
    ``used``: the reserve spent; ``steps``: the extra steps probed.
    """

    def __init__(self, total: int, reserve: float, per_decade: float, scheduled: Iterable[int] = ()):
        # half the final offline reading's shortest plateau (detect_transitions' default), below which it
        # does not even refine a drop's estimates: a flat stretch short against the run is not followed
        self.min_length = 0.5 * MIN_PLATEAU_FRAC * math.log10(max(total, 10))
        self.min_gap = total * MIN_GAP
        self.reserve = float(reserve)
        self.scheduled = set(scheduled)
        self._grid = set(dense_grid(total, per_decade)) - self.scheduled
        self.used = 0.0
        self.active = False
        self.steps: list[int] = []

    def sync(self, step: int, detectors) -> bool:
        """At a sync point: follow while the latest analysis of any detector (on a log-step axis) ends on a
        plateau at least ``min_length`` decades and ``min_gap`` steps long (the flat first few steps of a
        run span a decade or more on the log axis, but hold no two probes ``min_gap`` apart). True when
        the follower has just started following (a plateau probe is then due at ``step`` itself)."""
        was = self.active
        self.active = any(d.plateau is not None and d.plateau.length >= self.min_length
                          and step - d.plateau.start >= self.min_gap for d in detectors)
        return self.active and not was

    def affords(self, cost: float) -> bool:
        return cost > 0 and self.used + cost <= self.reserve * (1 + 1e-9)

    def due(self, step: int, cost: float) -> bool:
        return (self.active and step in self._grid and self.affords(cost)
                and (not self.steps or step - self.steps[-1] >= self.min_gap))

    def took(self, step: int, cost: float) -> None:
        if step not in self.steps:
            self.used += cost
            self.steps.append(step)
