"""A run's losses replayed through the Monitor's online machinery, without a model or a GPU.

    from quietlab.monitor.replay import replay_run
    r = replay_run("runs/bfs11")       # which steps the Monitor would probe, and when it reports what
    print(r.lines())

The Monitor decides when to probe from the run's configuration and its losses alone (monitor.py,
follow.py), so those decisions can be re-enacted on a stored run: its ``train/loss`` at every logged
step and ``eval/loss`` at its evaluations are handed to a :class:`~quietlab.monitor.Monitor` in the
order the training loop hands them over (``train.loop.train``: after each update ``after_step``; at
each evaluation and checkpoint of the run's schedules, ``train.loop.run_schedules``, every pending
loss first, then ``on_eval`` / ``on_checkpoint``; in between, flushes at moments that the replay
draws at random, as the loop's clock would). A probe step is recorded instead of fitted, with the
features it would fit and its estimated cost (``monitor.probe_cost``, on the device the run trained
on). What the replay cannot know is what the probes would have found: every feature counts as
undecided (follow.py), so the plateau probes it lists are the fewest the real run takes.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .monitor import Monitor
from .taps import TransformerTaps


@dataclass
class Replay:
    """What the Monitor did on a replayed run. Steps are training steps; costs are in training steps
    (``probe_cost``); ``transition`` is the final offline reading of the run (``features.run_transition``:
    plateau_start, onset, end...) or None."""

    total: int
    probe_steps: list[int]
    scheduled: list[int]
    plateau_probes: list[int]
    probe_features: dict[int, list[str]]
    probe_taps: dict[int, list[str] | None]  # None: every tap
    probe_costs: dict[int, float]
    full_probe_cost: float
    events: list[dict]
    transition: dict | None
    curve: str | None
    reserve: float
    deferred: int
    probe_seconds: float = 0.0
    monitor_seconds: float = 0.0
    timings: dict = field(default_factory=dict)

    @property
    def inside_plateau(self) -> list[int]:
        """Probe steps from the offline plateau's start to the drop's onset."""
        t = self.transition
        return [] if t is None else [s for s in self.probe_steps if t["plateau_start"] <= s <= t["onset"]]

    @property
    def online_transition(self) -> dict | None:
        """The first online "transition" event (by the step it was reported at)."""
        found = [e for e in self.events if e["kind"] == "transition"]
        return min(found, key=lambda e: e["reported_at"]) if found else None

    @property
    def probe_overhead(self) -> float:
        """Estimated cost of all probe steps over the run's training compute."""
        return sum(self.probe_costs.values()) / self.total

    def summary(self) -> dict:
        t, online = self.transition, self.online_transition
        out = {"probe_steps": self.probe_steps, "scheduled": self.scheduled, "plateau_probes": self.plateau_probes,
               "inside_plateau": self.inside_plateau, "full_probe_cost_steps": self.full_probe_cost,
               "estimated_probe_overhead": self.probe_overhead, "reserve_steps": self.reserve,
               "events": self.events, "transition": t, "transition_curve": self.curve,
               "online_reported_at": online["reported_at"] if online else None,
               "online_onset": online["step"] if online else None}
        if t is not None and online is not None:
            out["reported_over_end"] = online["reported_at"] / t["end"]
        return out

    def lines(self) -> list[str]:
        """A few human-readable lines."""
        t, online = self.transition, self.online_transition
        out = [f"probes at {self.probe_steps} (scheduled {self.scheduled}, following the plateau {self.plateau_probes}); "
               f"estimated cost {self.probe_overhead:.1%} of training (a full probe step = "
               f"{self.full_probe_cost:.0f} training steps)"]
        if t is None:
            out.append(f"offline: no transition in {self.curve or 'the loss'}")
        else:
            out.append(f"offline ({self.curve}): plateau {t['plateau_start']:.0f} to onset {t['onset']:.0f}, "
                       f"drop ends {t['end']:.0f}; {len(self.inside_plateau)} probe steps inside the plateau: "
                       f"{self.inside_plateau}")
        for e in sorted(self.events, key=lambda e: e["reported_at"]):
            out.append(f"  event at step {e['reported_at']}: {e['text']}")
        if online is None:
            out.append("online: no transition reported")
        elif t is None:
            out.append(f"online: transition reported at step {online['reported_at']} (no offline transition to "
                       "compare with)")
        else:
            out.append(f"online: transition reported at step {online['reported_at']} = "
                       f"{online['reported_at'] / t['end']:.2f} x the drop's end")
        return out


class _ReplayMonitor(Monitor):
    """The Monitor with its probe steps recorded instead of fitted."""

    def probe(self, step: int, model, features=None, taps=None) -> dict:
        names = list(self.feature_set) if features is None else list(features)
        self.recorded[int(step)] = (names, None if taps is None else list(taps))
        self.last_probe_step = step
        self._update_undecided()  # no probe rows: every feature stays undecided
        return {}


class _NoModelTaps(TransformerTaps):
    """quietlab's Transformer's taps on probe inputs of ``n`` examples, never run (no attention patterns)."""

    def __init__(self, n: int):
        super().__init__(None, None)
        self._n = n

    @property
    def n(self) -> int:
        return self._n

    def attention_patterns(self, model) -> dict:
        return {}


def replay_losses(cfg, train_steps, train_losses, eval_losses: dict[int, float], *, device_type: str = "cpu",
                  monitor_options: dict | None = None, flush_seed: int | None = 0, flush_rate: float = 0.01) -> Replay:
    """Replay a run of TrainConfig ``cfg`` (``steps`` set): ``train_losses`` at ``train_steps``, ``eval_losses``
    {step: loss} at its evaluations, probe costs estimated for ``device_type`` ("cpu" or "cuda": where the
    run trained). ``monitor_options``: the Monitor's keyword arguments to try (default: its defaults).
    Besides the flushes before every evaluation and checkpoint, the losses are handed over at random
    steps (each with probability ``flush_rate``, drawn with ``flush_seed``; None: never)."""
    from ..runs.store import RunStore
    from ..train.loop import run_schedules
    from .features import run_transition

    total = int(cfg.steps)
    task = cfg.build_task()
    model = _cost_model(cfg, task)
    replaying = _ReplayMonitor(**{"device": device_type, **(monitor_options or {})})
    replaying.recorded = {}
    evals, ckpts = (set(s) for s in run_schedules(cfg, total))
    rng = np.random.default_rng(flush_seed) if flush_seed is not None else None
    train = dict(zip((int(s) for s in train_steps), (float(v) for v in train_losses)))
    with tempfile.TemporaryDirectory(prefix="quietlab_replay_") as tmp, RunStore(Path(tmp) / "metrics.sqlite") as store:
        _, _, features = replaying.probe_inputs(task, cfg.seed)
        replaying.begin(store, _NoModelTaps(replaying.probe_examples), features, total=total, seed=cfg.seed,
                        model=model, train_batch_size=cfg.batch_size, train_seq_len=task.seq_len)
        pending: list[tuple[int, float]] = []

        def flush() -> None:
            if pending:
                replaying.on_train_loss([s for s, _ in pending], [v for _, v in pending])
                pending.clear()

        def evaluate(step: int) -> None:
            flush()
            metrics = {"eval/loss": eval_losses[step]} if step in eval_losses else {}
            if metrics:
                store.log(step, metrics)
            replaying.on_eval(step, model, metrics)

        def checkpoint(step: int) -> None:
            flush()
            replaying.on_checkpoint(step, model)

        evaluate(0)
        checkpoint(0)
        replaying.after_step(0, model)
        for step in range(1, total + 1):
            if step in train:
                store.log(step, {"train/loss": train[step]})
                pending.append((step, train[step]))
            replaying.after_step(step, model)
            if step in evals:
                evaluate(step)
            if step in ckpts:
                checkpoint(step)
            if rng is not None and rng.random() < flush_rate:
                flush()
        flush()
        transition, curve = run_transition(store)
        events = sorted(store.results("event").values(), key=lambda e: (e["reported_at"], e["step"]))
    follower = replaying.follower
    steps = sorted(replaying.recorded)
    return Replay(total=total, probe_steps=steps, scheduled=[s for s in steps if s in replaying._probe_set],
                  plateau_probes=sorted(follower.steps) if follower else [],
                  probe_features={s: replaying.recorded[s][0] for s in steps},
                  probe_taps={s: replaying.recorded[s][1] for s in steps},
                  probe_costs={s: replaying.estimated_cost(*replaying.recorded[s]) for s in steps},
                  full_probe_cost=replaying.estimated_probe_cost, events=events, transition=transition,
                  curve=curve, reserve=follower.reserve if follower else 0.0, deferred=replaying.deferred,
                  monitor_seconds=replaying.spent, timings=dict(replaying.timings))


def _cost_model(cfg, task):
    """The run's model, freshly initialised on the CPU: only its shapes matter (``probe_cost``)."""
    from ..models.transformer import Transformer

    return Transformer(cfg.model_config(task))


def replay_run(run_dir, *, monitor_options: dict | None = None, flush_seed: int | None = 0) -> Replay:
    """Replay the stored run in ``run_dir`` (its config.json and metrics.sqlite, read only)."""
    from ..runs.store import RunStore
    from ..train.loop import TrainConfig

    run_dir = Path(run_dir)
    saved = json.loads((run_dir / "config.json").read_text())
    resolved = saved.get("resolved", {})
    cfg = TrainConfig.from_dict(saved)
    cfg.steps = int(resolved.get("steps") or saved["steps"])
    with RunStore(run_dir / "metrics.sqlite", readonly=True) as store:
        steps, losses = store.series("train/loss")
        eval_steps, eval_losses = store.series("eval/loss")
    evals = {int(s): float(v) for s, v in zip(eval_steps, eval_losses) if v is not None}
    return replay_losses(cfg, steps, losses, evals, device_type=str(resolved.get("device", "cpu")).split(":")[0],
                         monitor_options=monitor_options, flush_seed=flush_seed)
