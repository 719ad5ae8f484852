"""Probing that follows the plateau (monitor/follow.py), driven through the Monitor by replaying a loss
curve the way the training loop hands it over (monitor/replay.py)."""

from __future__ import annotations

import numpy as np
import pytest

from quietlab.monitor.follow import MIN_GAP, PlateauFollower, dense_grid, split_budget
from quietlab.monitor.monitor import Monitor
from quietlab.monitor.replay import replay_losses
from quietlab.runs.store import RunStore
from quietlab.tasks.base import Feature
from quietlab.train.loop import TrainConfig, run_schedules

TOTAL = 8000
CFG = TrainConfig(task="bfs", task_sizes={"n_nodes": 6}, d_model=32, n_layers=2, n_heads=2, batch_size=64,
                  steps=TOTAL, device="cpu")
ONSET, WIDTH = 1500.0, 0.04  # the drop: a logistic in log10(step), onset and end 2 widths either side of its centre
END = 10 ** (np.log10(ONSET) + 4 * WIDTH)
RAMP_END = 10 ** (2.3 + 2 * 0.12)  # where the initial fall has done 88%, its steepest tangent's end


def logistic(z):
    return 1.0 / (1.0 + np.exp(-z))


def bfs_shaped(drop: bool = True, seed: int = 0):
    """A training loss shaped like the bfs-11 runs of issue 16: a fast fall from 2.7 onto a plateau near
    1.2 that slopes down a little, then (``drop``) an abrupt drop to 0.05 and a slowly falling tail;
    multiplicative noise at the levels those runs' train/loss shows (1% in the fall, 2.5% on the plateau,
    30% on the tail)."""
    x = np.arange(1, TOTAL + 1, dtype=float)
    u = np.log10(x)
    y = 1.2 + 1.5 * (1 - logistic((u - 2.3) / 0.12)) - 0.25 * np.clip(u - 2.7, 0, None)
    noise = np.where(x < 300, 0.01, 0.025)
    if drop:
        fall = logistic((u - (np.log10(ONSET) + 2 * WIDTH)) / WIDTH)
        y = y * (1 - fall) + fall * 0.05 * (x / END) ** -1.5
        noise = noise * (1 - fall) + fall * 0.3
    return x, y * np.exp(noise * np.random.default_rng(seed).standard_normal(x.size))


def replay(y, flush_seed=0, **options):
    x = np.arange(1, TOTAL + 1)
    evals = {s: float(y[s - 1]) for s in run_schedules(CFG, TOTAL)[0] if s > 0}
    return replay_losses(CFG, x, y, evals, monitor_options=options or None, flush_seed=flush_seed)


def test_a_plateau_gets_several_probes_and_the_drop_is_reported_soon_after_it_ends():
    x, y = bfs_shaped()
    r = replay(y)
    inside = [s for s in r.probe_steps if RAMP_END <= s <= ONSET]
    assert len(inside) >= 5 and set(inside) <= set(r.plateau_probes)
    assert r.probe_overhead <= 0.06 + 1e-9  # the Monitor's default budget, step 0 and the last step included
    transitions = [e for e in r.events if e["kind"] == "transition"]
    first = min(transitions, key=lambda e: e["reported_at"])
    assert abs(np.log10(first["step"] / ONSET)) < 0.05
    assert END < first["reported_at"] <= 1.25 * END
    # the losses handed over at other moments: the same probe steps and events
    again = replay(y, flush_seed=1)
    assert again.probe_steps == r.probe_steps and again.events == r.events


def test_without_the_drop_no_transition_and_no_more_than_the_budget():
    _, y = bfs_shaped(drop=False)
    r = replay(y)
    assert [e for e in r.events if e["kind"] == "transition"] == []
    assert r.probe_overhead <= 0.06 + 1e-9


class _Detector:
    def __init__(self, plateau):
        self.plateau = plateau


def test_no_plateau_no_extra_probes():
    """A follower whose detectors never see a plateau takes nothing from its reserve; one that sees a
    plateau too short against the run does not follow it either."""
    f = PlateauFollower(TOTAL, 1000.0, 24, [0, TOTAL])
    assert f.sync(100, [_Detector(None), _Detector(None)]) is False
    assert not any(f.due(s, 10.0) for s in range(1, TOTAL))
    from quietlab.monitor.transitions import Plateau

    short = Plateau(start=90, end=100, level=1.0, length=np.log10(100 / 90))
    assert f.sync(100, [_Detector(short)]) is False and not f.active
    first_steps = Plateau(start=2, end=20, level=1.0, length=1.0)  # a decade, but fewer steps than MIN_GAP
    assert f.sync(20, [_Detector(first_steps)]) is False and not f.active
    long = Plateau(start=50, end=100, level=1.0, length=np.log10(2))
    assert f.sync(100, [_Detector(None), _Detector(long)]) is True  # just started: a probe due at step 100
    due = [s for s in range(101, TOTAL) if f.due(s, 300.0) and not f.took(s, 300.0)]
    assert len(due) == 3 and f.used == 900.0  # the reserve covers three probes of this cost
    assert all(b - a >= MIN_GAP * TOTAL for a, b in zip(due, due[1:]))


def test_budget_split_and_grid():
    inner = list(range(1, 35))
    kept, reserve = split_budget(inner, 100.0, 10.0, 0.5)
    assert len(kept) == 5 and reserve == 50.0 and kept == sorted(kept) and set(kept) <= set(inner)
    kept, reserve = split_budget(inner[:3], 100.0, 10.0, 0.5)  # the schedule uses less than its half
    assert kept == inner[:3] and reserve == 70.0
    assert split_budget(inner, None, 10.0, 0.5) == (inner, 0.0)
    assert split_budget(inner, 0.0, 10.0, 0.5) == ([], 0.0)
    grid = dense_grid(100_000, 24)
    assert grid[0] == 1 and grid[-1] < 100_000
    gaps = np.diff(grid)
    assert np.all(gaps >= MIN_GAP * 100_000)
    late = np.array([s for s in grid if s > 10_000])
    assert np.all(late[1:] / late[:-1] < 1.11)  # log-spaced where the log grid is sparser than the gap


def test_monitor_holds_back_the_plateau_share_of_its_budget():
    m = Monitor(max_overhead=0.07, plateau_share=0.8)
    m.total, m.estimated_probe_cost = 20_000, 217.0  # a probe step of the bfs-11 model on a GPU
    steps = m._make_probe_steps()
    optional = 0.07 * 20_000 - 2 * 217.0
    assert steps == [0, 20_000]  # a fifth of the optional budget buys no scheduled probe step
    assert m.follower.reserve == pytest.approx(optional)
    m = Monitor(max_overhead=0.07, plateau_share=0.5)
    m.total, m.estimated_probe_cost = 20_000, 31.0
    steps = m._make_probe_steps()
    base = int(0.5 * (0.07 * 20_000 - 62) / 31.0)
    assert len(steps) == base + 2
    assert m.follower.reserve == pytest.approx(0.07 * 20_000 - 62 - base * 31.0)
    with pytest.raises(ValueError, match="plateau_share"):
        Monitor(plateau_share=1.5)


def test_a_plateau_probe_fits_only_the_features_not_yet_decided(tmp_path):
    """Decided: decodable (95% interval above the random-init one by the margin) at two probe steps in a
    row. "a" is; "b" beat its baseline once and then not; "c" only at the latest probe (a next one may
    still fail)."""

    def rows(feature, los):
        out = []
        for step, lo in zip((0, 100, 200), los):
            out += [(step, feature, "blocks.0.hook_resid_post", 3, "acc", lo + 0.05),
                    (step, feature, "blocks.0.hook_resid_post", 3, "acc_lo", lo),
                    (step, feature, "blocks.0.hook_resid_post", 3, "acc_hi", lo + 0.1)]
        return out

    feature = Feature(np.zeros((4, 5, 1)), np.ones((4, 5), dtype=bool), "binary")
    with RunStore(tmp_path / "m.sqlite") as store:
        store.log_probes(rows("a", (0.5, 0.7, 0.7)) + rows("b", (0.5, 0.7, 0.55)) + rows("c", (0.5, 0.5, 0.7)))
        m = Monitor()
        m.store, m.feature_set = store, {n: feature for n in "abcd"}
        m._cost_of = lambda feats, n_taps: 10.0 * len(feats)
        m._update_undecided()
    assert m._undecided == ["b", "c", "d"] and m._undecided_cost == 30.0  # "d": never probed yet


def test_the_real_bfs_run_with_the_shortest_plateau_gets_five_probes_in_it():
    """Seed 1 of issue 16's bfs-11 runs (tests/data/bfs11_seeds012.npz; trained on an H200, where a probe
    step is estimated at 217 training steps): replayed through the Monitor at its defaults, at least five
    probe steps fall inside the plateau as the whole train/loss places it, even if no feature is ever
    decided (the replay cannot know what probes would find: the fewest plateau probes a run takes),
    and the transition is announced by 1.25 x the drop's end."""
    from pathlib import Path

    from quietlab.monitor.transitions import detect_transitions

    data = np.load(Path(__file__).parent / "data" / "bfs11_seeds012.npz")
    cfg = TrainConfig(task="bfs", task_sizes={"n_nodes": 11}, d_model=256, n_layers=4, n_heads=4, lr=1e-4,
                      batch_size=64, steps=20_000, seed=1, compile=True)
    assert run_schedules(cfg, 20_000)[0] == data["seed1_eval_steps"].tolist()
    y = data["seed1_train_loss"].astype(float)
    x = np.arange(1, y.size + 1)
    evals = dict(zip(data["seed1_eval_steps"].tolist(), data["seed1_eval_loss"].astype(float).tolist()))
    r = replay_losses(cfg, x, y, evals, device_type="cuda")
    (t,) = detect_transitions(x, y)
    assert r.transition["onset"] == t.onset  # the replay's offline reading is the whole curve's
    assert len([s for s in r.probe_steps if t.plateau_start <= s <= t.onset]) >= 5
    assert r.probe_overhead <= 0.06 + 1e-9
    assert r.online_transition["reported_at"] <= 1.25 * t.end


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_gpu_probe_of_some_of_a_solver_familys_features_costs_the_whole_family(tmp_path, device):
    """On a GPU a solver family is one batch, whose cost is its launches: the budget counts a probe of
    some of its features as one of all of them; on a CPU each feature costs its own share."""
    import torch

    from quietlab.models import Transformer, TransformerConfig
    from quietlab.monitor.taps import TransformerTaps

    n, T = 40, 6
    rng = np.random.default_rng(0)
    binary = lambda: Feature(rng.integers(0, 2, (n, T, 1)), np.ones((n, T), dtype=bool), "binary")  # noqa: E731
    features = {"a": binary(), "b": binary(),
                "c": Feature(rng.integers(0, 3, (n, T, 1)), np.ones((n, T), dtype=bool), "categorical", n_classes=3)}
    model = Transformer(TransformerConfig(vocab_size=8, seq_len=T, d_model=16, n_layers=2, n_heads=2))
    tokens = torch.as_tensor(rng.integers(0, 8, (n, T)))
    with RunStore(tmp_path / "m.sqlite") as store:
        m = Monitor(device=device)
        m.begin(store, TransformerTaps(tokens, tokens[:4]), features, total=1000, model=model)
        a, ab, c, every = (m.estimated_cost(f) for f in (["a"], ["a", "b"], ["c"], ["a", "b", "c"]))
    assert 0 < a <= ab < every and 0 < c < every
    assert (a == ab) == (device == "cuda")
