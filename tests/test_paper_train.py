"""`--preset paper` in training: the run takes the study's task, model, optimizer groups, precision,
learning-rate schedule and FLOPs/steps accounting (PAPER_PROTOCOL §0, §2-3), records the preset, and
resume, packed training and sweeps honour it. Oracles: the protocol's formulas written out here, greedy
decoding for the two exact-match figures, and the packed loop against the plain one."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from quietlab.cli import app
from quietlab.runs import RunFolder
from quietlab.runs.sweep import expand_spec
from quietlab.tasks import get_task
from quietlab.train import TrainConfig, load_run, train
from quietlab.train.decode import greedy_decode
from quietlab.train.evaluate import evaluate
from quietlab.train.loop import _EVAL, derive_seed
from quietlab.train.packed import train_packed
from run_fixtures import store_series, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def paper(**kw) -> TrainConfig:
    return tiny_config(**{"preset": "paper", "n_heads": 4, **kw})


def test_paper_preset_builds_the_studys_task_and_model():
    cfg = paper()
    task = cfg.build_task()
    assert task.preset == "paper" and task.decode(task.sample(1).tokens[0]).count("+") == 1
    m = cfg.model_config(task)
    assert (m.init, m.norm_eps, m.rope_pairs, m.n_heads) == ("torch_default", 1e-5, "interleaved", 4)
    assert m.d_mlp == 42  # int(8·16/3) = 42, already even
    quiet = tiny_config(n_heads=4).model_config(tiny_config().build_task())
    assert (quiet.init, quiet.norm_eps, quiet.rope_pairs, quiet.d_mlp) == ("gpt2", 1e-6, "halves", 48)


def test_paper_optimizer_decays_every_parameter_and_trains_in_fp32():
    cfg = paper()
    model = torch.nn.Sequential(nn.Embedding(5, 4), nn.LayerNorm(4), nn.Linear(4, 3))
    groups = [g for g in cfg.make_optimizer(model).param_groups if g["params"]]
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.1
    assert sum(p.numel() for p in groups[0]["params"]) == sum(p.numel() for p in model.parameters())
    assert cfg.autocast_dtype(torch.device("cuda")) is None  # fp32 even where quietlab would use bf16


def _context(task, seed: int) -> float:
    """The paper's ctx: mean length of 128 held-out examples up to and including the first end token."""
    batch = task.sample(128, seed=derive_seed(seed, _EVAL), split="test")
    return float(np.mean([len(task.decode(row)) + 1 for row in batch.tokens]))


def test_paper_steps_lr_and_flops_follow_the_protocol(tmp_path):
    budget = 3e8
    cfg = paper(steps=None, flops=budget, task="bfs", task_sizes={"n_nodes": 5}, eval_every=10, checkpoint_every=10)
    task = cfg.build_task()
    ctx = _context(task, cfg.seed)
    per_token = 12 * 2 * 16**2 + 2 * ctx * 16
    steps = math.ceil(budget / (6 * per_token) / (16 * ctx))
    assert cfg.total_steps(task) == steps
    final = train(cfg, tmp_path / "r", progress=False)
    assert final["steps"] == steps and final["train/flops"] == pytest.approx(steps * 16 * ctx * 6 * per_token)
    saved = RunFolder(tmp_path / "r").read_config()
    assert saved["preset"] == "paper" and saved["resolved"]["ctx"] == pytest.approx(ctx)
    warm = int(0.1 * steps)
    lrs = store_series(tmp_path / "r", "train/lr")[1]
    for t, lr in enumerate(lrs):  # update t+1 runs at the rate of scheduler step t
        want = (1e-2 * (0.01 + 0.99 * t / warm) if t < warm
                else 1e-3 + 9e-3 * (1 + math.cos(math.pi * (t - warm) / (steps - warm))) / 2)
        assert lr == pytest.approx(want, rel=1e-12)


class ScriptedModel(nn.Module):
    """Predicts every next token of ``tokens`` correctly except at the given (row, position) pairs."""

    def __init__(self, tokens: torch.Tensor, vocab: int, wrong: list[tuple[int, int]]):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))
        nxt = torch.roll(tokens, -1, dims=1)
        for row, pos in wrong:
            nxt[row, pos] = (nxt[row, pos] + 1) % vocab
        self.register_buffer("logits", torch.nn.functional.one_hot(nxt, vocab).float() * 10)

    def forward(self, tokens, **_):
        return self.logits[: len(tokens), : tokens.shape[1]] + self.bias


def test_exact_match_with_and_without_the_equals_token():
    task = get_task("addition", preset="paper", n_bits=4)
    batch = task.sample(4, seed=3, split="test")
    eq = int(batch.answer_start[0])  # the position of '='; the model predicts it from position eq-1
    model = ScriptedModel(torch.as_tensor(batch.tokens).long(), len(task.vocab),
                          wrong=[(0, eq - 1), (1, eq + 2), (2, 2)])  # row 2: a prompt position, not scored
    metrics = evaluate(model, task, batch)
    assert metrics["eval/exact_match"] == 0.5 and metrics["eval/exact_match_given_eq"] == 0.75
    # greedy decoding of the scripted model agrees: the paper's prompt ends before '=', ours after it
    tokens = torch.as_tensor(batch.tokens).long()

    def decoded_right(start):
        out = greedy_decode(model, tokens, torch.full((4,), start), use_cache=False)
        return (out[:, eq:] == tokens[:, eq:]).all(1).float().mean().item()

    assert decoded_right(eq) == 0.5 and decoded_right(eq + 1) == 0.75
    assert "eval/exact_match_given_eq" not in evaluate(model, get_task("addition", n_bits=4),
                                                       get_task("addition", n_bits=4).sample(4))


def test_packed_paper_runs_equal_the_plain_loop(tmp_path):
    cfgs = [paper(seed=0, steps=None, flops=1.2e8), paper(seed=1, steps=None, flops=1.2e8, lr=3e-3)]
    train_packed(cfgs, [tmp_path / "p0", tmp_path / "p1"])
    for i, cfg in enumerate(cfgs):
        train(cfg, tmp_path / f"a{i}", progress=False)
        for metric in ("train/loss", "train/lr", "eval/exact_match_given_eq", "train/flops"):
            (steps_p, packed), (steps_a, alone) = (store_series(tmp_path / f"{k}{i}", metric) for k in "pa")
            assert steps_p == steps_a and packed == pytest.approx(alone, rel=1e-4), metric
        model, task, loaded, _ = load_run(tmp_path / f"p{i}")
        assert loaded.preset == "paper" and task.preset == "paper" and model.config.init == "torch_default"


def test_resume_keeps_the_preset_and_refuses_another(tmp_path):
    runner = CliRunner()
    out = tmp_path / "r"
    base = ["train", "addition", "--n-bits", "4", "--d-model", "16", "--layers", "1", "--eval-examples", "32",
            "--out", str(out), "--no-monitor", "--json"]
    assert runner.invoke(app, base + ["--preset", "paper", "--steps", "6"]).exit_code == 0
    res = runner.invoke(app, ["train", "addition", "--out", str(out), "--resume", "--no-monitor", "--json",
                              "--steps", "6"])
    assert res.exit_code == 0, res.output
    assert "eval/exact_match_given_eq" in json.loads(res.stdout)  # still the paper's task
    res = runner.invoke(app, ["train", "addition", "--out", str(out), "--resume", "--no-monitor", "--preset", "quietlab"])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1 and "preset" in res.stderr


@pytest.mark.parametrize("args, match", [
    (["--preset", "nonesuch"], "--preset must be one of"),
    (["--preset", "paper", "--n-bits", "1"], "n_bits"),
])
def test_bad_presets_are_one_line_before_anything_is_written(tmp_path, args, match):
    res = CliRunner().invoke(app, ["train", "addition", "--steps", "5", "--out", str(tmp_path / "x"), "--no-monitor",
                                   *args])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1 and match in res.stderr, res.stderr
    assert not (tmp_path / "x").exists()


def test_the_sweep_takes_the_paper_preset_as_an_axis():
    runs, _ = expand_spec({"task": "addition", "sizes": {"n_bits": 4}, "preset": ["quietlab", "paper"],
                           "d_model": 16, "flops": 1e9})
    assert sorted(r.preset for r in runs) == ["paper", "quietlab"] and len({r.run_id for r in runs}) == 2
    by = {r.preset: r.cfg for r in runs}
    assert by["paper"].total_steps(by["paper"].build_task()) != by["quietlab"].total_steps(by["quietlab"].build_task())
