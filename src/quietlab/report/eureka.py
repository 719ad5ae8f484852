"""The Eureka study's HTML report: the variants compared over seeds, one self-contained file.

Sections: the per-variant table (success rate, Eureka step, steps to 95% of the softmax baseline, final
accuracy) and the per-run table; validation accuracy and decision accuracy per run against steps; the
mean normalised attention entropy and mean |grad| of Q and K (over layers and heads) per run.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from plotly.offline import get_plotlyjs

from .. import __version__
from ..runs import RunFolder, write_atomic
from .html import COLORS, CSS, _esc, _Ids, _line, _plot, _table, _title
from .summary import fmt_step
from .target import REPORT_MARKER


def _figure(summary: dict, title: str, series, y_title: str, log_y: bool = False) -> dict:
    colors = {v: COLORS[i % len(COLORS)] for i, v in enumerate(summary["variants"])}
    traces, shown = [], set()
    for run in summary["runs"]:
        with RunFolder(run["run_dir"]).store() as store:
            x, y = series(store)
        if not x:
            continue
        v = run["variant"]
        traces.append(_line(x, y, v, colors[v], legendgroup=v, showlegend=v not in shown,
                            hovertemplate=f"{v} seed {run['seed']}<br>step %{{x}}<br>%{{y:.4g}}<extra></extra>"))
        shown.add(v)
    if not traces:
        return {}
    return {"data": traces, "layout": {"title": _title(title), "xaxis": {"title": "step"},
                                       "yaxis": {"title": y_title, "type": "log" if log_y else "linear"}}}


def _fmt(x, pct=False) -> str:
    if x is None:
        return "—"
    return f"{x:.1%}" if pct else fmt_step(x)


def _three_decimals(x) -> str:
    return "—" if x is None else f"{x:.3f}"


def render_eureka_report(summary: dict) -> str:
    ids = _Ids()
    body = [f"<h1>quietlab eureka: {_esc(summary.get('scale', ''))} scale</h1>",
            f'<p class="meta">quietlab {_esc(__version__)} · written {_dt.datetime.now():%Y-%m-%d %H:%M} · data: '
            f"{_esc(summary.get('data_source', ''))} · device {_esc(summary.get('device', ''))}</p>",
            "<h2>Variants</h2>",
            f'<p class="note">Success: {_esc(summary["success_criterion"])} (decision accuracy: among validation '
            "examples whose two targets differ, answered with one of them, the fraction answered with the one the "
            "indicators select; 50% when the indicators are ignored). Eureka step: onset of the main transition "
            "(the one that lowers the loss by the largest factor) the detector finds in the validation loss of a "
            "successful run. Steps to 95%: first evaluation at 95% of "
            f"the softmax baseline's median final accuracy ({_fmt(summary.get('baseline_final_acc'), True)}).</p>"]
    rows = [[v, f"{d['successes']}/{d['seeds']}", _fmt(d["median_eureka_step"]), _fmt(d["median_first_decision_step"]),
             f"{_fmt(d['median_steps_to_95'])} ({d['reached_95']}/{d['seeds']} reach it)",
             _fmt(d["final_acc_median"], True), ", ".join(f"{a:.3f}" for a in d["final_acc"]),
             _three_decimals(d.get("plateau_qk_over_v")), _three_decimals(d.get("plateau_entropy"))]
            for v, d in summary["variants"].items()]
    body.append(_table(["variant", "success", "median Eureka step", "median first step decision ≥ 75%",
                        "median steps to 95% of baseline", "median final acc", "final acc per seed",
                        "plateau |grad| W_Q,K ÷ W_V", "plateau attention entropy"], rows, {1, 2, 3, 5, 7, 8}))
    body.append('<p class="note">Plateau: the evaluations after step 0 before a run\'s decision accuracy first reaches '
                "60% (all of them if it never does); medians over them, then over the variant's runs. The study's cause "
                "of the plateau: near-uniform attention (entropy near 1) passing W_Q and W_K small gradients. The "
                "gradients are raw: a temperature scales the logits' gradient, and AdamW's steps hardly depend on a "
                "gradient's scale.</p>")
    body.append("<h3>Runs</h3>")
    body.append(_table(["variant", "seed", "final acc", "final decision acc", "success", "Eureka step", "steps to 95%", "run"],
                       [[r["variant"], r["seed"], f"{r['final_acc']:.3f}", f"{r['final_decision_acc']:.3f}",
                         "yes" if r["success"] else "no", _fmt(r["eureka_step"]), _fmt(r["steps_to_95"]),
                         f"`{r['run_dir']}`"] for r in summary["runs"]], {1, 2, 3, 5, 6}))
    figures = [
        ("acc", _figure(summary, "validation accuracy", lambda s: s.series("eval/acc"), "accuracy")),
        ("decision", _figure(summary, "decision accuracy (50%: indicators ignored)", lambda s: s.series("eval/decision_acc"), "decision accuracy")),
        ("loss", _figure(summary, "validation loss", lambda s: s.series("eval/loss"), "cross-entropy")),
        ("entropy", _figure(summary, "attention entropy (normalised, mean over layers and heads)",
                            lambda s: s.mean_series("attn/entropy/"), "entropy")),
        ("gq", _figure(summary, "mean |grad| of W_Q (over layers and heads)", lambda s: s.mean_series("grad/q/"), "|grad|", True)),
        ("gk", _figure(summary, "mean |grad| of W_K", lambda s: s.mean_series("grad/k/"), "|grad|", True)),
        ("gv", _figure(summary, "mean |grad| of W_V", lambda s: s.mean_series("grad/v/"), "|grad|", True)),
    ]
    body.append("<h2>Curves</h2>")
    for stem, fig in figures:
        if fig:
            body.append(_plot(fig, ids(stem), 420))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n" + REPORT_MARKER
            + "\n<title>quietlab eureka</title>\n"
            f"<style>{CSS}</style>\n" + (f"<script type=\"text/javascript\">{get_plotlyjs()}</script>\n" if ids.n else "")
            + "</head>\n<body>\n<main>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n")


def write_eureka_report(summary: dict, out: Path | str) -> Path:
    out = Path(out)
    write_atomic(out, render_eureka_report(summary).encode("utf-8"))
    return out
