"""What a run's store says, in plain sentences, and the aggregates the report plots.

Everything here reads a run folder (config.json, metrics.sqlite) and computes; no number is written in.
``summarize(run)`` gives the sentences the HTML report puts at its top and ``quietlab demo`` prints in the
terminal; ``headline(run)`` one sentence with the main finding; ``compare(runs)`` sentences across runs.

Probe aggregate used throughout (curves and sentences): a feature's probe score at a step is the mean,
over the positions where the feature is defined (those with a probe row), of the probe at its *best
layer*: the layer the feature classification chose (``feature_class.best_layer``), else the layer with
the highest mean score at the last probed step. The score is accuracy ("acc") for classification
features and R² ("r2") for scalar ones. Its random-init baseline is the same aggregate at step 0.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..monitor.features import LOSS_CURVES
from ..runs import RunStore

_HEAD_METRIC = re.compile(r"^(attn/entropy|grad/q|grad/k|grad/v)/L(\d+)(?:/H(\d+))?$")
#: the order features are listed in, by class
CLASS_ORDER = {"quiet": 0, "loud": 1, "unresolved": 2, "absent": 3}


# ------------------------------------------------------------------------------------------------
# loading
@dataclass
class RunData:
    """Everything the report needs from one run folder, read once."""

    path: Path
    name: str
    config: dict
    series: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    probes: list[tuple] = field(default_factory=list)  # (step, feature, layer, position, metric, value)
    transitions: dict[str, list[dict]] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    feature_classes: dict[str, dict] = field(default_factory=dict)
    ablations: dict[str, dict] = field(default_factory=dict)
    has_store: bool = False

    def curve(self, name: str) -> tuple[list[int], list[float]]:
        """(steps, values) of a metric with missing values dropped; empty lists if never logged."""
        steps, values = self.series.get(name, ([], []))
        pairs = [(s, v) for s, v in zip(steps, values) if _finite(v)]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    @property
    def variant(self) -> str | None:
        return attention_variant(self.config)

    @property
    def label(self) -> str:
        v = self.variant
        return f"{self.name} ({v})" if v and v not in self.name else self.name


def load_run(run: Path | str | RunData) -> RunData:
    """Read a run folder. Raises ValueError saying what is wrong when ``run`` is not one."""
    if isinstance(run, RunData):
        return run
    path = Path(run)
    if not path.is_dir():
        raise ValueError(f"{path} is not a run folder (no such directory)")
    config_path, db_path = path / "config.json", path / "metrics.sqlite"
    if not config_path.exists() and not db_path.exists():
        raise ValueError(f"{path} is not a run folder (no config.json or metrics.sqlite in it)")
    config: dict = {}
    if config_path.exists():
        try:
            config = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{config_path} is not readable JSON: {exc}") from None
        if not isinstance(config, dict):
            raise ValueError(f"{config_path} should hold a JSON object, found {type(config).__name__}")
    rd = RunData(path=path, name=path.resolve().name, config=config)
    if db_path.exists():
        rd.has_store = True
        with RunStore(db_path, readonly=True) as store:
            rd.series = {n: store.series(n) for n in store.metric_names()}
            rd.probes = [tuple(r) for r in store.probes()]
            rd.transitions = {k: [v] if isinstance(v, dict) else list(v) if isinstance(v, list) else []
                              for k, v in store.results("transition").items()}
            rd.events = sorted(
                (e for e in store.results("event").values() if isinstance(e, dict)),
                key=lambda e: (_num(e.get("step"), math.inf), str(e.get("kind"))),
            )
            rd.feature_classes = {k: v for k, v in store.results("feature_class").items() if isinstance(v, dict)}
            rd.ablations = {k: v for k, v in store.results("ablation").items() if isinstance(v, dict)}
    return rd


# ------------------------------------------------------------------------------------------------
# config
def attention_variant(config: dict) -> str | None:
    """The attention variant named in the config (``model.attention`` and similar keys), if any."""
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    for where in (model, config):
        for key in ("attention", "attention_variant", "attn", "attn_variant", "softmax", "variant"):
            v = where.get(key)
            if isinstance(v, str) and v:
                return v
            if isinstance(v, dict):
                name = v.get("name") or v.get("kind") or v.get("variant") or v.get("type")
                if isinstance(name, str) and name:
                    return name
    return None


def task_name(config: dict) -> str | None:
    task = config.get("task")
    if isinstance(task, dict):
        task = task.get("name")
    return task if isinstance(task, str) and task else None


def task_sizes(config: dict) -> dict:
    sizes = config.get("sizes")
    if not isinstance(sizes, dict) and isinstance(config.get("task"), dict):
        sizes = config["task"].get("sizes") or {k: v for k, v in config["task"].items() if k != "name"}
    return sizes if isinstance(sizes, dict) else {}


def _scalars(d: dict, limit: int = 8) -> str:
    items = [(k, v) for k, v in d.items() if isinstance(v, (int, float, str, bool)) and v is not None]
    text = ", ".join(f"{k}={v}" for k, v in items[:limit])
    return text + (", …" if len(items) > limit else "")


# ------------------------------------------------------------------------------------------------
# formatting
def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _num(v, default=None):
    return v if _finite(v) else default


def fmt_step(s) -> str:
    return f"{int(round(s)):,}" if _finite(s) else "?"


def fmt_pct(x) -> str:
    """An accuracy given as a fraction (0.99), written as a percentage ("99%")."""
    if not _finite(x):
        return "?"
    v = 100.0 * x
    if v == 0 or v == 100 or (abs(v) >= 10 and not 99 < v < 100):
        return f"{v:.0f}%"
    return f"{v:.1f}%"


def fmt_points(v) -> str:
    """A number already in percent (a drop of 87.9), written "88%"."""
    if not _finite(v):
        return "?"
    return f"{v:.0f}%" if abs(v) >= 10 or v == 0 else f"{v:.1f}%"


def fmt_num(v) -> str:
    if not _finite(v):
        return "?"
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.2e}"
    return f"{v:.3g}"


def fmt_score(v, metric: str) -> str:
    return fmt_pct(v) if metric.startswith("acc") else (f"R² {v:.2f}" if _finite(v) else "?")


def fmt_big(v) -> str:
    if not _finite(v):
        return "?"
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.0f}"


# ------------------------------------------------------------------------------------------------
# aggregates shared with the HTML report
def main_transitions(rd: RunData) -> tuple[str | None, list[dict]]:
    """(curve, transitions sorted by onset) from the detector: the first curve of LOSS_CURVES (then any
    other) in which it found a transition, else the first it looked at."""
    looked = [n for n in dict.fromkeys((*LOSS_CURVES, *sorted(rd.transitions))) if n in rd.transitions]
    found = {n: sorted((t for t in rd.transitions[n] if isinstance(t, dict) and _finite(t.get("onset"))),
                       key=lambda t: t["onset"]) for n in looked}
    for name in looked:
        if found[name]:
            return name, found[name]
    return (looked[0], []) if looked else (None, [])


def loss_curve_name(rd: RunData) -> str | None:
    for name in LOSS_CURVES:
        if rd.curve(name)[0]:
            return name
    return None


def probe_features(rd: RunData) -> list[str]:
    return sorted({r[1] for r in rd.probes})


def probe_metric(rd: RunData, feature: str) -> str | None:
    metrics = {r[4] for r in rd.probes if r[1] == feature}
    for m in ("acc", "r2"):
        if m in metrics:
            return m
    return None


def probe_grid(rd: RunData, feature: str, metric: str) -> dict[int, dict[int, dict[int, float]]]:
    """{step: {layer: {position: value}}} for one feature and metric."""
    grid: dict = defaultdict(lambda: defaultdict(dict))
    for step, f, layer, pos, m, v in rd.probes:
        if f == feature and m == metric and _finite(v):
            grid[step][layer][pos] = v
    return {s: dict(layers) for s, layers in grid.items()}


def _mean(xs) -> float | None:
    xs = [x for x in xs if _finite(x)]
    return sum(xs) / len(xs) if xs else None


@dataclass
class FeatureCurve:
    feature: str
    metric: str  # "acc" or "r2"
    layer: int
    steps: list[int]
    values: list[float]
    baseline: float | None  # same aggregate on the random-init model (step 0)
    lo: list[float] | None = None  # mean of acc_lo / acc_hi (r2_lo / r2_hi) over the same positions, where logged
    hi: list[float] | None = None
    cls: str | None = None  # quiet / loud / absent, from feature_class


def feature_curve(rd: RunData, feature: str) -> FeatureCurve | None:
    metric = probe_metric(rd, feature)
    if metric is None:
        return None
    grid = probe_grid(rd, feature, metric)
    if not grid:
        return None
    steps = sorted(grid)
    fc = rd.feature_classes.get(feature, {})
    layers = sorted({l for s in steps for l in grid[s]})
    layer = fc.get("best_layer")
    if not (isinstance(layer, int) and layer in layers):
        last = grid[steps[-1]]
        layer = max(last, key=lambda l: (_mean(last[l].values()) or -math.inf, -l))
    pts = [(s, _mean(grid[s].get(layer, {}).values())) for s in steps]
    pts = [(s, v) for s, v in pts if v is not None]
    baseline = _mean(grid.get(0, {}).get(layer, {}).values())
    if baseline is None:
        baseline = _num(fc.get("baseline_acc") if metric == "acc" else fc.get("baseline_r2", fc.get("baseline_acc")))
    curve = FeatureCurve(feature, metric, layer, [p[0] for p in pts], [p[1] for p in pts], baseline, cls=fc.get("class"))
    lo_grid, hi_grid = probe_grid(rd, feature, f"{metric}_lo"), probe_grid(rd, feature, f"{metric}_hi")
    if lo_grid and hi_grid:
        lo = [_mean(lo_grid.get(s, {}).get(layer, {}).values()) for s in curve.steps]
        hi = [_mean(hi_grid.get(s, {}).get(layer, {}).values()) for s in curve.steps]
        if all(v is not None for v in lo + hi):
            curve.lo, curve.hi = lo, hi
    return curve


def head_metrics(rd: RunData) -> dict[str, dict[int, dict[int | None, str]]]:
    """{"attn/entropy"|"grad/q"|...: {layer: {head or None: metric name}}}."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for name in rd.series:
        m = _HEAD_METRIC.match(name)
        if m:
            out[m.group(1)][int(m.group(2))][None if m.group(3) is None else int(m.group(3))] = name
    return {k: dict(v) for k, v in out.items()}


def mean_over(rd: RunData, names) -> tuple[list[int], list[float]]:
    """Step-wise mean of several metrics (e.g. the heads of one layer), over those logged at each step."""
    acc: dict[int, list[float]] = defaultdict(list)
    for n in names:
        for s, v in zip(*rd.curve(n)):
            acc[s].append(v)
    steps = sorted(acc)
    return steps, [sum(acc[s]) / len(acc[s]) for s in steps]


def steps_to_fraction(rd: RunData, metric: str, target: float) -> int | None:
    """First step at which ``metric`` reaches ``target``."""
    for s, v in zip(*rd.curve(metric)):
        if v >= target:
            return s
    return None


def _transition_for(transitions: list[dict], step) -> dict | None:
    """The first transition whose onset is at or after ``step``, else the last one."""
    if not transitions:
        return None
    later = [t for t in transitions if _finite(step) and t["onset"] >= step]
    return later[0] if later else transitions[-1]


# ------------------------------------------------------------------------------------------------
# sentences
def _run_sentence(rd: RunData) -> str:
    parts = []
    task = task_name(rd.config)
    sizes = task_sizes(rd.config)
    head = f"`{task}`" if task else f"Run `{rd.name}`"
    if task and sizes:
        head += f" ({_scalars(sizes)})"
    parts.append(head)
    model = rd.config.get("model")
    if isinstance(model, dict) and _scalars(model):
        parts.append(f"model {_scalars(model)}")
    variant = rd.variant
    if variant and not (isinstance(model, dict) and variant in model.values()):
        parts.append(f"{variant} attention")
    if "seed" in rd.config:
        parts.append(f"seed {rd.config['seed']}")
    text = "; ".join(parts)
    steps = [s for name in ("train/loss", "eval/loss") for s in rd.curve(name)[0]]
    if steps:
        text += f": trained {fmt_step(max(steps))} steps"
        extra = []
        tok = rd.curve("train/tokens")[1]
        if tok:
            extra.append(f"{fmt_big(tok[-1])} tokens")
        flops = rd.curve("train/flops")[1]
        if flops:
            extra.append(f"{flops[-1]:.2e} FLOPs")
        if extra:
            text += " (" + ", ".join(extra) + ")"
    elif not rd.has_store:
        text += ": nothing logged yet (no metrics.sqlite)"
    else:
        text += ": no training metrics logged"
    return text + "."


def _loss_sentences(rd: RunData) -> list[str]:
    curve, transitions = main_transitions(rd)
    out = []
    for i, t in enumerate(transitions):
        label = "Loss" if curve in LOSS_CURVES else f"`{curve}`"
        prefix = "" if len(transitions) == 1 else f"Transition {i + 1}: "
        start = t.get("plateau_start")
        flat = f"flat from step {fmt_step(start)} to {fmt_step(t['onset'])}" if _finite(start) else f"flat until step {fmt_step(t['onset'])}"
        if _finite(t.get("level_before")):
            flat += f" (≈{fmt_num(t['level_before'])})"
        text = f"{prefix}{label} {flat}"
        if _finite(t.get("level_after")) or _finite(t.get("end")):
            text += ", then dropped"
            if _finite(t.get("level_after")):
                text += f" to {fmt_num(t['level_after'])}"
            if _finite(t.get("end")):
                text += f" by step {fmt_step(t['end'])}"
        out.append(text + ".")
    name = curve or loss_curve_name(rd)
    steps, values = rd.curve(name) if name else ([], [])
    if not transitions:
        if steps:
            went = f"{name} went from {fmt_num(values[0])} at step {fmt_step(steps[0])} to {fmt_num(values[-1])} at step {fmt_step(steps[-1])}"
            if curve is not None:
                out.append(f"No plateau-then-drop transition was detected in {curve}; {went}.")
            else:
                out.append(f"Transition detection has not run on this run; {went}.")
        plateaus = [e for e in rd.events if e.get("kind") == "plateau" and e.get("text")]
        if plateaus:
            out.append(f"Latest event: {plateaus[-1]['text'].rstrip('.')}.")
    em_steps, em = rd.curve("eval/exact_match")
    if em:
        text = f"Final exact-match accuracy {fmt_pct(em[-1])} at step {fmt_step(em_steps[-1])}"
        best = max(em)
        if best > em[-1] + 0.02:
            text += f" (best {fmt_pct(best)})"
        tok = rd.curve("eval/token_acc")[1]
        if tok:
            text += f"; token accuracy {fmt_pct(tok[-1])}"
        out.append(text + ".")
    return out


def _feature_sentence(rd: RunData, feature: str, fc: dict, transitions: list[dict]) -> str:
    cls = fc.get("class")
    metric = "r2" if fc.get("metric") == "r2" else "acc"
    ds = fc.get("decodable_step")
    layer = fc.get("best_layer")
    before, final, base = fc.get("acc_before_transition"), fc.get("acc_final"), fc.get("baseline_acc")
    if metric == "r2":
        before = fc.get("r2_before_transition", before)
        final = fc.get("r2_final", final)
        base = fc.get("baseline_r2", base)
    where = f"layer {layer}" if layer is not None else "its best layer"
    if cls != "absent" and not _finite(ds):
        return f"`{feature}`" + (f" ({cls})" if cls else "") + ": no decodable step recorded."
    if not _finite(ds):
        text = f"`{feature}` never became decodable"
        if _finite(final):
            text += f": probe {fmt_score(final, metric)} at the end"
            if _finite(base):
                text += f" vs {fmt_score(base, metric)} at random init"
        return text + "."
    text = f"`{feature}`" + (f" ({cls})" if cls else "") + f" decodable from step {fmt_step(ds)}"
    t = _transition_for(transitions, ds)
    if t is not None:
        lead = t["onset"] - ds
        if lead > 0:
            text += f", {fmt_step(lead)} steps before the drop"
        elif lead == 0:
            text += ", as the drop begins"
        else:
            text += f", {fmt_step(-lead)} steps after the drop begins"
    details = []
    if _finite(before):
        details.append(f"probe {fmt_score(before, metric)} just before the transition")
    if _finite(base):
        details.append(f"{fmt_score(base, metric)} at random init")
    if _finite(final):
        details.append(f"{fmt_score(final, metric)} at the end ({where})")
    if details:
        text += ": " + ", ".join(details)
    return text + "."


def _probe_only_sentence(rd: RunData, feature: str) -> str | None:
    c = feature_curve(rd, feature)
    if c is None or not c.values:
        return None
    text = f"`{feature}`: probe {fmt_score(c.values[-1], c.metric)} at step {fmt_step(c.steps[-1])} (layer {c.layer})"
    if c.baseline is not None:
        text += f" vs {fmt_score(c.baseline, c.metric)} at random init"
    return text + "; not classified as quiet or loud (no feature_class result)."


def _ci(ci) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_finite(x) for x in ci):
        return f"95% CI {ci[0]:.0f}–{ci[1]:.0f}%" if max(abs(ci[0]), abs(ci[1])) >= 10 else f"95% CI {ci[0]:.1f}–{ci[1]:.1f}%"
    return ""


def layer_text(layer) -> str:
    """``2`` -> "layer 2"; a description such as "best per position" is kept as it is."""
    if layer is None:
        return ""
    return f"layer {layer}" if isinstance(layer, int) or str(layer).isdigit() else str(layer)


def _ablation_sentence(a: dict) -> str:
    feature, method = a.get("feature", "?"), a.get("method")
    where = ", ".join(
        x for x in (method, layer_text(a.get("layer")),
                    f"{a['n_examples']:,} examples" if _finite(a.get("n_examples")) else "") if x
    )
    text = f"Ablating `{feature}`" + (f" ({where})" if where else "") + ": exact match "
    text += f"{fmt_pct(a.get('baseline_acc'))} → {fmt_pct(a.get('ablated_acc'))}"
    inner = ", ".join(x for x in (f"drop {fmt_points(a['drop_pct'])}" if _finite(a.get("drop_pct")) else "", _ci(a.get("drop_ci"))) if x)
    if inner:
        text += f" ({inner})"
    if _finite(a.get("control_acc")):
        n = f"{a['n_controls']} " if _finite(a.get("n_controls")) else ""
        text += f"; {n}random directions: {fmt_pct(a['control_acc'])}"
        inner = ", ".join(
            x for x in (f"drop {fmt_points(a['control_drop_pct'])}" if _finite(a.get("control_drop_pct")) else "",
                        _ci(a.get("control_drop_ci"))) if x
        )
        if inner:
            text += f" ({inner})"
    return text + "."


def ordered_ablations(rd: RunData) -> list[dict]:
    """Ablation results, quiet features first (as the feature sentences), then by feature and method."""
    def key(kv):
        a = kv[1]
        cls = rd.feature_classes.get(a.get("feature"), {}).get("class")
        return (CLASS_ORDER.get(cls, 3), str(a.get("feature")), str(a.get("method")), kv[0])

    return [a for _, a in sorted(rd.ablations.items(), key=key)]


def absent_parts(rd: RunData) -> list[str]:
    """Plain sentences naming what this run does not hold."""
    out = []
    if not rd.has_store:
        return ["Nothing was logged: the run folder has no metrics.sqlite."]
    if not rd.curve("train/loss")[0]:
        out.append("No training loss was logged.")
    if not any(n.startswith("eval/") for n in rd.series):
        out.append("No evaluation metrics (eval/loss, eval/exact_match) were logged.")
    if not rd.transitions:
        out.append("Transition detection has not run (no transition results).")
    if not rd.probes:
        out.append("No probes were recorded (run `quietlab probe RUN`, or train with the monitor).")
    elif not rd.feature_classes:
        out.append("Probed features were not classified as quiet or loud (no feature_class results).")
    if not rd.ablations:
        out.append("No ablations were run (run `quietlab ablate RUN`).")
    if not head_metrics(rd):
        out.append("No attention statistics (attention entropy, Q/K/V gradient norms) were logged.")
    return out


def summarize(run: Path | str | RunData) -> list[str]:
    """Plain-language sentences about one run, every number computed from its store.

    In order: what was trained; the loss plateau and drop; final accuracy; each feature (quiet, loud or
    absent, and how long before the drop it became decodable); each ablation against its random
    control; then what the run does not hold."""
    rd = load_run(run)
    out = [_run_sentence(rd), *_loss_sentences(rd)]
    _, transitions = main_transitions(rd)
    classes = sorted(
        rd.feature_classes.items(),
        key=lambda kv: (CLASS_ORDER.get(kv[1].get("class"), 3), _num(kv[1].get("decodable_step"), math.inf), kv[0]),
    )
    out += [_feature_sentence(rd, f, fc, transitions) for f, fc in classes]
    for f in probe_features(rd):
        if f not in rd.feature_classes and (s := _probe_only_sentence(rd, f)):
            out.append(s)
    out += [_ablation_sentence(a) for a in ordered_ablations(rd)]
    out += absent_parts(rd)
    return out


def headline(run: Path | str | RunData) -> str | None:
    """One sentence with the main finding, e.g. "Loss flat from step 300 to 2,900; `carry` decodable from
    step 1,100 (1,800 steps before the drop); ablating it: accuracy 99% → 12% (random directions: 98%)".
    The feature named is the quiet one whose ablation drops accuracy most, else the earliest quiet one.
    None when the run has no detected transition."""
    rd = load_run(run)
    _, transitions = main_transitions(rd)
    if not transitions:
        return None
    t = transitions[0]
    parts = [
        (f"Loss flat from step {fmt_step(t['plateau_start'])} to {fmt_step(t['onset'])}" if _finite(t.get("plateau_start"))
         else f"Loss flat until step {fmt_step(t['onset'])}")
    ]
    # the quiet feature whose ablation shows it matters most (the causal claim), else the earliest quiet one
    ablated = {a.get("feature"): _num(a.get("drop_pct"), -math.inf) for a in rd.ablations.values()}
    quiet = sorted(
        ((f, fc) for f, fc in rd.feature_classes.items() if fc.get("class") == "quiet" and _finite(fc.get("decodable_step"))),
        key=lambda kv: (-ablated.get(kv[0], -math.inf), kv[1]["decodable_step"]),
    )
    if quiet:
        f, fc = quiet[0]
        ds = fc["decodable_step"]
        tt = _transition_for(transitions, ds)
        lead = tt["onset"] - ds
        piece = f"`{f}` decodable from step {fmt_step(ds)}"
        if lead > 0:
            piece += f" ({fmt_step(lead)} steps before the drop)"
        parts.append(piece)
        abl = [a for _, a in sorted(rd.ablations.items()) if a.get("feature") == f]
        if abl:
            a = max(abl, key=lambda a: _num(a.get("drop_pct"), -math.inf))
            piece = f"ablating it: accuracy {fmt_pct(a.get('baseline_acc'))} → {fmt_pct(a.get('ablated_acc'))}"
            if _finite(a.get("control_acc")):
                piece += f" (random directions: {fmt_pct(a['control_acc'])})"
            parts.append(piece)
    elif _finite(t.get("end")):
        parts.append(f"dropped by step {fmt_step(t['end'])}")
    return "; ".join(parts) + "."


def compare(runs) -> list[str]:
    """Sentences comparing several runs: when each one's drop began, and the steps each needed to reach
    95% of the best final exact-match accuracy among them (the Eureka paper's speed measure)."""
    rds = [load_run(r) for r in runs]
    out = []
    onsets = []
    for rd in rds:
        _, ts = main_transitions(rd)
        onsets.append(f"`{rd.label}` at step {fmt_step(ts[0]['onset'])}" if ts else f"`{rd.label}` none detected")
    if any(rd.transitions for rd in rds):
        out.append("Drop begins: " + "; ".join(onsets) + ".")
    finals = [rd.curve("eval/exact_match")[1] for rd in rds]
    if sum(bool(f) for f in finals) >= 2:
        best = max(f[-1] for f in finals if f)
        target = 0.95 * best
        pieces = []
        for rd in rds:
            s = steps_to_fraction(rd, "eval/exact_match", target)
            pieces.append(f"`{rd.label}` {fmt_step(s)}" if s is not None else f"`{rd.label}` never")
        out.append(f"Steps to reach 95% of the best final exact match ({fmt_pct(best)} → {fmt_pct(target)}): " + "; ".join(pieces) + ".")
    return out
