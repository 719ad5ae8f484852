"""Packed training: N models trained as one batched computation equal each model trained alone."""

import copy
import shutil

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from quietlab.runs import RunFolder
from quietlab.train import TrainConfig, load_run, lr_at, train
from quietlab.train.packed import PackedAdamW, PackedModels, PackedStep, pack_key, train_packed
from quietlab.train.schedule import make_optimizer, param_groups, set_lr
from quietlab.train.threads import set_cpu_threads
from run_fixtures import store_series, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


class TinyMLP(nn.Module):  # not a Transformer: the packing is generic over modules
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(7, 8)
        self.fc = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.out = nn.Linear(16, 7, bias=False)

    def forward(self, x):
        return self.out(self.norm(torch.relu(self.fc(self.embed(x)))))


def mlp_loss(model, x, y):
    return F.cross_entropy(model(x), y)


def test_the_compiled_update_is_one_graph_and_equals_the_eager_one():
    """PackedStep(compile=True) compiles clip + AdamW with fullgraph=True; traced here without Inductor's code
    generation (aot_eager), it must take the same steps as the eager update (float64)."""
    lrs, clips = [1e-2, 3e-2, 1e-3], [1.0, 0.02, 1.0]
    steps = []
    for compiled in (False, True):
        models = []
        for seed in range(3):
            torch.manual_seed(seed)
            models.append(TinyMLP().double())
        packed = PackedModels(models)
        step = PackedStep(packed, PackedAdamW(packed, lrs, 0.1, betas=(0.9, 0.95)), mlp_loss, clips)
        if compiled:
            step._update = torch.compile(step.update, backend="aot_eager", fullgraph=True, dynamic=False)
        steps.append(step)
    start = {k: v.detach().clone() for k, v in steps[0].packed.params.items()}
    gen = torch.Generator().manual_seed(0)
    for s in range(4):
        x, y = torch.randint(0, 7, (3, 32), generator=gen), torch.randint(0, 7, (3, 32), generator=gen)
        for step in steps:
            step.optimizer.set_lr([lr * (1 - s / 8) for lr in lrs])
            step(x, y)
    eager, compiled = (step.packed.params for step in steps)
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-12, atol=1e-12)
    assert all(not torch.equal(eager[k], start[k]) for k in eager)  # every parameter moved


def test_packed_step_equals_torch_adamw_per_model_in_float64():
    """Per-model lr schedule, weight decay on the matrices only, per-model clip (one model's clip binds):
    every loss and parameter equals torch.optim.AdamW + clip_grad_norm_ on each model alone to 1e-12."""
    n, steps = 4, 25
    lrs, clips, decays = [1e-2, 3e-2, 1e-3, 5e-2], [1.0, 0.02, 1.0, 0.5], [0.1, 0.0, 0.3, 0.1]
    models = []
    for seed in range(n):
        torch.manual_seed(seed)
        models.append(TinyMLP().double())
    alone = [copy.deepcopy(m) for m in models]
    packed = PackedModels(models)
    matrices = {id(p) for p in param_groups(models[0], 1.0)[0]["params"]}
    decayed = {name for name, p in models[0].named_parameters() if id(p) in matrices}
    opt = PackedAdamW(packed, lrs, decays, decayed, betas=(0.9, 0.95))
    step = PackedStep(packed, opt, mlp_loss, clips)
    opts = [make_optimizer(m, lr, wd, (0.9, 0.95)) for m, lr, wd in zip(alone, lrs, decays)]
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for s in range(steps):
        x, y = torch.randint(0, 7, (n, 32), generator=gen), torch.randint(0, 7, (n, 32), generator=gen)
        opt.set_lr([lr_at(s, steps, lr) for lr in lrs])
        losses = step(x, y)
        for i, (m, o) in enumerate(zip(alone, opts)):
            set_lr(o, lr_at(s, steps, lrs[i]))
            loss = mlp_loss(m, x[i], y[i])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), clips[i])
            o.step()
            o.zero_grad()
            worst = max(worst, abs(float(losses[i]) - loss.item()))
    assert worst < 1e-12
    for i, m in enumerate(alone):
        for name, p in m.named_parameters():
            assert torch.allclose(packed.params[name][i], p, rtol=0, atol=1e-12), name


def tiny(**kw) -> TrainConfig:
    return tiny_config(**{"eval_every": 12, **kw})


series = store_series


# per-model seed, lr, clip, weight decay, data chunking and length (the third leaves the pack after 16 steps)
PACK = [dict(seed=0), dict(seed=1, lr=3e-2, grad_clip=0.05), dict(seed=2, lr=3e-3, weight_decay=0.0, data_chunk=3, steps=16)]


@pytest.fixture(scope="module")
def packed_and_alone(tmp_path_factory):
    set_cpu_threads(1)
    root = tmp_path_factory.mktemp("packed")
    cfgs = [tiny(**kw) for kw in PACK]
    finals = train_packed(cfgs, [root / f"packed{i}" for i in range(len(cfgs))])
    for i, cfg in enumerate(cfgs):
        train(cfg, root / f"alone{i}", progress=False)
    return root, cfgs, finals


def test_each_packed_run_matches_training_it_alone(packed_and_alone):
    """fp32: the batched computation sums in another order, and Adam amplifies the last-bit differences: equal to 1e-4 relative over 24 steps (measured: 2e-5), not bit for bit."""
    root, cfgs, finals = packed_and_alone
    for i in range(len(cfgs)):
        steps_p, loss_p = series(root / f"packed{i}", "train/loss")
        steps_a, loss_a = series(root / f"alone{i}", "train/loss")
        assert steps_p == steps_a == list(range(1, cfgs[i].steps + 1))
        assert loss_p == pytest.approx(loss_a, rel=1e-4)
        for metric in ("eval/loss", "eval/exact_match", "train/lr"):
            assert series(root / f"packed{i}", metric)[1] == pytest.approx(series(root / f"alone{i}", metric)[1], rel=1e-4)
        model_p, *_ = load_run(root / f"packed{i}")
        model_a, *_ = load_run(root / f"alone{i}")
        for (name, p), q in zip(model_p.state_dict().items(), model_a.state_dict().values()):
            assert (p - q).abs().max() < 1e-3 * p.abs().max(), name  # Adam turns last-bit noise in near-zero gradients into lr-sized steps
        assert finals[i]["eval/loss"] == pytest.approx(series(root / f"alone{i}", "eval/loss")[1][-1], rel=1e-4)
        saved = RunFolder(root / f"packed{i}").read_config()
        assert saved["seed"] == cfgs[i].seed and saved["resolved"]["steps"] == cfgs[i].steps


def _cut_after(run_dir, step):
    """What a kill just after the checkpoint at ``step`` leaves: later checkpoints and metrics gone."""
    for s, path in RunFolder(run_dir).checkpoints():
        if s > step:
            path.unlink()
    with RunFolder(run_dir).store() as store:
        store.truncate_after(step)


def test_packed_runs_resume_packed_or_alone(packed_and_alone, tmp_path):
    root, cfgs, _ = packed_and_alone
    dirs = []
    for i in range(len(cfgs)):
        shutil.copytree(root / f"packed{i}", tmp_path / f"p{i}")
        _cut_after(tmp_path / f"p{i}", 8)
        dirs.append(tmp_path / f"p{i}")
    train_packed(cfgs, dirs, resume=True)
    for i in range(len(cfgs)):
        assert series(dirs[i], "train/loss") == series(root / f"packed{i}", "train/loss")  # same computation: exact
    # killed after step 16: the short run had finished and is not trained again
    for i in (0, 1):
        _cut_after(dirs[i], 16)
    finished = (dirs[2] / "metrics.sqlite").stat().st_mtime_ns
    train_packed(cfgs, dirs, resume=True)
    assert (dirs[2] / "metrics.sqlite").stat().st_mtime_ns == finished
    for i in range(len(cfgs)):
        assert series(dirs[i], "train/loss") == series(root / f"packed{i}", "train/loss")
    # a packed run's checkpoint (AdamW state included) resumes in the ordinary loop
    shutil.copytree(root / "packed1", tmp_path / "single")
    _cut_after(tmp_path / "single", 16)
    train(cfgs[1], tmp_path / "single", progress=False, resume=True)
    assert series(tmp_path / "single", "train/loss")[1] == pytest.approx(series(root / "alone1", "train/loss")[1], rel=1e-4)


def test_runs_that_differ_in_shape_do_not_pack(tmp_path):
    assert pack_key(tiny(seed=0, lr=1e-3)) == pack_key(tiny(seed=5, lr=3e-3, data_chunk=2))
    assert pack_key(tiny(steps=10)) == pack_key(tiny(steps=None, flops=1e9)) != pack_key(tiny(d_model=32))
    with pytest.raises(ValueError, match="less than one step"):
        pack_key(tiny(steps=None, flops=1e3))
    with pytest.raises(ValueError, match="may differ only in"):
        train_packed([tiny(), tiny(d_model=32)], [tmp_path / "a", tmp_path / "b"])


def test_heat_schedules_follow_each_runs_own_length(tmp_path):
    """Heat treatment reads training progress step/total: per model, so runs of different lengths still
    match training alone."""
    cfgs = [tiny(attention="heat", steps=12, seed=0), tiny(attention="heat", steps=20, seed=1, lr=3e-3)]
    train_packed(cfgs, [tmp_path / "p0", tmp_path / "p1"])
    for i, cfg in enumerate(cfgs):
        train(cfg, tmp_path / f"a{i}", progress=False)
        assert series(tmp_path / f"p{i}", "train/loss")[1] == pytest.approx(series(tmp_path / f"a{i}", "train/loss")[1], rel=1e-4)
        model_p, *_ = load_run(tmp_path / f"p{i}")
        assert float(model_p.blocks[0].attn.progress) == 1.0


def test_compiled_pack_compiles_its_forward_once_its_shape_is_final(tmp_path, monkeypatch):
    """With compile=True (on a GPU) the forward is compiled only while every run left in the pack ends at
    the same step (a run leaving would change the pack's shape and cost a recompile), and only if the pack
    keeps that shape for at least COMPILE_MIN_STEPS steps from where it took it."""
    import quietlab.train.packed as packed_mod

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    long = packed_mod.COMPILE_MIN_STEPS
    assert packed_mod.compiles_forward(True, cuda, [long, long]) and not packed_mod.compiles_forward(True, cuda, [4, long])
    assert not packed_mod.compiles_forward(False, cuda, [long] * 2) and not packed_mod.compiles_forward(True, cpu, [long] * 2)
    assert not packed_mod.compiles_forward(True, cuda, [long - 1] * 2)
    assert packed_mod.compiles_forward(True, cuda, [long + 5] * 2, since=5)
    assert not packed_mod.compiles_forward(True, cuda, [long + 5] * 2, since=6)

    built = []  # (pack size, compile) of every step function train_packed builds

    def recording_step(packed, *args, compile=False, **kwargs):
        built.append((packed.n, compile))
        return PackedStep(packed, *args, compile=False, **kwargs)  # run eagerly: the test checks the choice

    monkeypatch.setattr(packed_mod, "PackedStep", recording_step)
    rule = packed_mod.compiles_forward
    monkeypatch.setattr(packed_mod, "compiles_forward",
                        lambda c, device, lengths, since: rule(c, cuda, lengths, since, min_steps=2))
    train_packed([tiny(steps=6, seed=0, compile=True), tiny(steps=6, seed=1, compile=True)],
                 [tmp_path / "a0", tmp_path / "a1"])
    assert built == [(2, True)]
    built.clear()
    train_packed([tiny(steps=4, seed=0, compile=True), tiny(steps=6, seed=1, compile=True),
                  tiny(steps=6, seed=2, compile=True)], [tmp_path / "b0", tmp_path / "b1", tmp_path / "b2"])
    assert built == [(3, False), (2, True)]  # the last two steps, from step 4
    built.clear()
    monkeypatch.setattr(packed_mod, "compiles_forward",
                        lambda c, device, lengths, since: rule(c, cuda, lengths, since, min_steps=3))
    train_packed([tiny(steps=4, seed=0, compile=True), tiny(steps=6, seed=1, compile=True),
                  tiny(steps=6, seed=2, compile=True)], [tmp_path / "d0", tmp_path / "d1", tmp_path / "d2"])
    assert built == [(3, False), (2, False)]  # two steps left in that shape: too few to compile
    built.clear()
    train_packed([tiny(steps=6, seed=0), tiny(steps=6, seed=1)], [tmp_path / "c0", tmp_path / "c1"])
    assert built == [(2, False)]
