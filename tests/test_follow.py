"""Probing that follows the plateau (monitor/follow.py), on the real bfs-11 run's loss replayed."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from quietlab.monitor.follow import PlateauFollower, dense_grid, split_budget
from quietlab.monitor.monitor import LossWatch, Monitor, log_schedule
from quietlab.runs.store import RunStore

TOTAL = 20_000
PLATEAU = (591, 1774)  # the bfs-11 run's plateau: from its start to the drop's onset (issue 16)


def bfs_losses():
    data = json.load(gzip.open(Path(__file__).parent / "data" / "bfs11_run.json.gz", "rt"))
    return data["train/loss"], data["eval/loss"]


def replay(tmp_path, name, chunk_seed, reserve):
    """The training loop as the Monitor sees it: losses handed over in chunks of random size (the
    loop flushes on a clock), all of them before every evaluation; returns the steps probed."""
    (steps, losses), (eval_steps, eval_losses) = bfs_losses()
    base = log_schedule(TOTAL, 8)
    follower = PlateauFollower(TOTAL, reserve, 16, base)
    rng = np.random.default_rng(chunk_seed)
    probed, pending, i = [], [], 0
    evals = dict(zip(eval_steps, eval_losses))
    with RunStore(tmp_path / f"{name}.sqlite") as store:
        watch = LossWatch(store, lambda ev: None)
        for step in range(1, TOTAL + 1):
            if i < len(steps) and steps[i] == step:
                pending.append((step, losses[i]))
                i += 1
            if step in base or follower.due(step):
                probed.append(step)
                follower.took(step)
            if step in evals or rng.random() < 0.01:  # a sync point, or a flush the clock chose
                watch.feed_train([s for s, _ in pending], [v for _, v in pending])
                pending.clear()
            if step in evals:
                watch.update(step, evals[step])
                follower.sync(step, watch.train.events + watch.eval.events)
    return probed, follower


def test_the_plateau_of_the_real_bfs_run_gets_several_probes_and_the_same_ones_every_time(tmp_path):
    base = log_schedule(TOTAL, 8)
    inside_base = [s for s in base if PLATEAU[0] <= s <= PLATEAU[1]]
    probed, follower = replay(tmp_path, "a", chunk_seed=0, reserve=12)
    inside = [s for s in probed if PLATEAU[0] <= s <= PLATEAU[1]]
    assert len(inside) >= 5 and len(inside) > len(inside_base)
    assert follower.used <= 12 and len(probed) == len(base) - 1 + follower.used  # step 0 is before the loop
    # the losses handed over at other moments: the same probe steps
    again, _ = replay(tmp_path, "b", chunk_seed=1, reserve=12)
    assert again == probed


def test_no_plateau_no_extra_probes():
    """A follower that never hears of a plateau takes nothing from its reserve."""
    f = PlateauFollower(TOTAL, 10, 16, [0, TOTAL])
    f.sync(100, [])
    assert not any(f.due(s) for s in range(1, TOTAL))


def test_budget_split_and_grid():
    inner = list(range(1, 35))
    kept, reserve = split_budget(inner, 10, 0.5)
    assert len(kept) == 5 and reserve == 5 and kept == sorted(kept) and set(kept) <= set(inner)
    kept, reserve = split_budget(inner[:3], 10, 0.5)  # the schedule uses less than its half
    assert kept == inner[:3] and reserve == 7
    assert split_budget(inner, None, 0.5) == (inner, 0)
    assert split_budget(inner, 0, 0.5) == ([], 0)
    grid = dense_grid(1000, 10)
    assert grid[0] == 1 and grid[-1] < 1000
    ratios = np.array(grid[10:])[1:] / np.array(grid[10:])[:-1]
    assert np.all(ratios < 1.3)


def test_monitor_holds_back_the_plateau_share_of_its_budget():
    m = Monitor(max_overhead=0.05, plateau_share=0.5)
    m.total, m.estimated_probe_cost = 20_000, 31.0  # the bfs-11 model's estimate on a CPU
    steps = m._make_probe_steps()
    keep = int(0.05 * 20_000 / 31.0) - 2
    assert len(steps) - 2 + m.follower.reserve == keep
    assert m.follower.reserve == round(0.5 * keep)
    with pytest.raises(ValueError, match="plateau_share"):
        Monitor(plateau_share=1.5)
