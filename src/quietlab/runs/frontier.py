"""The compute frontier of a sweep: per task and budget the best run, and whether it falls in two phases.

A run's budget is its ``flops`` setting when the sweep gave budgets, else the FLOPs it trained for. For
each curve (a task at its sizes and preset, split further by any ``by`` columns) and each budget, the
frontier point is the finished run with the lowest final held-out loss (``eval_loss``); its exact match
and id come with it, and ``runs`` counts the finished runs at that budget.

Two phases: the transition detector (``monitor.transitions.detect_transitions``, its default relative
thresholds, nothing set per task) run on the frontier as the study plots it, log loss over log FLOPs. A
frontier is two-phase when it finds a transition: a flat stretch of budgets, then an abrupt drop;
``drop_start`` and ``drop_end`` are that transition's onset and end in FLOPs (the main one when there are
several: ``features.main_transition``, the largest factor), ``loss_before`` and ``loss_after`` its levels.
Two choices differ from a training curve's analysis, both for what a frontier is:

- the log of the loss, since a drop from 0.3 to 0.001 is the study's "sudden drop" on its log axes while on
  a linear axis it is a tenth of the fall onto the plateau; losses below ``LOSS_FLOOR`` count as
  ``LOSS_FLOOR`` (a model right with probability 1 - 1e-6 a token: the digits below are float32 rounding,
  and a run at 1e-10 is not ten thousand times better than one at 1e-6);
- ``FRONTIER_MIN_POINTS`` budgets on a plateau and after a drop, not a training curve's 8: each point is the
  best of several runs, not a noisy reading, and the study's own frontier has one budget a decade.
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..monitor.transitions import MIN_CURVE_POINTS

#: Losses below this (nats a token) are taken as this on the frontier's log axis.
LOSS_FLOOR = 1e-6
#: The fewest budgets on a frontier's plateau and after its drop (three: two points make a line, not a
#: flat stretch).
FRONTIER_MIN_POINTS = 3


@dataclass
class Point:
    budget: float
    eval_loss: float
    exact_match: float | None
    run_id: str
    runs: int  # finished runs at this budget
    run_dir: str | None = None


@dataclass
class Frontier:
    curve: str  # task, sizes, preset and the ``by`` settings, as a label
    task: str
    points: list[Point]
    two_phase: bool | None = False  # None: too few budgets to tell (fewer than MIN_CURVE_POINTS)
    drop_start: float | None = None
    drop_end: float | None = None
    plateau_start: float | None = None
    loss_before: float | None = None
    loss_after: float | None = None
    transitions: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def verdict(self) -> str:
        """"yes", "no", or why it cannot be told."""
        if self.two_phase is None:
            return f"too few budgets ({len(self.points)}; needs {MIN_CURVE_POINTS})"
        return "yes" if self.two_phase else "no"


def load_rows(sweep_dir) -> list[dict]:
    """The ``runs`` table of ``SWEEP/sweep.sqlite`` as dicts."""
    path = Path(sweep_dir) / "sweep.sqlite"
    if not path.is_file():
        raise FileNotFoundError(f"{sweep_dir} is not a sweep folder (no sweep.sqlite)")
    con = sqlite3.connect(path)
    try:
        cur = con.execute("SELECT * FROM runs")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        con.close()


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def _label(row: dict, by: list[str]) -> str:
    sizes = row.get("task_sizes") or "{}"
    sizes = json.loads(sizes) if isinstance(sizes, str) else sizes
    parts = [row["task"]] + [f"{k}={v}" for k, v in sorted(sizes.items())]
    if row.get("preset") not in (None, "quietlab"):
        parts.append(f"preset={row['preset']}")
    parts += [f"{k}={row.get(k)}" for k in by]
    return " ".join(parts)


def compute_frontiers(rows: list[dict], by: list[str] = ()) -> list[Frontier]:
    """One Frontier per curve, budgets ascending, each analysed for two phases."""
    from ..monitor.features import main_transition
    from ..monitor.transitions import detect_transitions

    by = list(by)
    for key in by:
        if rows and key not in rows[0]:
            raise ValueError(f"--by {key}: the sweep table has no such column")
    curves: dict[str, dict[float, list[dict]]] = {}
    tasks = {}
    for r in rows:
        budget = r.get("budget") if _finite(r.get("budget")) else r.get("train_flops")
        if r.get("status") != "done" or not _finite(budget) or not _finite(r.get("eval_loss")):
            continue
        label = _label(r, by)
        tasks[label] = r["task"]
        curves.setdefault(label, {}).setdefault(float(budget), []).append(r)
    out = []
    for label in sorted(curves):
        points = []
        for budget in sorted(curves[label]):
            runs = curves[label][budget]
            best = min(runs, key=lambda r: r["eval_loss"])
            points.append(Point(budget, float(best["eval_loss"]), best.get("exact_match"), best["run_id"], len(runs),
                                best.get("run_dir")))
        f = Frontier(label, tasks[label], points)
        if len(points) < MIN_CURVE_POINTS:
            f.two_phase = None
            out.append(f)
            continue
        log_loss = [math.log10(max(p.eval_loss, LOSS_FLOOR)) for p in points]
        found = detect_transitions([p.budget for p in points], log_loss, log_x=True, initial_ramp=False,
                                   min_points=FRONTIER_MIN_POINTS)
        f.transitions = [{"plateau_start": t.plateau_start, "onset": t.onset, "end": t.end,
                          "level_before": 10**t.level_before, "level_after": 10**t.level_after,
                          "drop": 10**t.level_before - 10**t.level_after, "z": t.z} for t in found]
        if found:
            main = main_transition(f.transitions)
            f.two_phase = True
            f.drop_start, f.drop_end, f.plateau_start = main["onset"], main["end"], main["plateau_start"]
            f.loss_before, f.loss_after = main["level_before"], main["level_after"]
        out.append(f)
    return out


def frontier_figure(f: Frontier) -> dict:
    """A log-log plotly figure of one frontier, its plateau and drop shaded."""
    from ..report.html import _phase_shapes, _title

    x = [p.budget for p in f.points]
    y = [p.eval_loss for p in f.points]
    hover = [f"run {p.run_id}<br>{p.runs} runs at this budget<br>exact match {p.exact_match}" for p in f.points]
    trace = {"type": "scatter", "mode": "lines+markers", "x": x, "y": y, "name": f.curve, "text": hover,
             "hovertemplate": "%{x:.3g} FLOPs<br>loss %{y:.4g}<br>%{text}<extra></extra>"}
    verdict = (f"two phases: drop from {f.drop_start:.3g} to {f.drop_end:.3g} FLOPs" if f.two_phase
               else "no two-phase drop found" if f.two_phase is False else f"two phases: {f.verdict}")
    return {"data": [trace],
            "layout": {"title": _title(f"{f.curve}: {verdict}"), "showlegend": False,
                       "xaxis": {"type": "log", "title": {"text": "compute budget (FLOPs)"}},
                       "yaxis": {"type": "log", "title": {"text": "best final held-out loss"}},
                       "shapes": _phase_shapes(f.transitions, [("x", "y domain")])}}


def render_frontier_report(sweep_dir, frontiers: list[Frontier]) -> str:
    from plotly.offline import get_plotlyjs

    from ..report.html import CSS, _Ids, _esc, _plot, _table
    from ..report.target import REPORT_MARKER

    ids = _Ids()
    body = [f"<h1>quietlab sweep: {_esc(Path(sweep_dir).name)}</h1>", "<h2>Compute frontier</h2>"]
    rows = [[f.curve, f.verdict, f"{f.drop_start:.3g}" if f.two_phase else "",
             f"{f.drop_end:.3g}" if f.two_phase else "", len(f.points), sum(p.runs for p in f.points)] for f in frontiers]
    body.append(_table(["curve", "two phases", "drop starts (FLOPs)", "drop ends (FLOPs)", "budgets", "runs"], rows,
                       num_cols={2, 3, 4, 5}))
    for f in frontiers:
        body.append(f"<h3>{_esc(f.curve)}</h3>")
        body.append(_plot(frontier_figure(f), ids(f"frontier-{f.curve}"), 420))
        body.append(_table(["budget (FLOPs)", "best loss", "exact match", "best run", "runs"],
                           [[f"{p.budget:.3g}", f"{p.eval_loss:.4g}", "" if p.exact_match is None else f"{p.exact_match:.1%}",
                             p.run_id, p.runs] for p in f.points], num_cols={0, 1, 2, 4}))
    if not frontiers:
        body.append('<p class="absent-note">No finished runs yet.</p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n" + REPORT_MARKER + "\n"
            f"<title>quietlab sweep {_esc(Path(sweep_dir).name)}</title>\n<style>{CSS}</style>\n"
            + (f"<script type=\"text/javascript\">{get_plotlyjs()}</script>\n" if ids.n else "")
            + "</head>\n<body>\n<main>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n")


def write_frontier_report(sweep_dir, frontiers: list[Frontier]) -> Path:
    from ..report.target import is_quietlab_report
    from .folder import write_atomic

    out = Path(sweep_dir) / "report.html"
    if out.exists() and not is_quietlab_report(out):
        raise ValueError(f"{out} exists and is not a quietlab report; move it away and run frontier again")
    write_atomic(out, render_frontier_report(sweep_dir, frontiers).encode("utf-8"))
    return out
