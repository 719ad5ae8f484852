"""The paper preset's model and recipe options against float64 / hand-computed references
(PAPER_PROTOCOL §2-3)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy import stats

from quietlab.models.attention import apply_rope_interleaved, rope_cache
from quietlab.models.paper import paper_config, paper_d_mlp
from quietlab.models.transformer import Transformer, TransformerConfig
from quietlab.tasks import get_task
from quietlab.train.budget import mean_context, paper_flops_per_token, paper_steps_for_flops
from quietlab.train.schedule import paper_lr_at, param_groups


def test_swiglu_hidden_sizes_are_the_papers():
    assert [paper_d_mlp(2**k) for k in range(3, 10)] == [22, 42, 86, 170, 342, 682, 1366]


def test_torch_default_init_embedding_normal_linear_uniform():
    torch.manual_seed(0)
    model = Transformer(paper_config(28, 124, 64, 2))
    embed = model.embed.weight.detach().double().flatten().numpy()
    assert stats.kstest(embed, "norm").pvalue > 1e-3  # N(0, 1)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 * 5 + 1
    for linear in linears:
        w = linear.weight.detach().double().flatten().numpy()
        bound = 1 / math.sqrt(linear.in_features)
        assert np.abs(w).max() <= bound
        assert stats.kstest(w, "uniform", args=(-bound, 2 * bound)).pvalue > 1e-3
    for name, p in model.named_parameters():
        if p.ndim == 1:
            assert torch.equal(p, torch.ones_like(p)), name


def test_rmsnorm_eps_is_the_papers():
    torch.manual_seed(1)
    model = Transformer(paper_config(5, 52, 32, 1))
    norm = model.blocks[0].attn_norm
    x = torch.randn(3, 4, 32) * 1e-3  # small enough for eps to matter
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        got = norm(x)
    xd, g = x.double(), norm.weight.detach().double()
    want = xd / torch.sqrt((xd**2).mean(-1, keepdim=True) + 1e-5) * g
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)


def test_interleaved_rope_rotates_adjacent_pairs():
    torch.manual_seed(2)
    T, d = 7, 16
    x = torch.randn(1, 2, T, d)
    cos, sin = rope_cache(T, d)
    got = apply_rope_interleaved(x, cos, sin).double().numpy()
    xd = x.double().numpy()
    z = xd[..., 0::2] + 1j * xd[..., 1::2]  # pair i = (x_2i, x_2i+1) as a complex number
    angle = np.arange(T)[:, None] * 10000.0 ** (-np.arange(0, d, 2) / d)
    rotated = z * np.exp(1j * angle)
    np.testing.assert_allclose(got[..., 0::2], rotated.real, atol=1e-5)
    np.testing.assert_allclose(got[..., 1::2], rotated.imag, atol=1e-5)


def test_interleaved_rope_is_halves_rope_with_q_k_dims_permuted():
    """So the two pairings differ only by a relabelling of q and k's coordinates in each head."""
    torch.manual_seed(3)
    halves = Transformer(TransformerConfig(vocab_size=7, seq_len=12, d_model=32, n_layers=2, n_heads=4))
    interleaved = Transformer(TransformerConfig(vocab_size=7, seq_len=12, d_model=32, n_layers=2, n_heads=4,
                                                rope_pairs="interleaved"))
    state = halves.state_dict()
    d, dh = 32, 8
    order = []  # interleaved dim 2i <- halves dim i, 2i+1 <- i + dh/2, in every q and k head
    for head in range(2 * 4):
        base = head * dh
        order += [base + i + half * dh // 2 for i in range(dh // 2) for half in (0, 1)]
    order += list(range(2 * d, 3 * d))  # v unchanged
    for name in list(state):
        if name.endswith("attn.qkv.weight"):
            state[name] = state[name][order]
    interleaved.load_state_dict(state)
    tokens = torch.randint(0, 7, (3, 12))
    torch.testing.assert_close(interleaved(tokens), halves(tokens), rtol=1e-5, atol=1e-5)


def test_paper_flops_and_steps_by_hand():
    assert paper_flops_per_token(4, 128, 52) == 12 * 4 * 128 * 128 + 4 * 52 * 128 == 813_056
    want = math.ceil(Fraction(10**12, 6 * 813_056) / (64 * 52))
    assert want == 62 and paper_steps_for_flops(1e12, 4, 128, 52, 64) == want
    assert paper_steps_for_flops(1.0, 4, 128, 52, 64) == 1  # the paper rounds up
    with pytest.raises(ValueError):
        paper_steps_for_flops(0.0, 4, 128, 52, 64)


def test_mean_context_counts_tokens_through_the_first_end_token():
    assert mean_context(get_task("addition", preset="paper").sample(50)) == 52.0
    task = get_task("bfs", preset="paper")
    batch = task.sample(4000, seed=1)
    by_text = np.mean([len(task.decode(row)) + 1 for row in batch.tokens])
    assert mean_context(batch) == pytest.approx(by_text)
    # 1 + 2·edges + 1 + 11 + 1 with the exact mean of 27.562 edges
    assert abs(mean_context(batch) - (14 + 2 * 27.562)) < 4.5 * 2 * 3.75 / math.sqrt(4000)


def test_weight_decay_on_every_parameter():
    model = Transformer(paper_config(5, 52, 16, 1))
    decayed, other = param_groups(model, 0.1, decay_all=True)
    assert len(decayed["params"]) == len(list(model.parameters())) and not other["params"]
    decayed, other = param_groups(model, 0.1)
    assert other["params"]  # quietlab's default keeps norms and embeddings undecayed


@pytest.mark.parametrize("total", [7, 100, 1234])
def test_paper_lr_schedule_matches_torch_linear_then_cosine(total):
    lr, w = 3e-3, int(0.1 * total)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - w, eta_min=0.1 * lr)
    if w:
        warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.01, total_iters=w)
        sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cosine], milestones=[w])
    else:
        sched = cosine
    for step in range(total):
        assert paper_lr_at(step, total, lr) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9), step
        opt.step()
        sched.step()
    assert paper_lr_at(0, 100, 1.0) == 0.01 and paper_lr_at(10, 100, 1.0) == 1.0
    assert paper_lr_at(55, 100, 1.0) == pytest.approx(0.55)
