"""Plateaus and abrupt transitions in a training curve, found without task-dependent thresholds.

A validation loss of a model learning an algorithmic task typically falls fast at first (the
*initial ramp*), then sits nearly still over a long range of steps or FLOPs (a *plateau*), then
drops abruptly (a *transition*), perhaps several times. This module finds those pieces in a curve
``(x, y)``: offline with :func:`detect_transitions`, during training with :class:`OnlineDetector`.

Definitions and method
----------------------
The curve is analysed on the axis ``u = log10 x`` (``log_x=True``; if some ``x <= 0``,
``u = log10(x + s)`` with ``s`` the first gap between distinct ``x`` minus ``min x``, so that step 0
sits one logging interval before the first step) or ``u = x`` (``log_x=False``). ``direction="up"``
(an accuracy) is handled by flipping the sign; everything below speaks of a loss going down.

1. *Noise.* Each point's scatter is estimated locally and robustly from the second differences
   ``d2`` of neighbouring points (a linear trend cancels; ``var d2 = 6 sigma^2`` for independent
   noise): their root mean square with the largest tenth left out, rescaled for a Gaussian, over
   each bin and 10 points either side, pooled with the whole curve's median as if that were 10
   more values. Noise correlated over several points hides from that estimate; the scatter of
   the points inside well-filled bins shows it, and where that is larger, all scatters are
   scaled up by the ratio.
2. *Bins.* The points are gathered into at most ``max_bins`` bins of equal width in ``u``; a bin's
   value is the median of its points (robust to spikes) with variance ``pi/2 sigma^2 / n``. A
   Hampel filter replaces isolated outlying bins, and a local dispersion factor (running median of
   the bins' squared standardised second differences over 25 bins, relative to pure noise, at
   least 1) inflates the variances where the bins scatter more than their points predict.
3. *Fit.* Exact dynamic programming cuts the bins into straight segments, minimising
   ``chi^2 + beta * (number of segments)`` with the BIC penalty ``beta = 3 ln B`` (slope,
   intercept and cut point per segment, ``B`` bins). The curve is then refitted as one continuous
   linear spline with a knot on both sides of every cut, so a drop sharper than a bin stays a
   steep short piece while a smooth bend does not become a saw-tooth of separate lines. Knot
   variances come from the weighted least-squares covariance, inflated by the overdispersion.
4. *Drop runs.* From the spline piece with the largest lower confidence bound (``Z_GROW``
   standard errors) on its rate of improvement per unit ``u``, a run grows over neighbours that
   improve, within their noise, at least ``1/GROW`` as fast (its *core*), then over neighbours
   improving at least ``1/EXTEND`` of the core's mean rate (measured over no less than
   ``RESOLUTION`` bin widths), its *tails*: a drop's tails flatten away from its core, so a tail
   stops before a piece that is clearly steeper (its rate's lower bound above the least upper
   bound of the tail's pieces so far) — another fall, such as the initial ramp behind a sloping
   plateau. The next run starts from the best piece left, and so on.
   ``drop`` is the run's total improvement. A run that passes (a) and (b) below and runs
   straight into one more than ``1/BAND`` times larger is that one's knee, and joins it.
5. *Onset and end.* With ``u25, u50, u75`` where the run has done 25, 50 and 75% of its drop,
   ``onset = u50 - (u75 - u25)/ln 3`` and ``end = u50 + (u75 - u25)/ln 3``: for a logistic drop in
   ``u`` exactly where its steepest tangent meets the levels before and after. The estimate is
   refined by a weighted least-squares fit of a logistic in ``u`` to the bins around the run; when
   the fit converges and agrees with the spline (its drop within a factor 2 of the run's, both of its
   levels reached by the bins to within ``BAND`` of its drop, its centre -+ 2 widths inside them),
   its centre -+ 2 widths and its two levels are used (``level_before`` and ``level_after``).
6. *Plateau.* The plateau before a drop is the stretch that ends at the onset and reaches back as
   far as the fit stays within ``BAND * drop`` of ``level_before`` (and not past the end of the
   previous transition): flat *relative to the drop that ends it*.
7. *Transition.* A drop is a transition when (a) ``drop >= min_drop`` (default ``REL_DROP`` of the
   fitted curve's range); (b) ``drop`` is at least ``Z_DROP`` standard errors, judged both from
   the spline's levels and from the mean of the bins on the plateau against those after the
   drop (which does not depend on where the segmentation chose to cut); (c) the plateau lasts at
   least ``need = max(min_plateau, ABRUPT * width)`` (default ``min_plateau``: ``MIN_PLATEAU_FRAC``
   of the span of ``u``): the drop is not much slower than the wait before it, which is what
   "abrupt" means here, and holds ``MIN_POINTS`` observed
   points; (d) the drop is over: where the run reaches the last point and the curve still falls
   there at least ``1/GROW`` as fast as the run's core (a lower confidence bound), only once the
   fitted logistic of 5. places its end inside the data (a slowly falling tail after a drop does
   not hold the drop open); and the curve is seen after the drop's end for
   ``HOLD * max(KAPPA * width, MIN_HOLD_FRAC * span)`` and on at least ``MIN_POINTS`` points
   without undoing half the drop (a dip that recovers is noise).
8. *Initial ramp.* A curve that starts at the start of training (``initial_ramp=None``, the
   default: when its first ``x`` is at most one logging interval from 0) often sits flat for its
   first steps on a log axis before the loss starts to fall; its first drop that passes (a) and
   (b), with the drops that follow it without a plateau between, is then the initial ramp and
   never a transition. The default ``min_drop`` of later drops is ``REL_DROP`` of the fitted
   curve's range after the ramp, so a ramp that dwarfs them does not hide them. Pass
   ``initial_ramp=False`` when logging began on the plateau, ``True`` to force the rule.

A smooth decrease that is convex in ``log x`` (a power law, an exponential approach) has no
transition: before any point the curve is at least as steep as after it, so the stretch within
``BAND * drop`` before a drop is at most ``BAND * width`` long, short of (c). All constants
below are dimensionless ratios; none depends on the task, the loss's unit or the number of steps.
``min_drop`` and ``min_plateau`` can be set by hand where the relative defaults do not fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Transition",
    "Plateau",
    "Event",
    "detect_transitions",
    "current_plateau",
    "OnlineDetector",
]

#: The plateau before a drop: the fit stays within ``BAND * drop`` of the level before it.
BAND = 0.25
#: A drop run takes in neighbouring pieces at least ``1/GROW`` as steep as its steepest piece.
GROW = 4.0
#: A drop run then continues over neighbours improving at least ``1/EXTEND`` of its core's rate.
EXTEND = 6.0
#: Rates are measured over at least this many bin widths (the resolution of the analysis).
RESOLUTION = 4.0
#: Pieces join a run when their improvement is within ``Z_GROW`` standard errors of the rate asked.
Z_GROW = 2.0
#: A plateau lasts at least ``ABRUPT`` times as long (in u) as the drop that ends it. Above ``BAND``, so
#: that a smooth convex decrease still has none (see the module docstring). 0.75, not 1: the ratio is
#: an estimate, and it moves by a third with where the curve is cut (seed 2 of the paper preset's
#: 11-node BFS runs: the same drop 0.83 in 48,000 steps, 1.39 in its first 20,000); at 1 that drop,
#: 0.83 to 1.17 in the three seeds, was found in some runs and cuts and missed in others.
ABRUPT = 0.75
#: The online detector's ``ABRUPT``: an event, once announced, stands, and on a curve still being
#: drawn the early bends of the initial fall pass 0.75 (the bfs-11 run of tests/data/bfs11_run.json.gz
#: announced transitions at steps 16 and 390 besides the real one); a drop that only the offline rule
#: admits is found when the run's curve is analysed whole.
ONLINE_ABRUPT = 1.0
#: After a drop the curve is watched for ``HOLD`` times ``KAPPA`` times its width (below).
KAPPA = 1.0
#: After a drop the curve must be seen for ``HOLD`` times its width (at least ``MIN_HOLD_FRAC`` of
#: the span) without undoing half the drop. 0.15: an online report comes within about 0.06 decades of the
#: drop's end (issue 16 asks for 1.25 x the end's step, 0.097 decades) for drops up to 0.4 decades wide,
#: as the bfs-11 runs' are (0.25 let 0.4-decade drops be reported at 1.24-1.32 x their end).
HOLD = 0.15
#: A drop is at least ``Z_DROP`` standard errors of the levels before and after it.
Z_DROP = 5.0
#: A plateau holds at least this many observed points (two points are no plateau).
MIN_POINTS = 8
#: A curve of fewer points is not analysed (no transitions, no plateau).
MIN_CURVE_POINTS = 8
#: Default smallest drop: this fraction of the fitted curve's range.
REL_DROP = 0.05
#: Default shortest plateau: this fraction of the curve's span of u.
MIN_PLATEAU_FRAC = 0.03
#: The curve is seen after a drop's end for at least ``HOLD`` times this fraction of the span of u.
MIN_HOLD_FRAC = 0.01

# sqrt(E[Z^2 | |Z| below its 90th percentile]) for a standard normal Z: the trimmed RMS's scale
_TRIM90 = math.sqrt((0.9 - 2 * 1.6448536269514722 * 0.10313564037537128) / 0.9)
_MEDIAN_OF_CHI2_1 = 0.454936423119572
_LN3 = math.log(3.0)


@dataclass(frozen=True)
class Transition:
    """One plateau followed by an abrupt improvement.

    ``plateau_start``, ``onset`` and ``end`` are x values of observed points (steps or FLOPs, as
    given), the nearest to the estimates. ``level_before`` and ``level_after`` are the fitted
    levels on the plateau and after the drop, in the unit of the values. ``drop`` is the
    improvement, positive: ``level_before - level_after`` for ``direction="down"``,
    ``level_after - level_before`` for ``"up"``. ``plateau_length`` and ``width`` (onset to end)
    are in decades when ``log_x``, else in x units. ``z`` is the drop in standard errors.
    """

    plateau_start: float
    onset: float
    end: float
    level_before: float
    level_after: float
    drop: float
    plateau_length: float
    width: float
    z: float
    direction: str = "down"

    @property
    def sharpness(self) -> float:
        """Plateau length over drop width: how much quicker the drop is than the wait before it."""
        return self.plateau_length / self.width if self.width > 0 else math.inf


@dataclass(frozen=True)
class Plateau:
    """The flat stretch at the end of a curve (see :func:`current_plateau`)."""

    start: float
    end: float
    level: float
    length: float  # decades when log_x, else x units


@dataclass(frozen=True)
class Event:
    """What :class:`OnlineDetector` reports: ``kind`` is ``"plateau"`` or ``"transition"``.

    ``step`` is where it happened (the plateau's start or the transition's onset); ``reported_at``
    is the step of the update that revealed it.
    """

    kind: str
    step: float
    text: str
    reported_at: float


# ----------------------------------------------------------------------------------------------
# preparation: axis, bins, noise


def _sort_within(vals: np.ndarray, group: np.ndarray) -> np.ndarray:
    """``vals`` sorted by (group, value) for non-decreasing integer ``group`` (one float sort)."""
    lo = float(vals.min())
    span = float(vals.max()) - lo
    key = group + ((vals - lo) / (span * (1 + 1e-9)) if span > 0 else 0.0)
    return vals[np.argsort(key)]


def _fmt(x: float) -> str:
    if float(x).is_integer() and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.4g}"


def _check_options(direction, min_drop, min_plateau, max_bins) -> None:
    if direction not in ("down", "up"):
        raise ValueError(
            f"direction must be 'down' (a loss) or 'up' (an accuracy), got {direction!r}"
        )
    if min_drop is not None and not min_drop >= 0:
        raise ValueError(f"min_drop must be None or >= 0, got {min_drop}")
    if min_plateau is not None and not min_plateau >= 0:
        raise ValueError(f"min_plateau must be None or >= 0, got {min_plateau}")
    if int(max_bins) != max_bins or not 8 <= max_bins <= 2000:
        raise ValueError(f"max_bins must be an integer from 8 to 2000, got {max_bins}")


class _Curve:
    """Sorted finite points on the analysis axis, binned, with per-bin variances."""

    def __init__(self, steps, values, log_x: bool, direction: str, max_bins: int):
        x = np.asarray(steps, dtype=np.float64).ravel()
        y = np.asarray(values, dtype=np.float64).ravel()
        if x.shape != y.shape:
            raise ValueError(f"steps and values differ in length: {x.size} vs {y.size}")
        keep = np.isfinite(x) & np.isfinite(y)
        x, y = x[keep], y[keep]
        if x.size > 1 and np.any(x[1:] < x[:-1]):
            order = np.argsort(x, kind="stable")
            x, y = x[order], y[order]
        self.log_x = log_x
        self.sign = 1.0 if direction == "down" else -1.0
        self.direction = direction
        self.shift = 0.0
        if log_x and x.size and x[0] <= 0:
            distinct = np.unique(x)
            gaps = np.diff(distinct)
            gap = gaps[0] if gaps.size else 1.0
            self.shift = gap - distinct[0]
        self.x = x
        self.u = np.log10(x + self.shift) if log_x else x.copy()
        gaps = np.diff(x)
        gaps = gaps[gaps > 0]
        self.starts_at_zero = bool(x.size and (x[0] <= 0 or (gaps.size and x[0] <= gaps.min())))
        self.y = self.sign * y
        self.n = x.size
        self.ok = self.n >= MIN_CURVE_POINTS and self.u[-1] > self.u[0]
        if self.ok:
            self._bin(max_bins)
            self._noise()

    # ---- bins
    def _bin(self, max_bins: int) -> None:
        u, y, n = self.u, self.y, self.n
        if n <= max_bins:
            starts = np.arange(n)
            counts = np.ones(n, dtype=np.int64)
            self.ub, self.yb = u.copy(), y.copy()
        else:
            edges = np.linspace(u[0], u[-1], max_bins + 1)
            b = np.searchsorted(edges[1:-1], u, side="right")
            starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
            counts = np.diff(np.r_[starts, n])
            self.ub = np.add.reduceat(u, starts) / counts
            ys = _sort_within(y, b)  # y sorted inside each (contiguous) bin
            lo = starts + (counts - 1) // 2
            hi = starts + counts // 2
            self.yb = 0.5 * (ys[lo] + ys[hi])
        self.yb_raw = self.yb.copy()
        self.starts, self.counts = starts, counts

    # ---- noise
    def _noise(self) -> None:
        y = self.y
        a = np.abs(y[:-2] - 2.0 * y[1:-1] + y[2:])  # a[i] centred on point i+1
        B = self.ub.size
        span = float(np.ptp(self.yb))
        floor = max(1e-4 * span, 1e-12 * max(1.0, float(np.max(np.abs(self.yb)))))
        if a.size == 0:
            sig = np.full(B, floor)
        else:
            # per bin: the median over the bin's own points and 10 more on each side
            half = 10
            lo = np.maximum(self.starts - 1 - half, 0)
            hi = np.minimum(self.starts + self.counts - 1 + half, a.size)
            hi = np.maximum(hi, lo + 1)
            size = hi - lo
            group = np.repeat(np.arange(B), size)
            first = np.r_[0, np.cumsum(size)[:-1]]
            idx = np.arange(size.sum()) - np.repeat(first, size) + np.repeat(lo, size)
            idx = np.minimum(idx, a.size - 1)
            vals = a[idx]
            # a trimmed root mean square (the largest tenth left out): robust to a few steps and
            # outliers, and twice as efficient as a median on the short windows of sparse bins
            sv = _sort_within(vals, group)
            keep = np.maximum((0.9 * size).astype(np.int64), 1)
            cs = np.r_[0.0, np.cumsum(sv * sv)]
            ms = (cs[first + keep] - cs[first]) / keep
            sig = np.sqrt(ms / 6.0) / _TRIM90
            # a median of few values is itself noisy: pool it with the whole curve's, weighted by
            # the number of values behind each (the pool counts for 10)
            pooled = float(np.median(sig))
            sig = np.sqrt((size * sig**2 + 10 * pooled**2) / (size + 10))
            sig = np.maximum(sig, floor)
            # Noise correlated over several points hides from second differences of neighbours;
            # the scatter of points inside bins holding many of them still shows it. Where that
            # is larger (median over those bins), all point scatters are scaled up by the ratio.
            dense = self.counts >= 16
            if np.count_nonzero(dense) >= 8:
                b = np.repeat(np.arange(B), self.counts)
                dev = np.abs(self.y - self.yb_raw[b])
                sd = _sort_within(dev, b)
                st = self.starts
                mad = 0.5 * (sd[st + (self.counts - 1) // 2] + sd[st + self.counts // 2]) / 0.6745
                ratio = float(np.median(mad[dense] / sig[dense]))
                if ratio > 1.0:
                    sig = sig * ratio
        c = np.where(self.counts <= 2, 1.0, math.pi / 2.0)
        var = sig**2 * c / self.counts
        self.sigma_point = sig
        # Hampel filter on the bins: isolated outliers are replaced by the running median
        if B >= 5:
            pad = np.pad(self.yb, 2, mode="edge")
            win = np.lib.stride_tricks.sliding_window_view(pad, 5)
            med = np.median(win, axis=1)
            mad = 1.4826 * np.median(np.abs(win - med[:, None]), axis=1)
            bad = np.abs(self.yb - med) > 5.0 * np.maximum(np.sqrt(var), mad)
            if np.any(bad):
                self.yb = np.where(bad, med, self.yb)
        # Scatter of the bins beyond what their points' scatter predicts (correlated noise, which
        # the second differences of neighbouring points do not see): a local dispersion factor,
        # the running median over +-12 bins of the bins' squared standardised second differences
        # divided by its value for pure noise (the median of chi^2_1), never below 1.
        phi = np.ones(B)
        if B >= 7:
            u, yb = self.ub, self.yb
            du = u[2:] - u[:-2]
            lam = np.where(du > 0, (u[2:] - u[1:-1]) / np.where(du > 0, du, 1.0), 0.5)
            r = yb[1:-1] - (lam * yb[:-2] + (1 - lam) * yb[2:])
            base = var[1:-1] + lam**2 * var[:-2] + (1 - lam) ** 2 * var[2:]
            z2 = np.r_[np.nan, r * r / base, np.nan]
            h = 12
            padded = np.pad(z2, h, constant_values=np.nan)
            win = np.lib.stride_tricks.sliding_window_view(padded, 2 * h + 1)
            phi = np.maximum(np.nanmedian(win, axis=1) / _MEDIAN_OF_CHI2_1, 1.0)
        self.phi = phi
        self.var = var * phi

    def x_at(self, u: float) -> float:
        """The observed x nearest to position u on the analysis axis."""
        i = int(np.searchsorted(self.u, u))
        if i <= 0:
            return float(self.x[0])
        if i >= self.n:
            return float(self.x[-1])
        return float(self.x[i] if self.u[i] - u < u - self.u[i - 1] else self.x[i - 1])


# ----------------------------------------------------------------------------------------------
# segmentation and polyline


def _segment(u: np.ndarray, y: np.ndarray, var: np.ndarray, beta: float, min_len: int = 2):
    """Optimal partition of the bins into straight segments, penalty ``beta`` per segment.

    Exact dynamic programming over all cut points (O(B^2) with prefix sums); each segment is a
    weighted least-squares line. Returns the cut indices ``[0, c1, ..., B]``.
    """
    B = u.size
    uu, yy = u - u.mean(), y - y.mean()
    w = 1.0 / var

    def ps(a):
        return np.concatenate(([0.0], np.cumsum(a)))

    S0, S1, S2 = ps(w), ps(w * uu), ps(w * uu * uu)
    T1, T2, P = ps(w * yy), ps(w * yy * yy), ps(w * uu * yy)
    # matrices indexed [j, i]: row j holds every segment that ends at j, as the DP below reads them
    jj = np.arange(B + 1)[:, None]
    ii = np.arange(B + 1)[None, :]
    valid = jj - ii >= min_len

    def seg(prefix):  # [j, i]: the sum over bins i..j-1 (meaningful where valid; the rest is masked below)
        return prefix[:, None] - prefix[None, :]

    with np.errstate(divide="ignore", invalid="ignore"):
        s0, s1, s2, t1 = seg(S0), seg(S1), seg(S2), seg(T1)
        suu = s2 - s1 * s1 / s0
        suy = seg(P) - s1 * t1 / s0
        syy = seg(T2) - t1 * t1 / s0
        ok = suu > 1e-12 * np.maximum(s2, 1e-300)
        rss = syy - np.where(ok, suy * suy / np.where(ok, suu, 1.0), 0.0)
    cost = np.where(valid, np.maximum(rss, 0.0), np.inf)

    F = np.full(B + 1, np.inf)
    F[0] = -beta
    back = np.zeros(B + 1, dtype=np.int64)
    for j in range(min_len, B + 1):
        cand = F[: j - min_len + 1] + cost[j, : j - min_len + 1]
        k = int(cand.argmin())
        F[j] = cand[k] + beta
        back[j] = k
    cuts = [B]
    while cuts[-1] > 0:
        cuts.append(int(back[cuts[-1]]))
    return cuts[::-1]


def _polyline(curve: _Curve, beta: float):
    """Continuous piecewise-linear fit: vertices (U, V, var V).

    The segmentation gives the cut points; the fit is then redone as one continuous linear
    spline with a knot at both sides of every cut (the last bin of a segment and the first of the
    next), so a drop sharper than one bin is kept as a steep short piece while smooth bends do
    not turn into a saw-tooth of separately fitted lines.
    """
    u, y, var = curve.ub, curve.yb, curve.var
    B = u.size
    cuts = _segment(u, y, var, beta)
    kidx = sorted({0, B - 1, *(c - 1 for c in cuts[1:-1]), *cuts[1:-1]})
    knots = u[kidx]
    keep = np.r_[True, np.diff(knots) > 0]
    knots = knots[keep]
    K = knots.size
    if K < 2:
        return knots, np.full(K, np.median(y)), np.full(K, np.median(var) / B)
    # hat-function design: value at u is linear between the two knots around it
    j = np.clip(np.searchsorted(knots, u, side="right") - 1, 0, K - 2)
    t = (u - knots[j]) / (knots[j + 1] - knots[j])
    w = 1.0 / var
    A = np.zeros((K, K))
    rhs = np.zeros(K)
    a0, a1 = 1.0 - t, t
    np.add.at(A, (j, j), w * a0 * a0)
    np.add.at(A, (j + 1, j + 1), w * a1 * a1)
    np.add.at(A, (j, j + 1), w * a0 * a1)
    np.add.at(A, (j + 1, j), w * a0 * a1)
    np.add.at(rhs, j, w * a0 * y)
    np.add.at(rhs, j + 1, w * a1 * y)
    try:
        cov = np.linalg.inv(A)
    except np.linalg.LinAlgError:
        cov = np.linalg.pinv(A)
    V = cov @ rhs
    fit = V[j] * a0 + V[j + 1] * a1
    chi2 = float(np.sum(w * (y - fit) ** 2))
    phi = max(1.0, chi2 / max(B - K, 1))
    return knots, V, phi * np.diag(cov)


class _Analysis:
    """One pass over a curve: the polyline, its drop runs and the transitions."""

    def __init__(
        self, steps, values, *, log_x, direction, min_drop, min_plateau, initial_ramp, max_bins, abrupt=ABRUPT,
        min_points=MIN_POINTS,
    ):
        _check_options(direction, min_drop, min_plateau, max_bins)
        if isinstance(min_points, bool) or not isinstance(min_points, int) or min_points < 2:
            raise ValueError(f"min_points must be an integer of at least 2, got {min_points!r}")
        self.abrupt = float(abrupt)
        self.min_points = min_points
        self.curve = c = _Curve(steps, values, log_x, direction, int(max_bins))
        if initial_ramp is None:  # auto: does the curve start at the start of training?
            initial_ramp = c.starts_at_zero
        self.initial_ramp = bool(initial_ramp)
        self.ramp: tuple[int, int] | None = None
        self.transitions: list[Transition] = []
        self.u_last_end = -math.inf
        self.accepted: list[tuple[float, float, float]] = []  # (onset, end, plateau start) in u
        # a drop that has every mark of a transition but the hold: the curve is not yet seen long enough
        # after its end (an online detector then looks again sooner)
        self.pending = False
        if not c.ok:
            return
        beta = 3.0 * math.log(c.ub.size)
        U, V, VV = _polyline(c, beta)
        self.U, self.V, self.VV = U, V, VV
        span_u = float(c.u[-1] - c.u[0])
        self.span_u = span_u
        self.min_plateau = MIN_PLATEAU_FRAC * span_u if min_plateau is None else float(min_plateau)
        rng = float(V.max() - V.min()) if V.size else 0.0
        self.auto_min_drop = min_drop is None
        self.min_drop = REL_DROP * rng if min_drop is None else float(min_drop)
        self.flat_within = self.min_drop  # a plateau's tolerance: kept when min_drop is relaxed
        if U.size < 2:
            return
        self._runs()
        self._accept()

    def _runs(self) -> None:
        """Greedy drop runs: a steep core, then its continuation (see the module docstring)."""
        U, V, VV = self.U, self.V, self.VV
        dU = np.maximum(np.diff(U), 1e-12)
        dV = -np.diff(V)  # improvement of each piece
        se = Z_GROW * np.sqrt(VV[:-1] + VV[1:])
        lower = (dV - se) / dU  # a lower confidence bound of each piece's rate of improvement
        self.last_rate = float(lower[-1])  # lower bound of the rate of improvement at the last point
        M = dV.size
        used = np.zeros(M, dtype=bool)
        runs = []
        ub = self.curve.ub
        res = RESOLUTION * float(np.median(np.diff(ub))) if ub.size > 1 else 0.0

        def fits(k, thr):  # piece k improves at rate >= thr, within its noise
            return not used[k] and dV[k] + se[k] >= thr * dU[k]

        upper = (dV + se) / dU

        def grow(a, b, thr, tails=False):
            # tails: a drop's tails flatten away from its core; a piece clearly steeper than the tail
            # has been on its way out (the least upper bound of their rates) is another fall
            flat = math.inf
            while a - 1 >= 0 and fits(a - 1, thr) and not (tails and lower[a - 1] > flat):
                a -= 1
                flat = min(flat, upper[a])
            flat = math.inf
            while b + 1 < M and fits(b + 1, thr) and not (tails and lower[b + 1] > flat):
                b += 1
                flat = min(flat, upper[b])
            return a, b

        while True:
            cand = np.flatnonzero(~used & (lower > 0))
            if cand.size == 0:
                break
            k = int(cand[np.argmax(lower[cand])])
            ca, cb = grow(k, k, dV[k] / dU[k] / GROW)
            # the core's mean rate, over no less than the resolution of the bins
            slope = (V[ca] - V[cb + 1]) / max(U[cb + 1] - U[ca], res)
            ea, eb = grow(ca, cb, slope / EXTEND, tails=True)
            used[ea : eb + 1] = True
            runs.append((ea, eb + 1, ca, cb + 1, slope))
        self.runs = sorted(runs)

    def _plateau_back(self, u0: float, h: float, u_lb: float, level: float | None = None) -> float:
        """Start (in u) of the stretch that ends at u0 and over which the fit stays within +-h of
        ``level`` (default: the fit at u0); never before u_lb."""
        U, V = self.U, self.V
        pu = u0
        pv = float(np.interp(u0, U, V))
        ref = pv if level is None else level
        if abs(pv - ref) > h:
            return u0
        start = u0
        for k in range(int(np.searchsorted(U, u0, side="left")) - 1, -1, -1):
            if abs(V[k] - ref) > h:
                target = ref + math.copysign(h, V[k] - ref)
                t = (target - pv) / (V[k] - pv) if V[k] != pv else 0.0
                start = pu + min(max(t, 0.0), 1.0) * (U[k] - pu)
                break
            start = pu = U[k]
            pv = V[k]
            if start <= u_lb:
                break
        return max(start, u_lb)

    def _has_plateau(self, a: int, e: int, u_lb: float) -> bool:
        """Does the run a..e start after a plateau (as long as condition (c) asks, from u_lb on)?"""
        q25, q50, q75 = self._quartiles(a, e)
        onset = q50 - (q75 - q25) / _LN3
        ps = self._plateau_back(onset, BAND * (self.V[a] - self.V[e]), u_lb)
        return onset - ps >= max(self.min_plateau, self.abrupt * 2 * (q75 - q25) / _LN3)

    def _holds(self, u0: float, u1: float, ceiling: float) -> bool:
        """Is the curve observed up to u1, on at least MIN_POINTS points after u0, and does the
        fit stay below ``ceiling`` on [u0, u1]?"""
        U, V, u = self.U, self.V, self.curve.u
        if U[-1] < u1 or np.count_nonzero(u > u0) < self.min_points:
            return False
        inside = V[(U > u0) & (U < u1)]
        ends = np.interp([u0, u1], U, V)
        return bool(np.all(inside <= ceiling) and np.all(ends <= ceiling))

    def _bin_contrast(self, a0: float, a1: float, b0: float, b1: float) -> float:
        """(mean of the bins in [a0, a1] - mean of those in [b0, b1]) / its standard error."""
        c = self.curve
        out = []
        for lo, hi in ((a0, a1), (b0, b1)):
            m = (c.ub >= lo) & (c.ub <= hi)
            if not np.any(m):
                return 0.0
            w = 1.0 / c.var[m]
            out.append((float(np.sum(w * c.yb[m]) / np.sum(w)), 1.0 / float(np.sum(w))))
        (ma, va), (mb, vb) = out
        return (ma - mb) / math.sqrt(va + vb)

    def _quartiles(self, a: int, e: int) -> tuple[float, float, float]:
        """Where the run a..e first has done 25%, 50% and 75% of its drop."""
        U, V = self.U[a : e + 1], self.V[a : e + 1]
        out = []
        for q in (0.25, 0.5, 0.75):
            level = V[0] - q * (V[0] - V[-1])
            k = int(np.argmax(V <= level))  # first vertex at or below the level (k >= 1)
            dv = V[k - 1] - V[k]
            t = (V[k - 1] - level) / dv if dv > 0 else 1.0
            out.append(float(U[k - 1] + t * (U[k] - U[k - 1])))
        return out[0], out[1], out[2]

    def _refine(self, windows, before, after, mid, w, u_first, u_last):
        """Weighted least-squares fit of a logistic drop in u to the bins of a window.

        Tries each window in turn, from a few starting widths, and returns the first fit that
        agrees with the spline's picture: (level before, level after, centre, width) with a drop
        within a factor 2 of the spline's, both levels seen (3 bins beyond centre -+ 2 widths) and
        inside the data, the onset after ``u_first`` and the centre before ``u_last``. None if no
        fit does (then the spline's estimates stand).
        """
        c = self.curve
        d0 = before - after
        for lo, hi in windows:
            m = (c.ub >= lo) & (c.ub <= hi)
            if m.sum() < 8:
                continue
            u, y, sw = c.ub[m], c.yb[m], 1.0 / np.sqrt(c.var[m])
            w_min = 0.5 * float(np.median(np.diff(u)))
            w_max = hi - lo

            def model(p, u=u):
                z = (u - p[2]) / math.exp(p[3])
                np.minimum(np.maximum(z, -60.0, out=z), 60.0, out=z)  # np.clip, without its overhead
                s_ = np.exp(np.negative(z, out=z), out=z)
                s_ += 1.0
                np.reciprocal(s_, out=s_)
                return p[1] + (p[0] - p[1]) * (1.0 - s_), s_

            for w0 in (w, 0.05 * w_max, 0.15 * w_max):
                p = np.array([before, after, mid, math.log(min(max(w0, w_min), w_max))])
                p, _ = self._lm(p, u, y, sw, model, w_min, w_max)
                lb, la, cen, ww = p[0], p[1], p[2], math.exp(p[3])
                seen = BAND * (lb - la)  # both levels reached, to within the flatness of a plateau
                if not (0.5 * d0 < lb - la < 2 * d0 and y.min() <= la + seen and lb - seen <= y.max()):
                    continue
                if np.count_nonzero(u < cen - 2 * ww) < 3 or np.count_nonzero(u > cen + 2 * ww) < 3:
                    continue
                if u_first < cen - 2 * ww and cen <= u_last:
                    return float(lb), float(la), float(cen), float(ww)
        return None

    @staticmethod
    def _lm(p, u, y, sw, model, w_min, w_max):
        """Levenberg-Marquardt on (level before, level after, centre, log width). It runs thousands of
        times in a long online run, on a few hundred bins: written to keep numpy's per-call overhead low."""
        def weighted_cost(f):
            r = y - f
            r *= sw
            return float(np.dot(r, r))

        f, s_ = model(p)
        cost = weighted_cost(f)
        lam = 1e-3
        J = np.empty((u.size, 4))
        eye = np.arange(4)
        log_min, log_max = math.log(w_min), math.log(w_max)
        for _ in range(50):
            ww = math.exp(p[3])
            g = (p[0] - p[1]) * s_ * (1 - s_)
            J[:, 0] = 1 - s_
            J[:, 1] = s_
            np.divide(g, ww, out=J[:, 2])
            np.multiply(J[:, 2], u - p[2], out=J[:, 3])
            J *= sw[:, None]
            r = y - f
            r *= sw
            JtJ, Jtr = J.T @ J, J.T @ r
            damping = JtJ.diagonal() + 1e-12
            step = None
            for _ in range(20):
                A = JtJ.copy()
                A[eye, eye] += lam * damping
                try:
                    step = np.linalg.solve(A, Jtr)
                except np.linalg.LinAlgError:
                    step = None
                if step is None:
                    lam *= 10
                    continue
                q = p + step
                q[3] = min(max(q[3], log_min), log_max)
                f2, s2 = model(q)
                c2 = weighted_cost(f2)
                if c2 <= cost:
                    break
                lam *= 10
            else:
                break  # no step lowers the cost: converged
            done = cost - c2 < 1e-6 * max(cost, 1.0)
            p, f, s_, cost = q, f2, s2, c2
            lam = max(lam / 10, 1e-9)
            if done:
                break
        return p, cost

    def _accept(self) -> None:
        c, U, V, VV = self.curve, self.U, self.V, self.VV
        u_lb = U[0]
        ramp_pending = self.initial_ramp
        runs = self.runs
        if ramp_pending:
            # The initial ramp is the first run that improves by min_drop at Z_DROP standard errors.
            # Later drops are then measured against the range of the curve after it: a ramp that
            # dwarfs them must not hide them.
            def ramp_like(a, e):
                drop = V[a] - V[e]
                return drop >= self.min_drop and drop >= Z_DROP * math.sqrt(VV[a] + VV[e])

            for k, (a, e, ca, ce, slope) in enumerate(runs):
                if ramp_like(a, e):
                    # a larger fall that follows without a plateau between is more of it: what
                    # came first was its start (a knee), not the ramp
                    while k + 1 < len(runs) and ramp_like(*runs[k + 1][:2]):
                        na, ne = runs[k + 1][:2]
                        if V[a] - V[e] >= V[na] - V[ne] or self._has_plateau(na, ne, self._quartiles(a, e)[2]):
                            break
                        k += 1
                        e = ne
                    ramp_pending = False
                    self.ramp = (a, e)
                    # its 75% point, not its extrapolated end: a ramp's run can take in the slowly
                    # sloping plateau after it, and its end would then fall inside that plateau
                    u_lb = self._quartiles(a, e)[2]
                    runs = runs[k + 1 :]
                    if self.auto_min_drop:
                        self.min_drop = REL_DROP * float(np.ptp(V[e:]))
                    break
        sig = []
        for a, e, ca, ce, slope in runs:
            drop = V[a] - V[e]
            se = math.sqrt(VV[a] + VV[e])
            z = drop / se if se > 0 else math.inf
            if drop > 0 and drop >= self.min_drop and z >= Z_DROP:
                if sig and sig[-1][1] == a and sig[-1][2] < BAND * drop:
                    # the previous drop runs straight into this larger one: it is its knee
                    a = sig.pop()[0]
                    drop = V[a] - V[e]
                    z = drop / math.sqrt(VV[a] + VV[e])
                sig.append((a, e, drop, z, slope))
        for i, (a, e, drop, z, slope) in enumerate(sig):
            q25, q50, q75 = self._quartiles(a, e)
            onset, end = q50 - (q75 - q25) / _LN3, q50 + (q75 - q25) / _LN3
            # at the last point the curve still falls as fast as the drop's core: over only where a
            # fitted drop ends inside the data (below)
            still_falling = e == U.size - 1 and self.last_rate * GROW > slope
            before, after = V[a], V[e]
            ps = self._plateau_back(onset, BAND * drop, u_lb)
            if onset - ps < 0.5 * self.min_plateau:
                continue  # no plateau worth refining the estimates for
            width = end - onset
            # The fit sees two drop widths either side of the drop; if that fails (too few bins,
            # or a disagreeing fit), the whole plateau and as much again after the drop. Never
            # past the next drop.
            u_next = next((U[b] for b, f, *_ in sig[i + 1 :] if self._has_plateau(b, f, U[e])), math.inf)
            windows = [
                (max(ps, onset - 2 * width), min(max(end + 2 * width, U[e]), u_next)),
                (ps, min(max(end + max(onset - ps, 2 * width), U[e]), u_next)),
            ]
            w0 = (q75 - q25) / (2 * _LN3)
            fit = self._refine(windows, before, after, q50, w0, ps, U[e])
            if fit is None and still_falling:
                continue
            if fit is not None:
                before, after, cen, w = fit
                drop = before - after
                onset, end = cen - 2 * w, cen + 2 * w
                ps = self._plateau_back(onset, BAND * drop, u_lb, level=before)
            length = onset - ps
            width = end - onset
            need = max(self.min_plateau, self.abrupt * width)
            if length < need * (1 - 1e-9):
                continue
            if np.count_nonzero((c.u >= ps) & (c.u <= onset)) < self.min_points:
                continue
            hold = HOLD * max(KAPPA * width, MIN_HOLD_FRAC * self.span_u)
            if not self._holds(end, end + hold, after + 0.5 * drop):
                self.pending |= bool(U[-1] < end + hold or np.count_nonzero(c.u > end) < self.min_points)
                continue
            # the same drop judged directly from the bins on the plateau and after the drop,
            # free of where the segmentation chose to cut (after it: as far as HOLD times the plateau's
            # shortest length at KAPPA, where seen)
            u_after = max(min(end + HOLD * max(self.min_plateau, KAPPA * width), float(c.u[-1])), end + hold,
                          float(c.u[np.searchsorted(c.u, end) + self.min_points - 1]))
            z_bins = self._bin_contrast(ps, onset, end, u_after)
            z = min(z, z_bins)
            if z < Z_DROP:
                continue
            self.accepted.append((onset, end, ps))
            u_lb = end
            self.transitions.append(
                Transition(
                    plateau_start=c.x_at(ps),
                    onset=c.x_at(onset),
                    end=c.x_at(end),
                    level_before=float(c.sign * before),
                    level_after=float(c.sign * after),
                    drop=float(drop),
                    plateau_length=float(length),
                    width=float(width),
                    z=float(z),
                    direction=c.direction,
                )
            )
        self.u_last_end = u_lb

    def final_plateau(self) -> Plateau | None:
        """The stretch at the end of the curve that stays within the smallest counted drop."""
        c = self.curve
        if not c.ok or self.U.size < 2:
            return None
        if self.initial_ramp and self.ramp is None:
            return None  # still before (or in) the initial ramp
        last = self.U.size - 1
        u_lb = self.u_last_end
        h = self.flat_within if self.flat_within > 0 else REL_DROP * float(np.ptp(self.V))
        if h <= 0:
            return None
        ps = self._plateau_back(self.U[last], h, u_lb)
        length = self.U[last] - ps
        if length < self.min_plateau or length <= 0:
            return None
        return Plateau(
            start=c.x_at(ps),
            end=float(c.x[-1]),
            level=float(c.sign * self.V[last]),
            length=float(length),
        )


# ----------------------------------------------------------------------------------------------
# public API


def detect_transitions(
    steps,
    values,
    *,
    log_x: bool = True,
    direction: str = "down",
    min_drop: float | None = None,
    min_plateau: float | None = None,
    initial_ramp: bool | None = None,
    max_bins: int = 400,
    min_points: int = MIN_POINTS,
) -> list[Transition]:
    """Find plateaus each ended by an abrupt improvement in the curve ``values`` over ``steps``.

    ``steps`` may be steps or FLOPs (any order; non-finite points are skipped). ``log_x``
    analyses the curve on a log10 axis (step 0 allowed). ``direction`` is ``"down"`` for a loss,
    ``"up"`` for an accuracy. ``min_drop`` (in the values' unit) replaces the default smallest
    drop, 5% of the fitted curve's range (after the initial ramp); ``min_plateau`` (decades when
    ``log_x``, else x units) replaces the default shortest plateau, 3% of the curve's span. ``max_bins`` bounds the
    resolution (and the cost: the fit is O(max_bins^2), the rest O(n log n)). ``min_points`` replaces
    ``MIN_POINTS``, the fewest observed points on a plateau and after a drop: for short curves whose
    points are not noisy single readings (a sweep's frontier, ``runs.frontier``).

    Returns the transitions in order of onset; see the module docstring for the definitions.
    The initial ramp and smooth (convex in log x) decreases are not transitions.
    """
    return _Analysis(
        steps,
        values,
        log_x=log_x,
        direction=direction,
        min_drop=min_drop,
        min_plateau=min_plateau,
        initial_ramp=initial_ramp,
        max_bins=max_bins,
        min_points=min_points,
    ).transitions


def current_plateau(
    steps,
    values,
    *,
    log_x: bool = True,
    direction: str = "down",
    min_drop: float | None = None,
    min_plateau: float | None = None,
    initial_ramp: bool | None = None,
    max_bins: int = 400,
) -> Plateau | None:
    """The plateau the curve is on at its last point, or None.

    A plateau here is the final stretch, after the last transition, over which the fitted curve
    stays within ``min_drop`` (default 5% of the whole fitted range) of its last level, lasting at
    least ``min_plateau`` (default 3% of the span).
    """
    return _Analysis(
        steps,
        values,
        log_x=log_x,
        direction=direction,
        min_drop=min_drop,
        min_plateau=min_plateau,
        initial_ramp=initial_ramp,
        max_bins=max_bins,
    ).final_plateau()


class OnlineDetector:
    """Watches a curve while it is being trained and says when a plateau or a transition shows.

    ``update(step, value)`` appends a point and returns the new events. The offline analysis is
    re-run on all points so far each time their number has grown by the fraction ``every``
    (so about ``log(n)/every`` passes in all, each O(n log n) plus O(max_bins^2): a 100k-step run
    costs one to a few seconds in all), and after a quarter of that while a drop lacks only its hold
    (the curve is not yet seen long enough after its end), so that a transition is reported soon after
    it can be. ``status`` is a short string for a progress bar:
    ``"plateau since step 300"``, ``"transition at step 2900"`` (followed by ``" · plateau since
    step 4000"`` once the curve is flat again) or ``""``; ``unit`` is the word
    used for x in it ("step", "epoch", "FLOPs"...). The other options are those of
    :func:`detect_transitions`. ``finish()`` analyses whatever came since the last pass.

    Events: ``"plateau"`` once per plateau (after the start or after the last transition), as soon
    as the final stretch qualifies as a plateau (see :func:`current_plateau`); ``"transition"``
    once per transition, as soon as :func:`detect_transitions` on the points so far has found it
    in two analyses in a row, with onsets that agree to within a drop width, under the stricter
    plateau rule ``ONLINE_ABRUPT`` (an announced event stands). A transition is
    confirmed only once the drop is over (see the module docstring), so it is reported some way
    after its onset; ``Event.reported_at`` says where. ``plateau``: the :class:`Plateau` the curve
    ends on at the latest analysis (after the last transition reported), or None.
    """

    def __init__(
        self,
        *,
        log_x: bool = True,
        direction: str = "down",
        min_drop: float | None = None,
        min_plateau: float | None = None,
        initial_ramp: bool | None = None,
        every: float = 0.05,
        max_bins: int = 400,
        unit: str = "step",
    ):
        _check_options(direction, min_drop, min_plateau, max_bins)
        if not every > 0:
            raise ValueError(f"every must be a positive fraction, got {every}")
        self._kw = dict(
            log_x=log_x,
            direction=direction,
            min_drop=min_drop,
            min_plateau=min_plateau,
            initial_ramp=initial_ramp,
            max_bins=max_bins,
            abrupt=ONLINE_ABRUPT,
        )
        self.every = float(every)
        self.unit = unit
        self._x: list[float] = []
        self._y: list[float] = []
        self._next = 20  # the first analysis waits for a few points: noise needs estimating
        self._last_end = -math.inf  # x of the end of the last reported transition
        self._last_onset = -math.inf
        self._seen: list[tuple[float, float]] = []  # (onset, width) in u, previous analysis
        self._plateau_reported = False
        self.events: list[Event] = []
        self.transitions: list[Transition] = []
        self.plateau: Plateau | None = None  # the one the curve ends on at the latest analysis
        self.status = ""

    def __len__(self) -> int:
        return len(self._x)

    def update(self, step: float, value: float) -> list[Event]:
        """Add one point; returns the events this point revealed (usually none)."""
        step, value = float(step), float(value)
        if not (math.isfinite(step) and math.isfinite(value)):
            return []
        self._x.append(step)
        self._y.append(value)
        n = len(self._x)
        if n < self._next:
            return []
        self._next = n + max(1, int(n * self.every))
        return self._analyse()

    def finish(self) -> list[Event]:
        """Analyse all points now (e.g. at the end of training); returns any new events."""
        return self._analyse() if len(self._x) >= 8 else []

    def _analyse(self) -> list[Event]:
        an = _Analysis(self._x, self._y, **self._kw)
        now = self._x[-1]
        new: list[Event] = []
        self.transitions = an.transitions
        seen = self._seen
        self._seen = [(acc[0], acc[1] - acc[0]) for acc in an.accepted]
        for t, (u_on, width) in zip(an.transitions, self._seen):
            if t.onset <= self._last_end:
                self._last_end = max(self._last_end, t.end)  # the same one, seen further on
                continue
            # report a transition once two analyses in a row agree on its onset; the second comes
            # soon after the first (a quarter of the usual interval), so the report is not held back
            if not any(abs(u_on - u0) <= max(w0, width) for u0, w0 in seen):
                n = len(self._x)
                self._next = min(self._next, n + max(1, int(n * self.every / 4)))
                continue
            self._last_end = t.end
            self._last_onset = t.onset
            self._plateau_reported = False
            text = f"transition at {self.unit} {_fmt(t.onset)}"
            new.append(Event("transition", t.onset, text, now))
            self.status = text
        if an.pending:  # a drop nearly seen through: the next look comes at a quarter of the usual interval
            n = len(self._x)
            self._next = min(self._next, n + max(1, int(n * self.every / 4)))
        p = an.final_plateau()
        self.plateau = p if p is not None and p.start > self._last_onset else None
        if not self._plateau_reported and self.plateau is not None:
            text = f"plateau since {self.unit} {_fmt(p.start)}"
            new.append(Event("plateau", p.start, text, now))
            self._plateau_reported = True
            # after a transition the flat stretch may be the next plateau or the converged tail:
            # the status keeps the transition in view
            self.status = f"{self.status} · {text}" if self.status.startswith("transition") else text
        self.events.extend(new)
        return new
