"""Probing that follows the plateau: part of the probe budget is held back and spent densely while the
loss sits on a plateau, so that whether a feature is quiet there rests on several points, not one.

The Monitor's probe budget (a number of probe steps, from the run's configuration) is split: the
log-spaced schedule keeps ``1 - share`` of it, the rest is a *reserve*. While the online detector says
the loss is on a plateau (its latest event is a "plateau", not a "transition"), the steps of a denser
log-spaced grid (``per_decade`` per decade) are probed too, until the reserve is spent. A run without a
plateau spends less than the budget.

Decisions are taken only at *sync points*, steps at which the detector has seen every loss up to that
step (the Monitor syncs at each evaluation and checkpoint, before which the training loop hands over
all pending losses): what the follower does then depends on the losses and the step alone, never on
when the loop happened to flush, so one seed gives the same probe steps on any machine and load.
"""

from __future__ import annotations

from typing import Iterable


def dense_grid(total: int, per_decade: float) -> list[int]:
    """Steps 1 .. ``total`` - 1 rounded from ``10 ** (i / per_decade)``: the plateau probes' grid."""
    steps, i = set(), 0
    while per_decade > 0:
        s = round(10 ** (i / per_decade))
        if s >= total:
            break
        if s >= 1:
            steps.add(s)
        i += 1
    return sorted(steps)


def split_budget(inner: list[int], keep: int | None, share: float) -> tuple[list[int], int]:
    """(the schedule's interior steps kept, the reserve) for ``keep`` optional probe steps in all
    (None: no budget, the whole schedule and no reserve). The kept steps are spread evenly along the
    schedule: the middle step of each of equally many stretches of it; budget the schedule does not
    use goes to the reserve."""
    if keep is None:
        return list(inner), 0
    reserve = int(round(share * keep))
    base = keep - reserve
    if base >= len(inner):
        return list(inner), keep - len(inner)
    kept = [inner[int((j + 0.5) * len(inner) / base)] for j in range(base)] if base > 0 else []
    return kept, reserve


class PlateauFollower:
    """Which extra steps to probe while the loss is on a plateau (see the module docstring).

    ``total``: the run's last step; ``reserve``: how many extra probe steps it may take;
    ``per_decade``: density of its grid; ``scheduled``: the steps probed anyway (not counted).
    ``sync(step, events)`` at each sync point, with every detector event so far; ``due(step)`` after
    each training step; ``took(step)`` when a probe was taken. ``used`` counts the reserve spent.
    """

    def __init__(self, total: int, reserve: int, per_decade: float, scheduled: Iterable[int] = ()):
        self.reserve = int(reserve)
        self.scheduled = set(scheduled)
        self._grid = set(dense_grid(total, per_decade)) - self.scheduled
        self.used = 0
        self.active = False
        self.steps: list[int] = []  # the extra steps probed

    def sync(self, step: int, events) -> None:
        """At a sync point: follow while the latest event reported by ``step`` is a plateau."""
        known = [e for e in events if e.reported_at <= step]
        last = max(known, key=lambda e: (e.reported_at, e.kind == "plateau"), default=None)
        self.active = last is not None and last.kind == "plateau"

    def due(self, step: int) -> bool:
        return self.active and self.used < self.reserve and step in self._grid

    def took(self, step: int) -> None:
        if step in self._grid and step not in self.steps:
            self.used += 1
            self.steps.append(step)
