"""The HTML report: one self-contained file (plotly.js inlined) that opens offline.

Sections, each shown when the run holds its data and otherwise named as absent:
  summary            plain sentences (summary.summarize), per run, and a comparison across runs
  comparison         with several runs: loss, exact match and attention entropy overlaid
  loss and accuracy  train/eval loss and exact-match / token accuracy against steps, plateau and transition
                     shaded where the detector put them; per-position answer accuracy as a heat map
  features           each feature's probe score at its best layer, mean over positions (see rundata.py),
                     against steps, its random-init baseline dashed, quiet features marked
  probe heat maps    probe score by layer × position, a slider over the probed steps
  attention          normalised attention entropy and mean |grad| of Q, K, V per layer (mean over heads;
                     a button shows each head)
  ablations          accuracy drop from ablating each feature against random directions, with 95% intervals
  events, config     the detector's events and every config setting
"""

from __future__ import annotations

import datetime as _dt
import html as _html
import json
from pathlib import Path

import plotly.io as pio
from plotly.colors import qualitative
from plotly.offline import get_plotlyjs

from .. import __version__
from ..models.hooks import depth, hook_label
from ..monitor.features import main_transition
from ..runs import write_atomic
from . import rundata as D
from . import summary as S
from .target import REPORT_MARKER

COLORS = qualitative.Plotly + qualitative.D3
PLATEAU_FILL = "rgba(110,110,110,0.13)"
TRANSITION_FILL = "rgba(255,140,0,0.20)"
PLOT_CONFIG = {"displaylogo": False, "responsive": True, "scrollZoom": False}
MAX_HEATMAP_STEPS = 40
MAX_POINTS = 4000  # per curve; longer ones are thinned evenly

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0;
       color: #222; background: #fafafa; }
main { max-width: 1180px; margin: 0 auto; padding: 1.2em 1.5em 4em; }
h1 { font-size: 1.6em; margin: .3em 0 .1em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
h3 { margin-top: 1.5em; }
.meta { color: #666; font-size: .9em; }
.headline { font-size: 1.15em; font-weight: 600; background: #fff; border-left: 4px solid #d62728;
            padding: .6em .9em; margin: .8em 0; }
.summary li { margin: .25em 0; line-height: 1.4; }
.summary li.absent { color: #777; }
.absent-note { color: #777; font-style: italic; background: #f1f1f1; padding: .5em .8em; border-radius: 4px; }
.plot { background: #fff; border: 1px solid #e3e3e3; border-radius: 4px; margin: .8em 0; }
.note { color: #555; font-size: .92em; }
table { border-collapse: collapse; font-size: .9em; background: #fff; margin: .6em 0; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { background: #f0f0f0; padding: 0 .25em; border-radius: 3px; }
nav a { margin-right: 1em; }
"""


# ------------------------------------------------------------------------------------------------
# small helpers
def _esc(text) -> str:
    return _html.escape(str(text), quote=True)


def _md(text: str) -> str:
    """Escape a sentence and turn `name` into <code>name</code>."""
    parts = _esc(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _absent(text: str) -> str:
    return f'<p class="absent-note">{_md(text)}</p>'


class _Ids:
    def __init__(self):
        self.n = 0

    def __call__(self, stem: str) -> str:
        self.n += 1
        safe = "".join(c if c.isalnum() else "-" for c in stem)
        return f"ql-{safe}-{self.n}"


def _plot(fig: dict, div_id: str, height: int) -> str:
    fig.setdefault("layout", {})
    fig["layout"].setdefault("height", height)
    fig["layout"].setdefault("margin", {"l": 60, "r": 20, "t": 80, "b": 50})
    fig["layout"].setdefault("template", "plotly_white")
    fig["layout"].setdefault("hovermode", "closest")
    body = pio.to_html(
        fig, full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOT_CONFIG,
        default_height=f"{height}px", validate=True,
    )
    return f'<div class="plot">{body}</div>'


def _phase_shapes(transitions: list[dict], refs: list[tuple[str, str]]) -> list[dict]:
    """Shaded plateau (grey) and transition (orange) bands on every (xref, yref) pair; labels on the first."""
    shapes = []
    for t in transitions:
        bands = []
        if D.finite(t.get("plateau_start")) and t["plateau_start"] < t["onset"]:
            bands.append((t["plateau_start"], t["onset"], PLATEAU_FILL, "plateau"))
        end = t.get("end")
        if D.finite(end) and end > t["onset"]:
            bands.append((t["onset"], end, TRANSITION_FILL, "transition"))
        for x0, x1, fill, label in bands:
            for i, (xref, yref) in enumerate(refs):
                shape = {"type": "rect", "xref": xref, "yref": yref, "x0": x0, "x1": x1, "y0": 0, "y1": 1,
                         "fillcolor": fill, "line": {"width": 0}, "layer": "below"}
                if i == 0:
                    shape["label"] = {"text": label, "textposition": "top center", "padding": 10,
                                      "font": {"size": 11, "color": "#555"}}
                shapes.append(shape)
    return shapes


def _axis_buttons(x_axes: list[str], y_axes: list[str] | None = None, y_label: str = "loss", lift: int = 6) -> list[dict]:
    """Buttons switching the step axis (and optionally some y axes) between linear and log."""
    menus = [{
        "type": "buttons", "direction": "right", "x": 1.0, "xanchor": "right", "y": 1.0, "yanchor": "bottom",
        "pad": {"b": lift}, "showactive": True, "active": 0, "font": {"size": 11},
        "buttons": [
            {"label": "steps: linear", "method": "relayout", "args": [{f"{a}.type": "linear" for a in x_axes}]},
            {"label": "steps: log", "method": "relayout", "args": [{f"{a}.type": "log" for a in x_axes}]},
        ],
    }]
    if y_axes:
        menus.append({
            "type": "buttons", "direction": "right", "x": 0.8, "xanchor": "right", "y": 1.0, "yanchor": "bottom",
            "pad": {"b": lift}, "showactive": True, "active": 0, "font": {"size": 11},
            "buttons": [
                {"label": f"{y_label}: linear", "method": "relayout", "args": [{f"{a}.type": "linear" for a in y_axes}]},
                {"label": f"{y_label}: log", "method": "relayout", "args": [{f"{a}.type": "log" for a in y_axes}]},
            ],
        })
    return menus


def _title(text: str) -> dict:
    return {"text": text, "x": 0.01, "xanchor": "left", "y": 0.985, "yanchor": "top", "font": {"size": 16}}


def _thin(x, y, limit: int = MAX_POINTS):
    """Every k-th point of a very long curve (the last one kept), so the file stays small and quick to draw."""
    x, y = list(x), list(y)
    if len(x) <= limit:
        return x, y
    k = -(-len(x) // limit)
    idx = list(range(0, len(x), k))
    if idx[-1] != len(x) - 1:
        idx.append(len(x) - 1)
    return [x[i] for i in idx], [y[i] for i in idx]


def _line(x, y, name, color=None, **kw) -> dict:
    x, y = _thin(x, y)
    tr = {"type": "scatter", "mode": "lines", "x": x, "y": y, "name": name}
    if color:
        tr["line"] = {"color": color, **kw.pop("line", {})}
    tr.update(kw)
    return tr


def _table(header: list[str], rows: list[list], num_cols: set[int] = frozenset()) -> str:
    h = "".join(f"<th>{_esc(c)}</th>" for c in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{_esc(v)}</td>' if i in num_cols else f"<td>{_md(str(v))}</td>"
                         for i, v in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


# ------------------------------------------------------------------------------------------------
# figures for one run
def loss_figure(rd: D.RunData) -> dict | None:
    loss = [(n, rd.curve(n)) for n in ("train/loss", "eval/loss") if rd.curve(n)[0]]
    acc = [(n, rd.curve(n)) for n in ("eval/exact_match", "eval/exact_match_given_eq", "eval/token_acc")
           if rd.curve(n)[0]]
    if not loss and not acc:
        return None
    traces = []
    style = {"train/loss": ("#9ecae1", 1.2), "eval/loss": ("#1f77b4", 2.4),
             "eval/exact_match": ("#d62728", 2.4), "eval/exact_match_given_eq": ("#e377c2", 1.5),
             "eval/token_acc": ("#ff9896", 1.5)}
    two = bool(loss and acc)
    for n, (x, y) in loss:
        traces.append(_line(x, y, n, style[n][0], line={"width": style[n][1]}, xaxis="x", yaxis="y"))
    for n, (x, y) in acc:
        traces.append(_line(x, y, n, style[n][0], line={"width": style[n][1]}, xaxis="x", yaxis="y2" if two else "y"))
    _, transitions = D.main_transitions(rd)
    layout = {
        "title": _title("Loss and accuracy"),
        "xaxis": {"title": {"text": "step"}, "anchor": "y2" if two else "y"},
        "legend": {"orientation": "h", "y": -0.12},
        "shapes": _phase_shapes(transitions, [("x", "paper")]),
        "updatemenus": _axis_buttons(["xaxis"], ["yaxis"] if loss else None),
    }
    if two:
        layout["yaxis"] = {"title": {"text": "loss"}, "domain": [0.45, 1.0]}
        layout["yaxis2"] = {"title": {"text": "accuracy"}, "domain": [0.0, 0.38], "tickformat": ".0%", "range": [-0.02, 1.02]}
    else:
        layout["yaxis"] = {"title": {"text": "loss" if loss else "accuracy"}}
        if not loss:
            layout["yaxis"].update(tickformat=".0%", range=[-0.02, 1.02])
    return {"data": traces, "layout": layout}


def position_figure(rd: D.RunData) -> dict | None:
    names = [n for n in rd.series if n.startswith("eval/pos_acc/")]
    idx = sorted(int(n.rsplit("/", 1)[1]) for n in names if n.rsplit("/", 1)[1].isdigit())
    if not idx:
        return None
    steps = sorted({s for i in idx for s in rd.curve(f"eval/pos_acc/{i}")[0]})
    z = []
    for i in idx:
        d = dict(zip(*rd.curve(f"eval/pos_acc/{i}")))
        z.append([d.get(s) for s in steps])
    _, transitions = D.main_transitions(rd)
    trace = {"type": "heatmap", "x": steps, "y": [str(i) for i in idx], "z": z, "zmin": 0, "zmax": 1,
             "colorscale": "Viridis", "colorbar": {"title": {"text": "acc"}, "tickformat": ".0%"},
             "hovertemplate": "step %{x}<br>answer position %{y}: %{z:.1%}<extra></extra>"}
    shapes = [dict(s, fillcolor="rgba(0,0,0,0)", line={"width": 2, "dash": "dot", "color": "#fff"}, label={"text": ""})
              for s in _phase_shapes(transitions, [("x", "paper")])]
    return {"data": [trace], "layout": {
        "title": _title("Accuracy per answer position (eval/pos_acc/i)"),
        "xaxis": {"title": {"text": "step"}}, "yaxis": {"title": {"text": "answer position"}, "type": "category"},
        "shapes": shapes, "updatemenus": _axis_buttons(["xaxis"]),
    }}


def feature_figure(rd: D.RunData) -> tuple[dict | None, list[D.FeatureCurve]]:
    curves = [c for f in D.probe_features(rd) if (c := D.feature_curve(rd, f)) is not None and c.steps]
    if not curves:
        return None, []
    curves.sort(key=lambda c: (D.CLASS_ORDER.get(c.cls, len(D.CLASS_ORDER)), c.feature))
    traces = []
    x_lo, x_hi = min(min(c.steps) for c in curves), max(max(c.steps) for c in curves)
    for i, c in enumerate(curves):
        color = COLORS[i % len(COLORS)]
        group = f"f-{c.feature}"
        tag = f" — {c.cls}" if c.cls else ""
        what = "acc" if c.metric == "acc" else "R²"
        if c.lo is not None:
            traces.append({"type": "scatter", "mode": "lines", "x": c.steps + c.steps[::-1], "y": c.hi + c.lo[::-1],
                           "fill": "toself", "fillcolor": _rgba(color, 0.15), "line": {"width": 0}, "hoverinfo": "skip",
                           "legendgroup": group, "showlegend": False, "name": f"{c.feature} 95% CI"})
        quiet = c.cls == "quiet"
        traces.append(_line(
            c.steps, c.values, f"{c.feature} ({what}, {hook_label(c.layer)}){tag}", color,
            line={"width": 3.2 if quiet else 1.8, "dash": "solid" if c.cls != "absent" else "dot"},
            mode="lines+markers", marker={"size": 5, "symbol": "circle"}, legendgroup=group,
            hovertemplate=f"{_esc(c.feature)}<br>step %{{x}}<br>{what} %{{y:.3f}}<extra></extra>",
        ))
        if c.baseline is not None:
            traces.append(_line([x_lo, x_hi], [c.baseline, c.baseline], f"{c.feature} random init", color,
                                line={"width": 1.2, "dash": "dash"}, legendgroup=group, showlegend=False,
                                hovertemplate=f"{_esc(c.feature)} at random init: %{{y:.3f}}<extra></extra>"))
        ds = rd.feature_classes.get(c.feature, {}).get("decodable_step")
        if D.finite(ds):
            y = _value_at(c.steps, c.values, ds)
            traces.append({"type": "scatter", "mode": "markers", "x": [ds], "y": [y], "legendgroup": group,
                           "name": f"{c.feature} decodable", "showlegend": False,
                           "marker": {"symbol": "star" if quiet else "diamond", "size": 16 if quiet else 11,
                                      "color": color, "line": {"width": 1, "color": "#222"}},
                           "hovertemplate": f"{_esc(c.feature)} decodable from step %{{x}}<extra></extra>"})
    _, transitions = D.main_transitions(rd)
    all_acc = all(c.metric == "acc" for c in curves)
    layout = {
        "title": _title("Probe score per feature (best layer, mean over positions)"),
        "xaxis": {"title": {"text": "step"}},
        "yaxis": {"title": {"text": "probe accuracy" if all_acc else "probe accuracy / R²"}},
        "legend": {"orientation": "h", "y": -0.15},
        "shapes": _phase_shapes(transitions, [("x", "paper")]),
        "updatemenus": _axis_buttons(["xaxis"]),
    }
    if all_acc:
        layout["yaxis"].update(tickformat=".0%")
    return {"data": traces, "layout": layout}, curves


def _value_at(steps, values, x):
    best = min(range(len(steps)), key=lambda i: abs(steps[i] - x))
    return values[best]


def _rgba(color: str, alpha: float) -> str:
    c = color.lstrip("#")
    if len(c) == 6:
        r, g, b = (int(c[i:i + 2], 16) for i in (0, 2, 4))
        return f"rgba({r},{g},{b},{alpha})"
    return color


def heatmap_figure(rd: D.RunData, feature: str) -> dict | None:
    metric = D.probe_metric(rd, feature)
    if metric is None:
        return None
    grid = D.probe_grid(rd, feature, metric)
    steps = sorted(grid)
    if not steps:
        return None
    if len(steps) > MAX_HEATMAP_STEPS:  # evenly spaced, first and last kept
        n = MAX_HEATMAP_STEPS
        steps = sorted({steps[round(i * (len(steps) - 1) / (n - 1))] for i in range(n)})
    layers = sorted({l for s in steps for l in grid[s]}, key=depth)
    positions = sorted({p for s in steps for l in grid[s] for p in grid[s][l]})
    _, transitions = D.main_transitions(rd)
    # open on the last probed step before the drop (what the model knows while the loss is flat), else the last
    active = len(steps) - 1
    if transitions:
        before = [i for i, s in enumerate(steps) if s <= main_transition(transitions)["onset"]]
        if before:
            active = before[-1]
    what = "accuracy" if metric == "acc" else "R²"
    zmin, zmax = (0.0, 1.0)
    if metric == "acc":  # start the scale at chance-ish level seen in the data, so structure shows
        lo = min((v for s in steps for l in grid[s].values() for v in l.values()), default=0.0)
        zmin = max(0.0, min(0.5, lo))
    traces = []
    for i, s in enumerate(steps):
        z = [[grid[s].get(l, {}).get(p) for p in positions] for l in layers]
        traces.append({
            "type": "heatmap", "x": [str(p) for p in positions], "y": [hook_label(l) for l in layers], "z": z,
            "zmin": zmin, "zmax": zmax, "colorscale": "Viridis", "visible": i == active, "name": f"step {s}",
            "colorbar": {"title": {"text": what}}, "xgap": 1, "ygap": 1,
            "hovertemplate": f"step {s}<br>%{{y}}, position %{{x}}<br>{what} %{{z:.3f}}<extra></extra>",
        })

    def title(s):
        tag = " (random init)" if s == 0 else ""
        return f"<b>{_esc(feature)}</b>: probe {what} by layer × position — step {s:,}{tag}"

    slider_steps = [{"label": f"{s:,}", "method": "update",
                     "args": [{"visible": [j == i for j in range(len(steps))]}, {"title.text": title(s)}]}
                    for i, s in enumerate(steps)]
    return {"data": traces, "layout": {
        "title": _title(title(steps[active])),
        "xaxis": {"title": {"text": "position"}, "type": "category"},
        "yaxis": {"title": {"text": "layer"}, "type": "category"},
        "sliders": [{"active": active, "steps": slider_steps, "currentvalue": {"prefix": "step "}, "pad": {"t": 50}}],
        "margin": {"l": 80, "r": 20, "t": 60, "b": 40},
    }}


ATTN_PANELS = (("attn/entropy", "attention entropy (normalised)", False),
               ("grad/q", "mean |grad| of Q", True), ("grad/k", "mean |grad| of K", True),
               ("grad/v", "mean |grad| of V", True))


def attention_figure(rd: D.RunData) -> dict | None:
    hm = D.head_metrics(rd)
    panels = [p for p in ATTN_PANELS if p[0] in hm]
    if not panels:
        return None
    n = len(panels)
    cols = 2 if n > 1 else 1
    rows = (n + cols - 1) // cols
    traces, layout, refs = [], {}, []
    mean_vis, head_vis = [], []
    gap_x, gap_y = 0.08, 0.14
    for k, (family, title, logy) in enumerate(panels):
        r, c = divmod(k, cols)
        ax = "" if k == 0 else str(k + 1)
        x0 = c * (1 + gap_x) / cols
        x1 = x0 + (1 - gap_x * (cols - 1)) / cols
        y1 = 1 - r * (1 + gap_y) / rows
        y0 = y1 - (1 - gap_y * (rows - 1)) / rows
        layout[f"xaxis{ax}"] = {"domain": [x0, min(1.0, x1)], "anchor": f"y{ax}", "title": {"text": "step"}}
        layout[f"yaxis{ax}"] = {"domain": [max(0.0, y0), y1], "anchor": f"x{ax}", "type": "log" if logy else "linear",
                                   **({"dtick": 1, "exponentformat": "power"} if logy else {})}
        refs.append((f"x{ax}", f"y{ax} domain"))
        layout.setdefault("annotations", []).append({
            "text": f"<b>{title}</b>", "xref": f"x{ax} domain", "yref": f"y{ax} domain", "x": 0.5, "y": 1.0,
            "xanchor": "center", "yanchor": "bottom", "showarrow": False, "font": {"size": 13}})
        for layer in sorted(hm[family]):
            heads = hm[family][layer]
            color = COLORS[layer % len(COLORS)]
            x, y = D.mean_over(rd, heads.values())
            traces.append(_line(x, y, f"block {layer}", color, line={"width": 2.2}, xaxis=f"x{ax}", yaxis=f"y{ax}",
                                legendgroup=f"L{layer}", showlegend=k == 0,
                                hovertemplate=f"block {layer} (mean over heads)<br>step %{{x}}: %{{y:.3g}}<extra></extra>"))
            mean_vis.append(True)
            head_vis.append(False)
            for h, name in sorted(heads.items(), key=lambda kv: -1 if kv[0] is None else kv[0]):
                if h is None:
                    continue
                hx, hy = rd.curve(name)
                dash = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")[h % 6]
                traces.append(_line(hx, hy, f"block {layer} head {h}", color, line={"width": 1.2, "dash": dash},
                                    xaxis=f"x{ax}", yaxis=f"y{ax}", legendgroup=f"L{layer}H{h}", showlegend=k == 0,
                                    visible=False,
                                    hovertemplate=f"block {layer} head {h}<br>step %{{x}}: %{{y:.3g}}<extra></extra>"))
                mean_vis.append(False)
                head_vis.append(True)
    _, transitions = D.main_transitions(rd)
    x_axes = [f"xaxis{'' if k == 0 else k + 1}" for k in range(n)]
    menus = _axis_buttons(x_axes, lift=30)
    if any(head_vis):
        menus.append({
            "type": "buttons", "direction": "right", "x": 0.8, "xanchor": "right", "y": 1.0, "yanchor": "bottom",
            "pad": {"b": 30}, "showactive": True, "active": 0, "font": {"size": 11},
            "buttons": [{"label": "mean over heads", "method": "restyle", "args": [{"visible": mean_vis}]},
                        {"label": "each head", "method": "restyle", "args": [{"visible": head_vis}]}],
        })
    layout.update({
        "title": _title("Attention over training (per block)"),
        "legend": {"orientation": "v", "x": 1.01, "y": 1},
        "shapes": _phase_shapes(transitions, refs),
        "updatemenus": menus,
        "margin": {"l": 60, "r": 20, "t": 100, "b": 50},
    })
    return {"data": traces, "layout": layout}


def ablation_figure(rd: D.RunData) -> dict | None:
    items = D.ordered_ablations(rd)
    if not items:
        return None
    labels = [f"{a.get('feature', '?')} / {a.get('method', '?')}" + (f" ({hook_label(a['layer'])})" if a.get("layer") is not None else "")
              for a in items]

    def bars(key, ci_key, acc_key, name, color):
        y = [a.get(key) if D.finite(a.get(key)) else None for a in items]
        plus, minus = [], []
        for a, v in zip(items, y):
            ci = a.get(ci_key)
            ok = v is not None and isinstance(ci, (list, tuple)) and len(ci) == 2 and all(D.finite(c) for c in ci)
            plus.append(max(0.0, ci[1] - v) if ok else 0.0)
            minus.append(max(0.0, v - ci[0]) if ok else 0.0)
        text = [f"accuracy {S.fmt_pct(a.get('baseline_acc'))} → {S.fmt_pct(a.get(acc_key))}" for a in items]
        return {"type": "bar", "x": labels, "y": y, "name": name, "marker": {"color": color},
                "error_y": {"type": "data", "array": plus, "arrayminus": minus, "visible": True, "thickness": 1.5},
                "customdata": text, "hovertemplate": "%{x}<br>drop %{y:.1f}%<br>%{customdata}<extra>" + name + "</extra>"}

    traces = [bars("drop_pct", "drop_ci", "ablated_acc", "feature direction", "#d62728")]
    if any(D.finite(a.get("control_drop_pct")) for a in items):
        traces.append(bars("control_drop_pct", "control_drop_ci", "control_acc", "random directions (control)", "#7f7f7f"))
    return {"data": traces, "layout": {
        "title": _title("Exact-match accuracy drop when ablating (95% intervals)"),
        "barmode": "group", "yaxis": {"title": {"text": "accuracy drop (%)"}, "ticksuffix": "%"},
        "legend": {"orientation": "h", "y": -0.2},
    }}


# ------------------------------------------------------------------------------------------------
# figures across runs
def _run_colors(rds):
    return {rd.path: COLORS[i % len(COLORS)] for i, rd in enumerate(rds)}


def comparison_figures(rds: list[D.RunData]) -> list[tuple[str, dict]]:
    colors = _run_colors(rds)
    out = []
    loss_traces, shapes = [], []
    for rd in rds:
        name = D.loss_curve_name(rd)
        if name:
            x, y = rd.curve(name)
            loss_traces.append(_line(x, y, f"{rd.label} · {name}", colors[rd.path], line={"width": 2.2}))
        _, ts = D.main_transitions(rd)
        for t in ts[:1]:
            shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": t["onset"], "x1": t["onset"], "y0": 0, "y1": 1,
                           "line": {"color": colors[rd.path], "dash": "dot", "width": 1.5}})
    if loss_traces:
        out.append(("loss", {"data": loss_traces, "layout": {
            "title": _title("Loss, runs overlaid (dotted: where each run's drop begins)"),
            "xaxis": {"title": {"text": "step"}}, "yaxis": {"title": {"text": "loss"}},
            "legend": {"orientation": "h", "y": -0.15}, "shapes": shapes,
            "updatemenus": _axis_buttons(["xaxis"], ["yaxis"])}}))
    em = [_line(*rd.curve("eval/exact_match"), rd.label, colors[rd.path], line={"width": 2.2})
          for rd in rds if rd.curve("eval/exact_match")[0]]
    if em:
        out.append(("exact match", {"data": em, "layout": {
            "title": _title("Exact-match accuracy, runs overlaid"),
            "xaxis": {"title": {"text": "step"}}, "yaxis": {"title": {"text": "exact match"}, "tickformat": ".0%", "range": [-0.02, 1.02]},
            "legend": {"orientation": "h", "y": -0.15}, "shapes": shapes, "updatemenus": _axis_buttons(["xaxis"])}}))
    ent = []
    for rd in rds:
        fam = D.head_metrics(rd).get("attn/entropy")
        if fam:
            x, y = D.mean_over(rd, [n for heads in fam.values() for n in heads.values()])
            ent.append(_line(x, y, rd.label, colors[rd.path], line={"width": 2.2}))
    if ent:
        out.append(("attention entropy", {"data": ent, "layout": {
            "title": _title("Attention entropy (mean over layers and heads), runs overlaid"),
            "xaxis": {"title": {"text": "step"}}, "yaxis": {"title": {"text": "normalised entropy"}},
            "legend": {"orientation": "h", "y": -0.15}, "shapes": shapes, "updatemenus": _axis_buttons(["xaxis"])}}))
    return out


# ------------------------------------------------------------------------------------------------
# sections
def _summary_html(rd: D.RunData, sentences: list[str], head: str | None) -> str:
    absent = set(S.absent_parts(rd))
    items = "".join(f'<li class="absent">{_md(s)}</li>' if s in absent else f"<li>{_md(s)}</li>" for s in sentences)
    lead = f'<p class="headline">{_md(head)}</p>' if head else ""
    return f'{lead}<ul class="summary">{items}</ul>'


def _flatten(d, prefix=""):
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            yield from _flatten(v, key + ".")
        else:
            yield key, v if isinstance(v, (str, int, float, bool)) or v is None else json.dumps(v)


def run_sections(rd: D.RunData, ids: _Ids, heading_prefix: str = "") -> str:
    parts = []
    hp = heading_prefix

    parts.append(f"<h2>{hp}Loss and accuracy</h2>")
    fig = loss_figure(rd)
    if fig:
        parts.append(_plot(fig, ids("loss"), 560))
        curve, ts = D.main_transitions(rd)
        if curve:
            parts.append(f'<p class="note">Shaded: the plateau (grey) and transition (orange) the detector found in '
                         f'<code>{_esc(curve)}</code>.</p>')
        else:
            parts.append('<p class="note">No shading: transition detection has not run on this run.</p>')
        pos = position_figure(rd)
        if pos:
            parts.append(_plot(pos, ids("pos"), 360))
    else:
        parts.append(_absent("No loss or accuracy was logged for this run."))

    parts.append(f"<h2>{hp}Features: what the probes read</h2>")
    fig, curves = feature_figure(rd)
    if fig:
        fit = {"online": "the monitor's probes, fitted while the model trained",
               "checkpoint": "probes re-fitted on the saved checkpoints by <code>quietlab probe</code>"}
        parts.append('<p class="note">Each line: a linear probe on the residual stream at the feature\'s best layer '
                     '(<code>hook_embed</code>: the embeddings; <code>blocks.{l}.hook_resid_post</code>: the output of '
                     f'block l), averaged over the positions where the feature is defined. Shown: '
                     f'{fit.get(rd.probe_fit, rd.probe_fit)}. Dashed: the same probe on the randomly initialised model (step 0). '
                     'Thick lines and ★: quiet features, decodable before the loss drops.</p>')
        parts.append(_plot(fig, ids("features"), 520))
        rows = []
        paper = rd.feature_classes_paper
        for c in curves:
            fc = rd.feature_classes.get(c.feature, {})
            row = [c.feature, fc.get("class", "—"), c.layer, c.metric,
                   S.fmt_step(fc.get("decodable_step")) if D.finite(fc.get("decodable_step")) else "—",
                   S.fmt_score(c.baseline, c.metric) if c.baseline is not None else "—",
                   S.fmt_score(fc.get("acc_before_transition"), c.metric) if D.finite(fc.get("acc_before_transition")) else "—",
                   S.fmt_score(c.values[-1], c.metric)]
            if paper:
                pc = paper.get(c.feature, {})
                row += [pc.get("class", "—"), S.fmt_num(pc.get("loss_before_transition")), S.fmt_num(pc.get("loss_final")),
                        S.fmt_num(pc.get("baseline_loss"))]
            rows.append(row)
        header = ["feature", "class", "best layer", "metric", "decodable from step", "random init",
                  "before transition", "last probe"]
        if paper:
            header += ["paper: class", "paper: log-loss before transition", "at the end", "random model"]
            parts.append('<p class="note">The paper\'s metric (this run was probed with its protocol): at each position '
                         'the test log-loss (MSE for scalars) of the layer with the lowest probe-train loss, geometric mean '
                         'over positions, against the same probes on a separately initialised random model.</p>')
        parts.append(_table(header, rows, num_cols={2, 4, 5, 6, 7, 9, 10, 11}))
        parts.append(f"<h3>{hp}Probe score by layer and position</h3>")
        parts.append('<p class="note">Move the slider to see the probes at each probed step; it opens on the last step '
                     'before the drop. Empty cells: the feature is not defined there.</p>')
        for c in curves:
            hf = heatmap_figure(rd, c.feature)
            if hf:
                n_layers = len(hf["data"][0]["y"])
                parts.append(_plot(hf, ids(f"heat-{c.feature}"), max(320, 150 + 34 * n_layers)))
    else:
        parts.append(_absent("No probes were recorded for this run, so there is nothing to show about features "
                             "(run `quietlab probe RUN`, or train with the monitor on)."))

    parts.append(f"<h2>{hp}Ablations: do the features matter?</h2>")
    fig = ablation_figure(rd)
    if fig:
        parts.append('<p class="note">Each feature\'s probe direction is removed from the residual stream at its best '
                     'layer; the control removes random directions at the same places, scaled to move the activations '
                     'as far (the same mean ‖Δx‖ at each position, shown beside each); under the paper\'s protocol '
                     '(a run of the paper preset) the step is x − Σ_v (ŵ_v·x + b̂_v) ŵ_v with unit probe rows and the '
                     'controls are unit Gaussian directions keeping the probe\'s bias, not scaled. Whiskers: 95% '
                     'intervals.</p>')
        parts.append(_plot(fig, ids("ablation"), 420))
        rows = []
        for a in D.ordered_ablations(rd):
            rows.append([a.get("feature", "?"), a.get("method", "?"), a.get("layer", "—"), a.get("n_examples", "—"),
                         S.fmt_pct(a.get("baseline_acc")), S.fmt_pct(a.get("ablated_acc")),
                         S.fmt_points(a.get("drop_pct")), S.fmt_ci(a.get("drop_ci")) or "—",
                         S.fmt_num(a.get("edit_size")) if D.finite(a.get("edit_size")) else "—",
                         S.fmt_pct(a.get("control_acc")), S.fmt_points(a.get("control_drop_pct")),
                         S.fmt_ci(a.get("control_drop_ci")) or "—",
                         S.fmt_num(a.get("control_edit_size")) if D.finite(a.get("control_edit_size")) else "—",
                         a.get("n_controls", "—"),
                         S.fmt_num(a.get("baseline_loss")), S.fmt_num(a.get("ablated_loss")), S.fmt_num(a.get("control_loss"))])
        parts.append(_table(["feature", "method", "layer", "examples", "accuracy", "ablated", "drop", "interval",
                             "mean ‖Δx‖", "control", "control drop", "interval", "control ‖Δx‖", "controls", "loss",
                             "ablated loss", "control loss"],
                            rows, num_cols={3, 4, 5, 6, 8, 9, 10, 12, 13, 14, 15, 16}))
    else:
        parts.append(_absent("No ablations were run on this run (run `quietlab ablate RUN`)."))

    parts.append(f"<h2>{hp}Attention</h2>")
    fig = attention_figure(rd)
    if fig:
        parts.append('<p class="note">Normalised attention entropy (1 = uniform attention) and the mean absolute gradient '
                     'of the query, key and value weights, per layer averaged over heads; "each head" shows the heads. '
                     'Near-uniform attention starves Q and K of gradient (Hoffmann et al.).</p>')
        rows = 2 if sum(1 for k in fig["layout"] if k.startswith("xaxis")) > 2 else 1
        parts.append(_plot(fig, ids("attention"), 330 * rows + 120))
    else:
        parts.append(_absent("No attention statistics (attention entropy, Q/K/V gradient norms) were logged for this run."))

    parts.append(f"<h2>{hp}Events</h2>")
    curve, ts = D.main_transitions(rd)
    if rd.transitions:
        rows = []
        for name, lst in sorted(rd.transitions.items()):
            for t in lst:
                if isinstance(t, dict):
                    rows.append([name, S.fmt_step(t.get("plateau_start")), S.fmt_step(t.get("onset")), S.fmt_step(t.get("end")),
                                 S.fmt_num(t.get("level_before")), S.fmt_num(t.get("level_after"))])
        if rows:
            parts.append(_table(["curve", "plateau from", "drop onset", "drop end", "level before", "level after"], rows,
                                num_cols={1, 2, 3, 4, 5}))
        else:
            parts.append(_absent("The detector ran and found no transition."))
    else:
        parts.append(_absent("Transition detection has not run on this run."))
    if rd.events:
        parts.append(_table(["step", "kind", "event"],
                            [[S.fmt_step(e.get("step")), e.get("kind", ""), e.get("text", "")] for e in rd.events], num_cols={0}))

    parts.append(f"<h2>{hp}Configuration</h2>")
    if rd.config:
        parts.append(_table(["setting", "value"], [[k, v] for k, v in _flatten(rd.config)]))
    else:
        parts.append(_absent("This run folder has no config.json."))
    others = sorted(n for n in rd.series if not (n.startswith(("eval/", "attn/", "grad/")) or n in ("train/loss",)))
    if others:
        parts.append(f'<p class="note">Other metrics recorded: {", ".join(f"<code>{_esc(n)}</code>" for n in others)}.</p>')
    return "\n".join(parts)


def render_report(run_dirs) -> str:
    """The report's HTML text for one or several runs."""
    rds = [D.load_run(p) for p in run_dirs]
    if not rds:
        raise ValueError("give at least one run folder")
    names = [rd.name for rd in rds]
    for rd in rds:  # same folder name twice (runs/a/x, runs/b/x): name them by parent too
        if names.count(rd.name) > 1:
            rd.name = f"{rd.path.resolve().parent.name}/{rd.name}"
    ids = _Ids()
    multi = len(rds) > 1
    body = []
    title = "quietlab report: " + ", ".join(rd.name for rd in rds)
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    body.append(f"<h1>{_esc(title)}</h1>")
    body.append(f'<p class="meta">quietlab {_esc(__version__)} · written {stamp} · '
                + " · ".join(f"<code>{_esc(rd.path)}</code>" for rd in rds) + "</p>")
    if multi:
        body.append("<nav>" + "".join(f'<a href="#run-{i}">{_esc(rd.label)}</a>' for i, rd in enumerate(rds)) + "</nav>")
    body.append("<h2>Summary</h2>")
    if multi:
        cmp = S.compare(rds)
        if cmp:
            body.append('<ul class="summary">' + "".join(f"<li>{_md(s)}</li>" for s in cmp) + "</ul>")
        for rd in rds:
            body.append(f"<h3>{_esc(rd.label)}</h3>")
            body.append(_summary_html(rd, S.summarize(rd), S.headline(rd)))
        body.append("<h2>Runs compared</h2>")
        figs = comparison_figures(rds)
        for stem, fig in figs:
            body.append(_plot(fig, ids(f"cmp-{stem}"), 460))
        if not figs:
            body.append(_absent("None of these runs logged a loss, an accuracy or attention entropy to compare."))
        for i, rd in enumerate(rds):
            body.append(f'<h2 id="run-{i}" style="border:0;margin-top:3em;font-size:1.7em">Run {_esc(rd.label)}</h2>')
            body.append(run_sections(rd, ids, heading_prefix=f"{_esc(rd.name)}: "))
    else:
        rd = rds[0]
        body.append(_summary_html(rd, S.summarize(rd), S.headline(rd)))
        body.append(run_sections(rd, ids))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n" + REPORT_MARKER + "\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_esc(title)}</title>\n<style>{CSS}</style>\n"
        # plotly.js inlined (no CDN), only when there is something to plot
        + (f"<script type=\"text/javascript\">{get_plotlyjs()}</script>\n" if ids.n else "")
        + "</head>\n<body>\n<main>\n"
        + "\n".join(body)
        + "\n</main>\n</body>\n</html>\n"
    )


def write_report(run_dirs, out: Path | str) -> Path:
    """Write one self-contained HTML report for ``run_dirs`` (one or several run folders) to ``out``, atomically.

    ``out`` may be an existing directory, then the file is ``out/report.html``. Returns the path written.
    Raises ValueError when a path is not a run folder."""
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    out = Path(out)
    if out.is_dir():
        out = out / "report.html"
    text = render_report(list(run_dirs))
    try:
        write_atomic(out, text.encode("utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot write the report to {out}: {exc.strerror or exc}") from None
    return out
