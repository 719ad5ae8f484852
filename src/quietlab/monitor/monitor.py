"""The Monitor: what a model learns while it trains, written to the run's store as it happens.

    from quietlab.monitor import Monitor
    train(cfg, "runs/add8", hooks=Monitor())            # or Monitor(features=["carry"], device="cuda")

It implements the training loop's hooks (``train.loop.TrainHooks``) and sees the model only through
its named activation taps (``hook_embed``, ``blocks.{l}.hook_resid_post``, ``blocks.{l}.attn.hook_pattern``;
``models.hooks``) and, for the gradient
statistics, the ``qkv`` weight of each block's attention. The same object watches any other model in
a plain loop (``quietlab.watch``, monitor/watch.py): ``begin`` with the taps of ``monitor.taps``
instead of ``attach``, then ``on_step`` after every optimizer step.

What it records (names as in metrics.sqlite):

- probes, on the probe schedule (``schedule="log"``: step 0, about ``per_decade`` log-spaced steps per
  decade, and the last step, thinned to the overhead budget below; each runs right after its step's
  update): linear probes of every task feature at every (layer, position) on a fixed probe set
  of ``probe_examples`` held-out examples (``task.sample(n, seed, split="test")``, never training
  data), split into probe-train and probe-test; rows (step, feature, layer, position, metric, value)
  with the metrics of ``probes.py`` (acc, logloss, acc_lo, acc_hi, n_test; r2, mse, r2_lo, r2_hi),
  layer a hook name, fit ``online``; step 0 is the random-init baseline. ``monitor/probe_s``: seconds the probes took;
  ``monitor/probe_estimate``: what the budget counted for them (``probe_cost``, in training steps).
- ``attn/entropy/blocks.{l}.attn.hook_pattern/H{h}`` at every evaluation: normalised attention entropy on the first
  ``entropy_examples`` probe examples (each query's entropy over the keys it may see divided by
  log(#keys), averaged over queries that see at least two keys); 1 = uniform attention.
- ``grad/q|k|v/blocks.{l}.attn/H{h}``: mean |gradient| of that head's rows of the Q, K and V parts of the ``qkv``
  weight, taken in ``after_backward`` at about ``stats_per_decade`` log-spaced steps per decade.
- results ``event`` (key ``f"{step}:{kind}"``): "plateau since step N" and "transition at step M",
  from an :class:`~quietlab.monitor.transitions.OnlineDetector` fed with ``eval/loss``, and a second
  one fed with the per-step training loss as the loop hands it over (fresh examples every step: the
  same population loss, densely sampled), whose transitions count where the sparser evaluations have
  not shown one; ``status()`` shows the latest for the progress bar.
- at the last step (``classify_at_end``): results ``transition`` and ``feature_class`` (features.py).

Cost: the probe set is captured in one no-grad pass, features that share a solver and a mask are fitted
as one batched problem, on the model's device by default, each probe starting from the same pair's probe
of the previous probe step (the solver then needs fewer passes). A probe step's cost is estimated from
shapes and counts, never from the clock (``probe_cost``: the capture pass's and the solver's FLOPs,
weighed by how much slower than a training step's FLOPs they run), so one seed gives the same probes and
classes on any machine and under any load. How the budget is spent, ``max_overhead`` (default 6%) of the
run's training compute for all probes:

1. step 0 (the random-init baseline) and the last step, every feature at every tap, always;
2. ``1 - plateau_share`` (default 20%) of the rest: the probe schedule's interior steps, thinned evenly
   along it to what that share buys (none when it buys less than one probe step);
3. the rest, and whatever the schedule left over, is the plateau reserve (follow.py): from the
   evaluation or checkpoint at which the online detectors see the loss on a plateau, a probe there and
   at the steps of a log grid of ``plateau_per_decade`` per decade, while the plateau lasts and the
   reserve covers them. A plateau probe fits only the features not yet decided (decodable at two probe
   steps in a row: their class can no longer change) and skips the taps that read the token alone
   (``hook_embed``: what a probe there can read is the same at every step), and costs the reserve its
   own estimate, so the reserve buys more probes as features are decided (on a GPU, which fits a solver
   family's features as one batch whose cost is its kernel launches, only as whole families are: a
   probe of some of a family's features is counted as one of all of them). A run without a plateau
   spends only steps 1 and 2.

What probes happen is a function of the run's configuration, its losses and the probes' own results,
decided at evaluations and checkpoints only (when the loop has handed over every loss so far).
benchmarks/plateau_replay.py replays a stored run's losses through this on the CPU;
benchmarks/train_overhead.py and benchmarks/plateau_probing.py measure the whole cost.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Iterable, Sequence

import numpy as np
import torch

from ..models.hooks import attn_module
from .follow import PlateauFollower, split_budget
from .probes import MAX_ITER, capture_layers, fit_features, one_batch_per_family, residual_taps, solver_family, split_probe_set
from .transitions import OnlineDetector

#: the probe set's seed is the run's seed plus this, so that ``quietlab probe`` redraws the same set
PROBE_SEED_OFFSET = 0x960BE


def log_schedule(total: int | None, per_decade: float, horizon: int = 10**9) -> list[int]:
    """0, 1 and about ``per_decade`` rounded log-spaced steps per decade, up to ``total`` (included)."""
    end = total if total is not None else horizon
    steps, i = {0}, 0
    while per_decade > 0:
        s = round(10 ** (i / per_decade))
        if s > end:
            break
        steps.add(s)
        i += 1
    if total is not None:
        steps.add(int(total))
    return sorted(steps)


def probe_set(task, n: int, seed: int = 0):
    """The held-out examples the monitor and ``quietlab probe`` fit probes on (a task Batch)."""
    return task.sample(int(n), seed=int(seed) + PROBE_SEED_OFFSET, split="test")


def trim_to_features(tokens: np.ndarray, features: dict) -> tuple[np.ndarray, dict]:
    """Cut the sequences after the last position any feature is defined at: a causal model's activations
    there do not depend on what follows, so the capture pass can skip it."""
    from ..tasks.base import Feature

    used = np.zeros(tokens.shape[1], dtype=bool)
    for f in features.values():
        used |= f.mask.any(axis=0)
    end = int(np.flatnonzero(used)[-1]) + 1 if used.any() else 1
    if end == tokens.shape[1]:
        return tokens, features
    return tokens[:, :end], {n: Feature(f.values[:, :end], f.mask[:, :end], f.kind, f.n_classes, f.description)
                             for n, f in features.items()}


@torch.no_grad()
def attention_entropy(model, tokens: torch.Tensor) -> dict[str, float]:
    """{``attn/entropy/{hook}/H{h}``: normalised entropy} of every attention pattern the model exposes
    (hook: ``blocks.{l}.attn.hook_pattern``)."""
    from .taps import TransformerTaps

    return pattern_entropy(TransformerTaps(None, tokens).attention_patterns(model))


@torch.no_grad()
def pattern_entropy(patterns: dict[str, torch.Tensor]) -> dict[str, float]:
    """{``attn/entropy/{name}/H{h}``: normalised entropy} of attention patterns {name: (B, H, Tq, Tk)}.

    A pattern is causal when it is square and nothing lies above its diagonal: then each query's entropy
    is divided by the log of the keys it may see, otherwise by log Tk. Patterns of one shape (every
    layer of a model, usually) are computed as one stack, and all of them with one device sync."""
    by_shape: dict[tuple, list[str]] = {}
    for name, p in patterns.items():
        by_shape.setdefault(tuple(p.shape), []).append(name)
    per_group = []  # (names, per-head means (L, H), queries counted (L,)) still on the device
    for (B, H, Tq, Tk), names in by_shape.items():
        p = torch.stack([patterns[n] for n in names]).float()  # (L, B, H, Tq, Tk)
        keys = torch.arange(1, Tk + 1, device=p.device, dtype=p.dtype)
        if Tq == Tk and Tq > 1:  # causal or not, decided on the device: no sync per pattern
            causal = p.triu(1).abs().amax(dim=(1, 2, 3, 4)) == 0  # (L,)
            n_keys = torch.where(causal[:, None], keys, torch.full_like(keys, float(Tk)))  # (L, Tq)
        else:
            n_keys = torch.full((len(names), Tq), float(Tk), device=p.device, dtype=p.dtype)
        ent = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)  # (L, B, H, Tq)
        use = (n_keys >= 2).to(p.dtype)[:, None, None, :]  # a query that sees one key has no entropy to normalise
        norm = ent / torch.log(n_keys.clamp(min=2))[:, None, None, :]
        counted = use.sum(dim=(1, 2, 3))  # (L,)
        per_head = (norm * use).sum(dim=(1, 3)) / (counted * B)[:, None].clamp(min=1)  # (L, H)
        per_group.append((names, per_head, counted))
    if not per_group:
        return {}
    flat = torch.cat([torch.cat([h, n[:, None]], 1).reshape(-1).to(torch.float32) for _, h, n in per_group])
    values = flat.cpu().tolist()
    out, at = {}, 0
    for names, heads, _ in per_group:
        width = heads.shape[1] + 1
        for name in names:
            row, at = values[at : at + width], at + width
            if row[-1] > 0:
                out.update({f"attn/entropy/{name}/H{h}": v for h, v in enumerate(row[:-1])})
    return out


def qkv_grad_stats(model) -> dict[str, float]:
    """{``grad/q|k|v/blocks.{l}.attn/H{h}``: mean |grad|} over each head's rows of every block's ``attn.qkv`` weight."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        return {}
    stats, where = [], []
    for l, block in enumerate(blocks):
        attn = getattr(block, "attn", None)
        qkv = getattr(attn, "qkv", None)
        g = getattr(getattr(qkv, "weight", None), "grad", None)
        if g is None:
            continue
        H = attn.n_heads
        stats.append(g.detach().float().view(3, H, -1, g.shape[1]).abs().mean(dim=(2, 3)))  # (3, H)
        where.append(l)
    if not stats:
        return {}
    values = torch.stack(stats).cpu().tolist()  # one device sync for all layers
    out = {}
    for l, per in zip(where, values):
        for part, row in zip("qkv", per):
            out.update({f"grad/{part}/{attn_module(l)}/H{h}": v for h, v in enumerate(row)})
    return out


#: how many times slower per FLOP the probe solver runs than a training step (small batched solves
#: against large matmuls), by device type, from benchmarks/probe_cost.py. CUDA: 5.8 on an H200 (bfs-11,
#: d_model 256 × 4, compiled training step 2.40 ms, warm probe step 0.31 s:
#: benchmarks/results/h200-2026-12-03/probe_cost_bfs11_d256_cuda.json). CPU: 2.5 (addition-12) and 0.36
#: (bfs-11), both d_model 64 × 4 on the shared 2-core VM (results/cpu-2026-12-02b): 1.0 between them.
PROBE_SLOWDOWN = {"cpu": 1.0, "cuda": 5.8}


def probe_cost(model, feature_set: dict, n_examples: int, n_train: int, max_iter: int, batch_size: int,
               seq_len: int, device_type: str = "cpu", slowdown: float | None = None,
               n_taps: int | None = None, probed: Iterable[str] | None = None) -> float:
    """Estimated cost of one probe step, in training steps of ``batch_size`` examples of ``seq_len``
    tokens, from shapes and counts alone: a forward pass over the ``n_examples`` probe examples (a third
    of a training step's FLOPs per token), plus ``max_iter`` solver passes (forward and gradient: 6·d
    FLOPs per example and output column) for every (position, output column) a feature is defined at,
    at each of ``n_taps`` taps (default: the model's residual stream taps), the latter weighed by
    PROBE_SLOWDOWN. A pass covers the probe-train examples where the feature is defined at that
    position (``n_train`` times the fraction of the probe set defined there: each pair is fitted on
    those only); on a GPU, whose passes cost their kernel launches more than their size, all
    ``n_train`` of them, as PROBE_SLOWDOWN["cuda"] was measured. ``probed``: the features of
    ``feature_set`` actually fitted (default: all); on a GPU, which fits a solver family as one batch,
    a probe of some of a family's features costs about what all of them do, so whole families count."""
    if probed is not None:
        probed = set(probed)
        if one_batch_per_family(torch.device(device_type)):
            fitted = {solver_family(feature_set[f]) for f in probed}
            probed = {f for f in feature_set if solver_family(feature_set[f]) in fitted}
        feature_set = {f: v for f, v in feature_set.items() if f in probed}
    n_params = sum(p.numel() for p in model.parameters())
    step_flops = 6 * n_params * batch_size * seq_len
    probe_len = max(f.mask.shape[1] for f in feature_set.values()) if feature_set else 0
    capture = 2 * n_params * n_examples * probe_len
    d = getattr(getattr(model, "config", None), "d_model", None) or max(p.shape[-1] for p in model.parameters())
    rows = 0.0  # Σ over (position, output column) of the probe-train examples a pass covers
    for f in feature_set.values():
        defined = f.mask.mean(axis=0)
        covered = float((defined > 0).sum() if device_type == "cuda" else defined.sum())
        rows += f.k * (f.n_classes if f.kind == "categorical" else 1) * covered * n_train
    fit = max_iter * 6 * d * rows * (n_taps if n_taps is not None else len(residual_taps(model)))
    if slowdown is None:
        slowdown = PROBE_SLOWDOWN.get(device_type, PROBE_SLOWDOWN["cpu"])
    return (capture + slowdown * fit) / step_flops


class Monitor:
    """Training hooks: probes, attention entropy, Q/K/V gradients and plateau/transition events.

    ``schedule``: when to probe. ``"log"`` (default): step 0, ``per_decade`` log-spaced steps per
    decade and the last step; ``"eval"``: at every evaluation; an int n: every n steps (plus 0 and the
    last); a list of steps; ``None``: never (the other statistics are still logged).
    ``probe_examples``: size of the fixed held-out probe set (``test_fraction`` of it is probe-test).
    ``features``: names of the task's features to probe (default: all). ``device``: where probes are
    fitted (default: the model's device). ``probe_kwargs`` go to ``probes.fit_features``.
    ``max_overhead`` (default 0.06): the estimated cost (``probe_cost``) of all probes, step 0 and the
    last step included (kept even when they alone exceed it), is at most this fraction of the run's
    training compute; None probes on the whole schedule and follows no plateau. ``plateau_share``
    (default 0.8) of what step 0 and the last step leave is the plateau reserve, spent while the online
    detectors see a plateau on a log grid of ``plateau_per_decade`` steps per decade (default three
    times ``per_decade``); the scheduled probes are thinned evenly to the rest (see "Cost" in the
    module docstring). The schedule is fixed at ``attach`` from the configuration alone
    (``probe_steps``; ``deferred`` counts the steps thinned away); ``follower.steps`` lists the plateau
    probes taken.
    ``warm_start``: each probe starts from the previous probe step's (see ``fit_features``' ``init``).
    ``spent`` is the monitor's whole time, ``probe_seconds`` the part spent in probes (measured for
    the record only: no decision depends on a clock).
    """

    def __init__(
        self,
        schedule: str | int | Sequence[int] | None = "log",
        probe_examples: int = 2000,
        features: Iterable[str] | None = None,
        device=None,
        *,
        per_decade: float = 8,
        stats_per_decade: float = 16,
        test_fraction: float = 0.2,
        entropy_examples: int = 64,
        classify_at_end: bool = True,
        margin: float = 0.02,
        max_overhead: float | None = 0.06,
        warm_start: bool = True,
        probe_kwargs: dict | None = None,
        plateau_share: float = 0.8,
        plateau_per_decade: float | None = None,
    ):
        if isinstance(schedule, str) and schedule not in ("log", "eval"):
            raise ValueError(f"schedule must be 'log', 'eval', a step interval, a list of steps or None, "
                             f"got {schedule!r}")
        if isinstance(schedule, int) and schedule < 1:
            raise ValueError(f"a probe interval must be >= 1 step, got {schedule}")
        if probe_examples < 20:
            raise ValueError(f"probe_examples must be at least 20, got {probe_examples}")
        if max_overhead is not None and not (max_overhead >= 0 and math.isfinite(max_overhead)):
            raise ValueError(f"max_overhead must be a fraction >= 0 or None, got {max_overhead}")
        self.schedule = schedule
        self.probe_examples = int(probe_examples)
        self.features = None if features is None else list(features)
        self.device = device
        self.per_decade = per_decade
        self.stats_per_decade = stats_per_decade
        self.test_fraction = test_fraction
        self.entropy_examples = entropy_examples
        self.classify_at_end = classify_at_end
        self.margin = margin
        self.max_overhead = max_overhead
        if not 0 <= plateau_share <= 1:
            raise ValueError(f"plateau_share must be a fraction from 0 to 1, got {plateau_share}")
        self.plateau_share = plateau_share
        self.plateau_per_decade = 3 * per_decade if plateau_per_decade is None else plateau_per_decade
        self.follower: PlateauFollower | None = None
        self._undecided: list[str] = []  # features whose decodable step the probes have not settled yet
        self._undecided_cost = 0.0  # estimated cost of a probe step of those
        self._decided: set[str] = set()  # settled for good: later probes come after the two that settled them
        self._online_rows: dict[str, dict[tuple, tuple]] = {}  # the store's online probe rows, by feature
        self.warm_start = warm_start
        self.probe_kwargs = {"max_iter": MAX_ITER, **(probe_kwargs or {})}
        self.store = None
        self.result: dict = {}  # finish()'s classification
        self.total: int | None = None
        self.losses: LossWatch | None = None
        self._last_probes: dict | None = None
        self.last_probe_step = -1
        self.probe_steps: list[int] | None = []  # None: at every evaluation
        self._probe_set: set[int] = set()
        self.estimated_probe_cost = 0.0  # training steps per probe step of every feature (probe_cost)
        self._cost_of = None
        self._plateau_taps: list[str] | None = None  # where plateau probes fit (None: every tap)
        self.probe_seconds = 0.0  # in probes (capture + fit + store)
        self.spent = 0.0  # in all of the monitor's hooks
        self.deferred = 0  # scheduled probe steps thinned away by the overhead budget
        self.timings: dict[str, float] = {}  # seconds per part: probes, entropy, grads, detector, classify
        self._status = ""

    # --- the hooks -------------------------------------------------------------------------------
    def attach(self, model, task, store, run_cfg) -> None:
        """Once before training (and on resume): draw the probe set, set up the schedules and detector."""
        from .taps import TransformerTaps

        t0 = time.perf_counter()
        get = (lambda k, d=None: run_cfg.get(k, d)) if isinstance(run_cfg, dict) else \
            (lambda k, d=None: getattr(run_cfg, k, d))
        seed = get("seed", 0) or 0
        batch, tokens, features = self.probe_inputs(task, seed)
        self.task = task
        p = next(model.parameters())
        entropy_tokens = torch.as_tensor(batch.tokens[: self.entropy_examples], dtype=torch.long, device=p.device)
        self.begin(store, TransformerTaps(tokens, entropy_tokens), features, total=get("steps"), seed=seed, t0=t0,
                   model=model, train_batch_size=get("batch_size", 64) or 64, train_seq_len=task.seq_len)

    def probe_inputs(self, task, seed: int = 0):
        """(the probe set, a task Batch; its tokens cut after the last position a probed feature is defined
        at; {name: Feature} of the features probed, cut alike) of a run of ``task`` with ``seed``."""
        batch = probe_set(task, self.probe_examples, seed)
        available = list(batch.features)
        names = available if self.features is None else self.features
        unknown = [n for n in names if n not in batch.features]
        if unknown:
            raise ValueError(f"unknown feature(s) {', '.join(map(repr, unknown))} for "
                             f"{getattr(task, 'name', 'this task')}; it has: {', '.join(available) or 'none'}")
        tokens, features = trim_to_features(batch.tokens, {n: batch.features[n] for n in names})
        return batch, tokens, features

    def begin(self, store, taps, features: dict, total: int | None = None, seed: int = 0, t0: float | None = None,
              model=None, train_batch_size: int = 64, train_seq_len: int | None = None) -> None:
        """What ``attach`` does past the task: probe ``features`` ({name: Feature} of the probe inputs'
        rows) on the activations ``taps`` captures (``monitor.taps``), write to ``store``. Plain loops
        (``quietlab.watch``) call this instead of ``attach``, then ``on_step`` every step. With ``model``,
        a probe step's cost is estimated (``probe_cost``) against training steps of ``train_batch_size``
        examples of ``train_seq_len`` tokens (default: the probe inputs' length) for the overhead budget."""
        t0 = time.perf_counter() if t0 is None else t0
        self.spent = self.probe_seconds = 0.0
        self.timings = {}
        self.store, self.taps, self.total = store, taps, total
        self.feature_set = features
        self.train_idx, self.test_idx = split_probe_set(taps.n, self.test_fraction, seed=seed)
        self._cost_of = None
        self._plateau_taps = None  # all of them
        if model is not None:
            p = next(model.parameters())
            device_type = torch.device(self.device).type if self.device is not None else p.device.type
            seq_len = train_seq_len or max((f.mask.shape[1] for f in features.values()), default=1)
            shapes = (taps.n, len(self.train_idx), self.probe_kwargs["max_iter"], train_batch_size, seq_len, device_type)
            tap_names = taps.names(model)

            def cost_of(feats, n_taps):
                return probe_cost(model, features, *shapes, n_taps=n_taps or len(tap_names), probed=feats)

            self._cost_of = cost_of
            changing = [t for t in tap_names if t not in taps.token_only]
            self._plateau_taps = changing if changing and len(changing) < len(tap_names) else None
        self.estimated_probe_cost = self.estimated_cost(features)
        self.probe_steps = self._make_probe_steps()
        self._grad_steps = set(log_schedule(self.total, self.stats_per_decade))
        # resume: continue after what the store already holds
        names = list(features)
        probed = sorted({r[0] for r in store.probes(names[0], fit="online")}) if names else []
        self.last_probe_step = probed[-1] if probed else -1
        self._update_undecided()
        if self.follower is not None:  # a resumed run has spent some of the reserve already
            extra = set(probed) - self._probe_set
            fitted = {s: set() for s in extra}
            for step, feature, *_ in store.probes(fit="online"):
                if step in fitted:
                    fitted[step].add(feature)
            for step in sorted(extra):
                self.follower.took(step, self.estimated_cost(fitted[step], self._plateau_taps))
        self.losses = LossWatch(store, self._record_event)
        self._status = self.losses.status
        self.spent = self.timings["attach"] = time.perf_counter() - t0

    def after_backward(self, step: int, model) -> None:
        if step in self._grad_steps:
            t0 = time.perf_counter()
            stats = qkv_grad_stats(model)
            if stats:
                self.store.log(step, stats)
            self._took("grads", t0)
            self.spent += time.perf_counter() - t0

    def after_step(self, step: int, model) -> None:
        if self.probe_steps is None or step <= self.last_probe_step:
            return
        scheduled = step in self._probe_set
        if not scheduled and not (self.follower is not None and self.follower.due(step, self._undecided_cost)):
            return
        t0 = time.perf_counter()
        try:
            if scheduled:
                self.probe(int(step), model)
            else:
                self._follow(int(step), model)
        finally:
            self.spent += time.perf_counter() - t0

    def on_train_loss(self, steps: list[int], losses: list[float]) -> None:
        t0 = time.perf_counter()
        self.losses.feed_train(steps, losses)
        self._status = self.losses.status
        self._took("detector", t0)
        self.spent += time.perf_counter() - t0

    def on_eval(self, step: int, model, metrics: dict) -> None:
        t0 = time.perf_counter()
        try:
            self._on_eval(int(step), model, metrics)
        finally:
            self.spent += time.perf_counter() - t0

    def _on_eval(self, step: int, model, metrics: dict) -> None:
        t0 = time.perf_counter()
        self.losses.update(step, metrics.get("eval/loss") if metrics else None)
        self._status = self.losses.status
        self._took("detector", t0)
        self._sync(step, model)  # a plateau probe here counts as probing
        t0 = time.perf_counter()
        entropy = pattern_entropy(self.taps.attention_patterns(model))
        if entropy:
            self.store.log(step, entropy)
        self._took("entropy", t0)
        if self.probe_steps is None and step > self.last_probe_step and self.schedule is not None:
            self.probe(step, model)  # schedule "eval"
        if self.total is not None and step == self.total:
            self.finish(step)

    def on_checkpoint(self, step: int, model) -> None:
        t0 = time.perf_counter()
        try:
            self._sync(int(step), model)
        finally:
            self.spent += time.perf_counter() - t0

    def on_step(self, step: int, model, evaluate: bool = False) -> None:
        """A plain loop's step (``quietlab.watch``), after the optimizer step and after its losses were
        handed over (``on_train_loss``): the gradient statistics of ``after_backward``; at ``evaluate``
        steps what ``on_eval`` does (with no eval metrics: the detectors read the training loss); then
        a probe when one is due."""
        self.after_backward(step, model)
        if evaluate:
            self.on_eval(step, model, {})
        self.after_step(step, model)

    def status(self) -> str:
        return self._status

    # --- work ------------------------------------------------------------------------------------
    def estimated_cost(self, features: Iterable[str], taps: Sequence[str] | None = None) -> float:
        """Estimated cost of a probe step fitting ``features`` (names) at ``taps`` (default: all), in training
        steps (``probe_cost``); 0 when no model was given to ``begin``."""
        names = list(features)
        return self._cost_of(names, len(taps) if taps else None) if self._cost_of is not None and names else 0.0

    def probe(self, step: int, model, features: Iterable[str] | None = None,
              taps: Sequence[str] | None = None) -> dict:
        """Capture the probe set, fit the probes of ``features`` (default: every feature) at ``taps`` (default:
        all), write their rows; returns the ProbeResults."""
        t0 = time.perf_counter()
        names = list(self.feature_set) if features is None else list(features)
        acts = self.taps.capture(model, device=self.device)
        if taps is not None:
            acts = {t: acts[t] for t in taps}
        results = fit_features(acts, {n: self.feature_set[n] for n in names}, self.train_idx, self.test_idx,
                               device=self.device, init=self._last_probes, **self.probe_kwargs)
        if self.warm_start:  # the next probe step of each feature starts from its latest probes
            self._last_probes = {**(self._last_probes or {}), **results}
        del acts
        rows = [r for name, res in results.items() for r in res.rows(step, name)]
        self.store.log_probes(rows, fit="online")
        for r in rows:  # kept beside the store: reading them back costs more than fitting, late in a run
            if r[1] in self._online_rows:
                self._online_rows[r[1]][r[:5]] = r
        cost = time.perf_counter() - t0
        self.store.log(step, {"monitor/probe_s": cost,
                              "monitor/probe_estimate": self.estimated_cost(names, taps)})
        self.probe_seconds += cost
        self.timings["probes"] = self.probe_seconds
        self.last_probe_step = step
        self._update_undecided()
        return results

    def finish(self, step: int | None = None) -> dict:
        """End of training: last detector pass, then transitions and feature classes into the store."""
        if self.losses is None:
            raise RuntimeError("Monitor.finish() before attach()")
        self.losses.finish()
        self._status = self.losses.status
        if not self.classify_at_end or self.store is None:
            return {}
        from .features import classify_run

        t0 = time.perf_counter()
        out = classify_run(self.store, features=list(self.feature_set), margin=self.margin)
        self._took("classify", t0)
        self.result = out
        return out

    # --- helpers ---------------------------------------------------------------------------------
    def _took(self, part: str, t0: float) -> float:
        now = time.perf_counter()
        self.timings[part] = self.timings.get(part, 0.0) + now - t0
        return now

    def _sync(self, step: int, model) -> None:
        """An evaluation or checkpoint: the loop has handed over every loss up to ``step``, so what the
        detectors say now depends on the losses alone; the plateau follower decides here, and probes
        the model at ``step`` itself when it has just seen a plateau begin."""
        if self.follower is None:
            return
        started = self.follower.sync(step, (self.losses.train, self.losses.eval))
        if started and step > self.last_probe_step and step not in self._probe_set and \
                self.follower.affords(self._undecided_cost):
            self._follow(step, model)

    def _follow(self, step: int, model) -> None:
        """A plateau probe: the features not yet decided, at the taps whose probes can change."""
        cost = self._undecided_cost
        self.probe(step, model, self._undecided, self._plateau_taps)
        self.follower.took(step, cost)

    def _update_undecided(self) -> None:
        """The features whose decodable step (``features.first_decodable``) the online probes so far have
        not settled (all of them before any probe), and what a probe of them costs."""
        from .features import beats_baseline, first_decodable, probe_curves

        self._undecided = []
        for name in self.feature_set:
            if name in self._decided:
                continue
            if name not in self._online_rows:  # read once (a resumed run's earlier probes), then kept
                self._online_rows[name] = {r[:5]: r for r in self.store.probes(name, fit="online")}
            curves = probe_curves(sorted(self._online_rows[name].values()), name)
            if curves is None or first_decodable(beats_baseline(curves, self.margin), confirmed_at_end=False) is None:
                self._undecided.append(name)
            else:
                self._decided.add(name)
        self._undecided_cost = self.estimated_cost(self._undecided, self._plateau_taps)

    def _make_probe_steps(self) -> list[int] | None:
        """The probe steps, from the configuration alone: the schedule, then (with ``max_overhead`` and
        the run's length known) its interior thinned evenly to the budget; step 0 and the last always."""
        s, total = self.schedule, self.total
        self.deferred = 0
        if s is None:
            steps = []
        elif s == "eval":
            self._probe_set = set()
            return None  # every evaluation
        elif s == "log":
            steps = log_schedule(total, self.per_decade)
        elif isinstance(s, int):
            end = total if total is not None else 10**9
            steps = sorted(set(range(0, end + 1, s)) | ({total} if total is not None else set()))
        else:
            steps = sorted({int(x) for x in s} | {0} | ({total} if total is not None else set()))
        self.follower = None
        if s is not None and total:
            inner = [x for x in steps if 0 < x < total]
            cost = self.estimated_probe_cost
            budget = None if self.max_overhead is None else max(0.0, self.max_overhead * total - 2 * cost)
            # ``plateau_share`` of the budget is held back for probes that follow a plateau
            kept, reserve = split_budget(inner, budget, cost, self.plateau_share)
            self.deferred = len(inner) - len(kept)
            steps = sorted({0, total, *kept})
            self.follower = PlateauFollower(total, reserve, self.plateau_per_decade, steps)
        self._probe_set = set(steps)
        return steps

    def _record_event(self, ev) -> None:
        step = int(round(ev.step))
        self.store.put("event", f"{step}:{ev.kind}",
                       {"step": step, "kind": ev.kind, "text": ev.text, "reported_at": int(round(ev.reported_at))},
                       step=step)


class LossWatch:
    """Plateaus and transitions of a run's loss while it trains: one :class:`OnlineDetector` on
    ``eval/loss``, fed at each evaluation, and one on the per-step training loss, fed as the loop hands
    it over (what the store held before a resume is read once, at the start). Every step draws fresh
    examples, so the training loss estimates the same population loss, sampled densely enough to
    resolve a plateau that evaluations only touch a few times; its transitions count while the
    eval/loss detector has seen none, and a transition both report (the onset of the later report inside
    the drop of the earlier) is recorded once. Events go to ``record``."""

    def __init__(self, store, record):
        self._record_event = record
        self.eval = OnlineDetector(log_x=True, direction="down", unit="step")
        self.train = OnlineDetector(log_x=True, direction="down", unit="step", every=0.1)
        self._train_seen = -1
        self._ends: list[float] = []  # where the drops of the transitions recorded so far end
        for s, v in zip(*store.series("eval/loss")):  # also what was logged before a resume
            if v is not None:
                self.eval.update(s, v)
        self.feed_train(*store.series("train/loss"))

    def update(self, step: int, eval_loss: float | None) -> None:
        if eval_loss is not None and math.isfinite(eval_loss):
            for ev in self.eval.update(step, eval_loss):
                self.record(ev, self.eval)

    def record(self, ev, detector: OnlineDetector) -> None:
        """Record an event, unless it is a transition whose onset lies inside a drop recorded already
        (the other detector's report of the same transition)."""
        if ev.kind == "transition":
            if any(ev.step <= end for end in self._ends):
                return
            seen = next((t for t in detector.transitions if t.onset == ev.step), None)
            self._ends.append(seen.end if seen is not None else ev.step)
        self._record_event(ev)

    def feed_train(self, steps, losses) -> None:
        """Per-step training losses, in step order (steps already seen are skipped)."""
        events = []
        for s, v in zip(steps, losses):
            if s > self._train_seen and v is not None:
                events += self.train.update(s, v)
                self._train_seen = s
        self._record_train(events)

    def finish(self) -> None:
        for ev in self.eval.finish():
            self.record(ev, self.eval)
        self._record_train(self.train.finish())

    @property
    def status(self) -> str:
        if not _reported_transition(self.eval) and _reported_transition(self.train):
            return self.train.status
        return self.eval.status or self.train.status

    def _record_train(self, events) -> None:
        if not _reported_transition(self.eval):
            for ev in events:
                if ev.kind == "transition":
                    self.record(ev, self.train)


def _reported_transition(detector: OnlineDetector) -> bool:
    return any(e.kind == "transition" for e in detector.events)


def probe_run(run_dir, features: Sequence[str] | None = None, probe_examples: int | None = None, device=None,
              steps: Sequence[int] | None = None, margin: float = 0.02, progress=None, warm_start: bool = True,
              preset: str | None = None, paper_split: tuple[int, int] | None = None, **probe_kwargs) -> dict:
    """Re-fit probes on a finished run's checkpoints (all of them by default), write their rows to the
    run's store as the ``checkpoint`` fit (kept apart from the Monitor's ``online`` rows), then detect the
    transition and classify the features (``features.classify_run``). The run folder's writer lock is
    held throughout (a run another process writes is refused at once); the settings are checked before
    anything is written.

    The protocol is the run's preset's (config.json); ``preset``, when given, must match it.
    ``quietlab``: the probe set is the monitor's (``probe_examples`` held-out examples, default 2,000, a
    fifth of them probe-test; same seed, so rows line up with those it logged), probes on standardised
    activations of every residual tap. ``paper``: the study's protocol (``paper_probes``): 10,000
    probe-train and 1,000 probe-test fresh held-out examples (``paper_split`` changes the two counts, for
    tests), C = 100 on the raw block outputs, the layer chosen per position by probe-train loss, and the
    same probes on a separately initialised random model stored as results ``paper_baseline``; the
    classification then also holds the study's (results ``feature_class_paper``).
    ``progress(done, total, step)`` is called after each checkpoint. Returns classify_run's dict plus
    ``steps`` (the checkpoints probed), ``features`` in the order asked and ``preset``.
    """
    from ..runs.folder import RunFolder
    from ..runs.lock import RunLock

    folder = RunFolder(run_dir)
    if not folder.path.is_dir():
        raise FileNotFoundError(f"no run folder at {folder.path}")
    with RunLock(folder.path):
        return _probe_run(folder, features, probe_examples, device, steps, margin, progress, warm_start, preset,
                          paper_split, probe_kwargs)


def _probe_run(folder, features, probe_examples, device, steps, margin, progress, warm_start, preset, paper_split,
               probe_kwargs) -> dict:
    from ..train.checkpoint import list_checkpoints, load_run
    from .features import classify_run
    from .paper_probes import (PROBE_TEST, PROBE_TRAIN, baseline_model, baseline_score, fit_paper_probes,
                               paper_probe_set)

    if not folder.exists():
        raise ValueError(f"{folder.path} is not a run folder (no config.json)")
    run_config = folder.config()
    protocol = check_preset(run_config.train.preset, preset, folder.path)
    paper = protocol == "paper"
    if paper and probe_examples is not None:
        raise ValueError("the paper protocol probes 10,000 probe-train and 1,000 probe-test examples; drop --examples")
    available = list_checkpoints(folder.path)
    if not available:
        raise ValueError(f"{folder.path} has no checkpoints to probe")
    todo = available if steps is None else [int(s) for s in steps]
    device = torch.device(device) if device is not None else torch.device("cpu")
    batch = names = tokens = feats = None
    train_idx = test_idx = results = None
    with folder.store() as store:
        for i, step in enumerate(todo):
            try:
                model, task, cfg, step = load_run(folder.path, step=step, device=device)
            except ValueError as exc:  # a corrupt or truncated checkpoint: the others still count
                warnings.warn(f"skipping {exc}", stacklevel=2)
                continue
            if batch is None:
                if paper:
                    batch, train_idx, test_idx = paper_probe_set(task, cfg.seed, *(paper_split or (PROBE_TRAIN, PROBE_TEST)))
                else:
                    batch = probe_set(task, probe_examples or 2000, cfg.seed)
                    train_idx, test_idx = split_probe_set(len(batch), 0.2, seed=cfg.seed)
                names = list(batch.features) if features is None else list(features)
                unknown = [n for n in names if n not in batch.features]
                if unknown:
                    raise ValueError(f"unknown feature(s) {', '.join(map(repr, unknown))} for {task.name}; "
                                     f"it has: {', '.join(batch.features)}")
                tokens, feats = trim_to_features(batch.tokens, {n: batch.features[n] for n in names})
            init = results if warm_start else None
            if paper:
                results = fit_paper_probes(model, batch, names, train_idx, test_idx, device=device, init=init)
            else:
                acts = capture_layers(model, tokens, device=device)
                results = fit_features(acts, feats, train_idx, test_idx, device=device, init=init, **probe_kwargs)
                del acts
            store.log_probes([r for n, res in results.items() for r in res.rows(step, n)], fit="checkpoint")
            del model
            if progress is not None:
                progress(i + 1, len(todo), step)
        if batch is None:
            raise ValueError(f"none of the checkpoints of {folder.path} could be read")
        if paper:  # the study's baseline: a separately initialised random model, probed the same way
            random_model = baseline_model(run_config.model, cfg.seed).to(device)
            for name, res in fit_paper_probes(random_model, batch, names, train_idx, test_idx, device=device).items():
                store.put("paper_baseline", name, baseline_score(res))
        out = classify_run(store, features=names, margin=margin)
    return {**out, "steps": todo, "feature_order": names, "preset": protocol}


def check_preset(run_preset: str, asked: str | None, where) -> str:
    """The protocol to probe or ablate a run with: its own preset; a different ``asked`` one is an error."""
    from ..train.loop import PRESETS

    if asked is not None and asked not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {asked!r}")
    if asked is not None and asked != run_preset:
        raise ValueError(f"--preset {asked} does not match the run's preset {run_preset} ({where}/config.json); "
                         f"give --preset {run_preset} or leave it out")
    return run_preset
