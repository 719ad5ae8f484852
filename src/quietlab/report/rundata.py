"""A run's data, read once from its folder: curves, probe grids, feature classes, ablations, attention
statistics; the aggregates both the summary's sentences (``summary.py``) and the report's plots use.

Probe aggregate used throughout: a feature's probe score at a step is the mean, over the positions where
the feature is defined (those with a probe row), of the probe at its *best layer*: the layer the feature
classification chose (``feature_class.best_layer``), else the layer with the highest mean score at the
last probed step. Layers are hook names (``models.hooks``). The score is accuracy ("acc") for
classification features and R² ("r2") for scalar ones. Its random-init baseline is the same aggregate at
step 0. A run's store may hold two probe fits (the Monitor's ``online`` one and ``quietlab probe``'s
``checkpoint`` one); the one shown is ``RunData.probe_fit`` (``RunStore.shown_fit``).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..models.hooks import block_of, depth
from ..monitor.features import LOSS_CURVES
from ..runs import RunFolder, RunStore
from ..runs.folder import RunConfig

_HEAD_METRIC = re.compile(r"^(attn/entropy|grad/q|grad/k|grad/v)/(blocks\.\d+\.attn(?:\.hook_pattern)?)(?:/H(\d+))?$")


CLASS_ORDER = {"quiet": 0, "loud": 1, "unresolved": 2, "absent": 3}


@dataclass
class RunData:
    """Everything the report needs from one run folder, read once."""

    path: Path
    name: str
    config: dict  # config.json as written
    run_config: RunConfig | None = None  # the same, typed; None when it is not a training config
    config_problem: str | None = None  # why run_config is None
    probe_fit: str | None = None  # the probe fit read ("online" or "checkpoint"), None without probes
    series: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    probes: list[tuple] = field(default_factory=list)  # (step, feature, layer, position, metric, value) of probe_fit
    transitions: dict[str, list[dict]] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    feature_classes: dict[str, dict] = field(default_factory=dict)
    feature_classes_paper: dict[str, dict] = field(default_factory=dict)  # by the study's metric (paper runs)
    ablations: dict[str, dict] = field(default_factory=dict)
    has_store: bool = False

    def curve(self, name: str) -> tuple[list[int], list[float]]:
        """(steps, values) of a metric with missing values dropped; empty lists if never logged."""
        steps, values = self.series.get(name, ([], []))
        pairs = [(s, v) for s, v in zip(steps, values) if finite(v)]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    @property
    def variant(self) -> str | None:
        return self.run_config.model.attention if self.run_config else None

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
    rd = RunData(path=path, name=path.resolve().name, config=config)
    if config_path.exists():
        folder = RunFolder(path)
        try:
            rd.config = folder.read_config()
        except (OSError, ValueError) as exc:
            raise ValueError(f"{config_path} is not readable JSON: {exc}") from None
        if not isinstance(rd.config, dict):
            raise ValueError(f"{config_path} should hold a JSON object, found {type(rd.config).__name__}")
        try:
            rd.run_config = folder.config()
        except ValueError as exc:
            rd.config_problem = str(exc)
    if db_path.exists():
        rd.has_store = True
        with RunStore(db_path, readonly=True) as store:
            rd.series = {n: store.series(n) for n in store.metric_names()}
            rd.probe_fit = store.shown_fit() if store.fits() else None
            rd.probes = [tuple(r) for r in store.probes(fit=rd.probe_fit)]
            rd.transitions = {k: [v] if isinstance(v, dict) else list(v) if isinstance(v, list) else []
                              for k, v in store.results("transition").items()}
            rd.events = sorted(
                (e for e in store.results("event").values() if isinstance(e, dict)),
                key=lambda e: (num(e.get("step"), math.inf), str(e.get("kind"))),
            )
            rd.feature_classes = {k: v for k, v in store.results("feature_class").items() if isinstance(v, dict)}
            rd.feature_classes_paper = {k: v for k, v in store.results("feature_class_paper").items()
                                        if isinstance(v, dict)}
            rd.ablations = {k: v for k, v in store.results("ablation").items() if isinstance(v, dict)}
    return rd


def main_transitions(rd: RunData) -> tuple[str | None, list[dict]]:
    """(curve, transitions sorted by onset) from the detector: the first curve of LOSS_CURVES (then any
    other) in which it found a transition, else the first it looked at."""
    looked = [n for n in dict.fromkeys((*LOSS_CURVES, *sorted(rd.transitions))) if n in rd.transitions]
    found = {n: sorted((t for t in rd.transitions[n] if isinstance(t, dict) and finite(t.get("onset"))),
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


def probe_grid(rd: RunData, feature: str, metric: str) -> dict[int, dict[str, dict[int, float]]]:
    """{step: {layer (hook name): {position: value}}} for one feature and metric."""
    grid: dict = defaultdict(lambda: defaultdict(dict))
    for step, f, layer, pos, m, v in rd.probes:
        if f == feature and m == metric and finite(v):
            grid[step][layer][pos] = v
    return {s: dict(layers) for s, layers in grid.items()}


def mean(xs) -> float | None:
    xs = [x for x in xs if finite(x)]
    return sum(xs) / len(xs) if xs else None


@dataclass
class FeatureCurve:
    feature: str
    metric: str  # "acc" or "r2"
    layer: str  # hook name
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
    layers = sorted({l for s in steps for l in grid[s]}, key=depth)
    layer = fc.get("best_layer")
    if layer not in layers:
        last = grid[steps[-1]]
        layer = max(sorted(last, key=depth), key=lambda l: mean(last[l].values()) or -math.inf)  # ties: the lower layer
    pts = [(s, mean(grid[s].get(layer, {}).values())) for s in steps]
    pts = [(s, v) for s, v in pts if v is not None]
    baseline = mean(grid.get(0, {}).get(layer, {}).values())
    if baseline is None:
        baseline = num(fc.get("baseline_acc") if metric == "acc" else fc.get("baseline_r2", fc.get("baseline_acc")))
    curve = FeatureCurve(feature, metric, layer, [p[0] for p in pts], [p[1] for p in pts], baseline, cls=fc.get("class"))
    lo_grid, hi_grid = probe_grid(rd, feature, f"{metric}_lo"), probe_grid(rd, feature, f"{metric}_hi")
    if lo_grid and hi_grid:
        lo = [mean(lo_grid.get(s, {}).get(layer, {}).values()) for s in curve.steps]
        hi = [mean(hi_grid.get(s, {}).get(layer, {}).values()) for s in curve.steps]
        if all(v is not None for v in lo + hi):
            curve.lo, curve.hi = lo, hi
    return curve


def head_metrics(rd: RunData) -> dict[str, dict[int, dict[int | None, str]]]:
    """{"attn/entropy"|"grad/q"|...: {block: {head or None: metric name}}}."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for name in rd.series:
        m = _HEAD_METRIC.match(name)
        if m:
            out[m.group(1)][block_of(m.group(2))][None if m.group(3) is None else int(m.group(3))] = name
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


def transition_for(transitions: list[dict], step) -> dict | None:
    """The first transition whose onset is at or after ``step``, else the last one."""
    if not transitions:
        return None
    later = [t for t in transitions if finite(step) and t["onset"] >= step]
    return later[0] if later else transitions[-1]


def ordered_ablations(rd: RunData) -> list[dict]:
    """Ablation results, quiet features first (as the feature sentences), then by feature and method."""
    def key(kv):
        a = kv[1]
        cls = rd.feature_classes.get(a.get("feature"), {}).get("class")
        return (CLASS_ORDER.get(cls, 3), str(a.get("feature")), str(a.get("method")), kv[0])

    return [a for _, a in sorted(rd.ablations.items(), key=key)]


def finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def num(v, default=None):
    return v if finite(v) else default
