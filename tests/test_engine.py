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
