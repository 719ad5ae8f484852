"""The run engine (issue 12): teacher-forced exact match, bounded schedules, a deterministic monitor,
the run-folder lock, read-only readers and one-line errors."""

import copy

import numpy as np
import pytest
import torch

from quietlab.models import Transformer, TransformerConfig
from quietlab.tasks import get_task
from quietlab.train import load_run
from quietlab.train.decode import greedy_decode
from quietlab.train.evaluate import as_tensors, teacher_forced_exact

pytestmark = pytest.mark.usefixtures("one_thread")


# --- exact match by one teacher-forced pass --------------------------------------------------------
def greedy_is_correct(model, task, batch) -> np.ndarray:
    """The oracle: decode greedily (KV cache) and let the task's own solver judge each row."""
    tokens, mask, start = as_tensors(batch, "cpu")
    with torch.no_grad():
        generated = greedy_decode(model, tokens, start)
    return np.array([task.is_correct(row) for row in generated.numpy()])


def teacher_forced(model, batch) -> np.ndarray:
    tokens, mask, _ = as_tensors(batch, "cpu")
    with torch.no_grad():
        return teacher_forced_exact(model(tokens), tokens, mask).numpy()


def noisy(model, scale, seed):
    g = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.std().clamp(min=1e-3))
    return out


def test_teacher_forced_exact_match_is_greedy_decodings_on_trained_and_damaged_models(trained_addition):
    model, task, _, _ = load_run(trained_addition[0])
    batch = task.sample(300, seed=5, split="test")
    rates = []
    for m in [model] + [noisy(model, s, i) for i, s in enumerate((0.05, 0.1, 0.2, 0.4))]:
        m.eval()
        tf, oracle = teacher_forced(m, batch), greedy_is_correct(m, task, batch)
        assert np.array_equal(tf, oracle)
        rates.append(oracle.mean())
    assert rates[0] == 1.0 and any(0.1 < r < 0.9 for r in rates)  # some models right on only part


@pytest.mark.parametrize("name,sizes", [("bfs", {"n_nodes": 5}), ("addition", {"n_bits": 4}),
                                        ("max_subarray", {"length": 6})])
def test_teacher_forced_exact_match_is_greedy_decodings_on_random_models(name, sizes):
    task = get_task(name, **sizes)
    batch = task.sample(200, seed=2, split="test")
    for seed in range(3):
        torch.manual_seed(seed)
        m = Transformer(TransformerConfig(vocab_size=len(task.vocab), seq_len=task.seq_len, d_model=16,
                                          n_layers=1, n_heads=2)).eval()
        assert np.array_equal(teacher_forced(m, batch), greedy_is_correct(m, task, batch))


def test_answers_of_different_lengths_follow_the_tasks_padding_rule():
    """A model that knows each answer and then keeps talking after its end token is right (is_correct
    cuts at the first padding token); one that ends the answer early, or never ends it, is wrong."""
    task = get_task("bfs", n_nodes=6)
    batch = task.sample(60, seed=3, split="test")
    tokens, mask, start = as_tensors(batch, "cpu")
    answer = torch.zeros_like(mask)
    answer[:, 1:] = mask[:, :-1]
    eos = answer & (tokens == 0)  # the end token closes every answer here

    class Scripted(torch.nn.Module):
        """Row i predicts ``script[i, t+1]`` at position t, whatever the prefix (no cache: whole rows)."""

        def __init__(self, script):
            super().__init__()
            self.script = script
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, edit=None, cache=None):
            nxt = torch.cat([self.script[:, 1:], self.script[:, -1:]], 1)[:, : x.shape[1]]
            return torch.full((*x.shape, len(task.vocab)), -5.0).scatter_(2, nxt[..., None], 5.0)

    after_end = tokens.clone()
    after_end[~answer & (torch.arange(tokens.shape[1]) > start[:, None])] = 3  # garbage after the end token
    early_end = tokens.clone()
    early_end[torch.arange(len(tokens)), start + 1] = 0  # ends after one answer token
    no_end = tokens.clone()
    no_end[eos] = 3
    for script, right in ((after_end, True), (early_end, False), (no_end, False)):
        model = Scripted(script)
        tf = teacher_forced_exact(model(tokens), tokens, mask).numpy()
        oracle = np.array([task.is_correct(row) for row in greedy_decode(model, tokens, start, use_cache=False).numpy()])
        assert np.array_equal(tf, oracle) and oracle.all() == right and oracle.any() == right


# --- a deterministic monitor ----------------------------------------------------------------------
def monitored(tmp_path, name, **monitor_kw):
    from quietlab.monitor import Monitor
    from quietlab.runs import RunFolder
    from quietlab.train import TrainConfig, train

    cfg = TrainConfig(task="addition", task_sizes={"n_bits": 4}, d_model=16, n_layers=2, n_heads=2, lr=1e-2,
                      batch_size=16, steps=120, eval_examples=32, data_chunk=5, device="cpu")
    monitor = Monitor(probe_examples=100, **monitor_kw)
    train(cfg, tmp_path / name, hooks=monitor, progress=False)
    with RunFolder(tmp_path / name).store() as store:
        rows = store.probes(metric="acc")
        classes = {k: (v["class"], v["decodable_step"]) for k, v in store.results("feature_class").items()}
    return monitor, rows, classes


def test_same_seed_same_probes_and_classes_even_on_a_slowed_machine(tmp_path, monkeypatch):
    import time

    first, rows1, classes1 = monitored(tmp_path, "a", max_overhead=0.5)
    _, rows2, classes2 = monitored(tmp_path, "b", max_overhead=0.5)
    clock = {"t": time.perf_counter()}

    def slow_clock():  # every reading a second later than the last: a machine a thousand times slower
        clock["t"] += 1.0
        return clock["t"]

    monkeypatch.setattr(time, "perf_counter", slow_clock)
    slowed, rows3, classes3 = monitored(tmp_path, "c", max_overhead=0.5)
    monkeypatch.undo()
    assert 0 < first.deferred and 2 < len(first.probe_steps)  # the budget thinned the schedule, not to nothing
    assert sorted({r[0] for r in rows1}) == first.probe_steps == slowed.probe_steps
    assert rows1 == rows2 == rows3 and classes1 == classes2 == classes3


def test_probe_budget_bounds_the_estimated_cost():
    from quietlab.monitor import Monitor
    from quietlab.monitor.monitor import log_schedule

    for total, cost, budget in [(600, 13.0, 0.05), (20_000, 209.0, 0.05), (100, 1.0, 0.05), (600, 40.0, 0.05)]:
        m = Monitor(max_overhead=budget)
        m.total, m.estimated_probe_cost = total, cost
        steps = m._make_probe_steps()
        assert steps[0] == 0 and steps[-1] == total and set(steps) <= set(log_schedule(total, 8))
        assert len(steps) * cost <= budget * total or len(steps) == 2
        assert m.deferred == len(log_schedule(total, 8)) - len(steps)
