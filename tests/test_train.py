"""The training engine: FLOPs, schedule, data, evaluation, hooks, checkpoints and exact resume, the CLI,
and a functional test (a small model learns binary addition)."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn
from typer.testing import CliRunner

from quietlab.cli import app
from quietlab.models import Transformer, TransformerConfig
from quietlab.tasks import get_task
from quietlab.train import (TrainingInterrupted, evaluate, flops_per_step, flops_per_token,
                            list_checkpoints, load_run, lr_at, steps_for_flops, train)
from quietlab.train.budget import non_embedding_params
from quietlab.train.loop import ExampleStream
from quietlab.train.schedule import log_spaced_steps, make_optimizer, schedule_steps
from run_fixtures import store_series, tiny_config


pytestmark = pytest.mark.usefixtures("one_thread")


tiny = tiny_config


# --- FLOPs --------------------------------------------------------------------------------------
def test_flops_match_a_hand_count():
    cfg = TransformerConfig(vocab_size=10, seq_len=12, d_model=16, n_layers=2, n_heads=2, d_mlp=48)
    # per block: qkv 3·16·16 + proj 16·16 + gate/up/down 3·16·48 + two norm gains 2·16 = 3360; final norm 16
    n = 2 * 3360 + 16
    assert non_embedding_params(cfg) == n == Transformer(cfg).n_params(non_embedding=True) == 6736
    # Kaplan: forward 2N + 2·n_layers·n_ctx·d_model per token, ×3 for forward + backward
    assert flops_per_token(cfg) == 3 * (2 * 6736 + 2 * 2 * 12 * 16) == 42720
    assert flops_per_step(cfg, batch_size=8) == 8 * 12 * 42720
    per_step = 8 * 12 * 42720
    assert steps_for_flops(5 * per_step, cfg, 8, 12) == 5
    assert steps_for_flops(5 * per_step - 1, cfg, 8, 12) == 4
    with pytest.raises(ValueError, match="less than one step"):
        steps_for_flops(per_step - 1, cfg, 8, 12)


# --- schedule -----------------------------------------------------------------------------------
def test_lr_schedule_closed_form():
    lr, total = 3e-3, 101
    w = 10  # 10% of 101, rounded
    for s in range(total):
        if s < w:
            expected = lr * (s + 1) / w
        else:
            expected = 0.1 * lr + 0.9 * lr * 0.5 * (1 + math.cos(math.pi * (s - w) / (total - 1 - w)))
        assert lr_at(s, total, lr) == pytest.approx(expected, rel=1e-12)
    assert lr_at(0, total, lr) == pytest.approx(lr / 10)
    assert lr_at(w - 1, total, lr) == lr_at(w, total, lr) == pytest.approx(lr)  # peak
    assert lr_at(55, total, lr) == pytest.approx(0.55 * lr)  # cosine half-way: mean of lr and 0.1·lr
    assert lr_at(total - 1, total, lr) == pytest.approx(0.1 * lr)  # ends at 0.1·lr
    assert lr_at(0, 1, lr) == pytest.approx(lr)  # a one-step run


def test_optimizer_is_adamw_without_decay_on_norms_and_embeddings():
    model = Transformer(TransformerConfig(vocab_size=5, seq_len=8, d_model=16, n_layers=2, n_heads=2))
    opt = make_optimizer(model, 1e-3)
    assert isinstance(opt, torch.optim.AdamW)
    assert all(g["betas"] == (0.9, 0.95) for g in opt.param_groups)
    by_id = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert len(by_id) == len(list(model.parameters()))
    for name, p in model.named_parameters():
        expected = 0.0 if ("norm" in name or name == "embed.weight") else 0.1
        assert by_id[id(p)] == expected, name


def test_log_spaced_schedules():
    assert log_spaced_steps(100, 3) == [0, 1, 2, 5, 10, 22, 46, 100]
    assert log_spaced_steps(20, 10) == [0, 1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20]
    assert schedule_steps(50, 20, 0) == [0, 20, 40, 50]
    assert schedule_steps(7, None, 0) == [0, 7]


# --- data -----------------------------------------------------------------------------------------
def test_examples_are_a_pure_function_of_seed_and_step_and_never_held_out():
    task = get_task("addition", n_bits=4)
    a = ExampleStream(task, seed=3, batch_size=8, chunk=4, device=torch.device("cpu"))
    b = ExampleStream(task, seed=3, batch_size=8, chunk=7, device=torch.device("cpu"))
    c = ExampleStream(task, seed=4, batch_size=8, chunk=4, device=torch.device("cpu"))
    try:
        for step in (9, 1, 5, 4, 9):  # any order, any revisit
            first = a.batch(step)[0]
            torch.testing.assert_close(first, ExampleStream(task, 3, 8, 4, torch.device("cpu")).batch(step)[0])
        assert not torch.equal(a.batch(1)[0], a.batch(2)[0])
        assert not torch.equal(a.batch(1)[0], c.batch(1)[0])
        assert b.batch(1)[0].shape == (8, task.seq_len)
        held_out = {task.decode(r) for r in task.sample(200, seed=0, split="test").tokens}
        seen = {task.decode(r) for s in range(1, 30) for r in a.batch(s)[0].numpy()}
        assert seen and not (seen & held_out)
    finally:
        for s in (a, b, c):
            s.close()


# --- evaluation -------------------------------------------------------------------------------------
class LookupModel(nn.Module):
    """Predicts the true next token of any prefix in a batch (logit 5, others 0), except at the answer
    token ``wrong_at``, where it predicts the token after the true one. Supports the KV-cache protocol."""

    class Cache:
        def __init__(self):
            self.length, self.prefix = 0, None

    def __init__(self, batch, vocab, wrong_at=None):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.vocab = vocab
        self.table = {}
        for row, mask in zip(batch.tokens.tolist(), batch.loss_mask):
            start = int(np.argmax(mask)) + 1
            for t in range(1, len(row)):
                nxt = row[t]
                if wrong_at is not None and t - start == wrong_at:
                    nxt = (nxt + 1) % vocab
                self.table.setdefault(tuple(row[:t]), nxt)

    def new_cache(self, batch):
        return self.Cache()

    def forward(self, tokens, edit=None, cache=None):
        full = tokens if cache is None else (tokens if cache.prefix is None else torch.cat([cache.prefix, tokens], 1))
        logits = torch.zeros(*tokens.shape, self.vocab)
        offset = full.shape[1] - tokens.shape[1]
        for i, row in enumerate(full.tolist()):
            for j in range(tokens.shape[1]):
                logits[i, j, self.table.get(tuple(row[: offset + j + 1]), 0)] = 5.0
        if cache is not None:
            cache.prefix, cache.length = full, full.shape[1]
        return logits


def test_evaluate_against_closed_form():
    task = get_task("addition", n_bits=4)
    batch = task.sample(40, seed=1, split="test")
    v = len(task.vocab)
    n_answer = int(batch.loss_mask[0].sum())  # 5 sum bits + end token
    right = -math.log(math.exp(5) / (math.exp(5) + v - 1))
    wrong = -math.log(1 / (math.exp(5) + v - 1))

    perfect = evaluate(LookupModel(batch, v), task, batch, "cpu", chunk=16)
    assert perfect["eval/exact_match"] == 1.0 and perfect["eval/token_acc"] == 1.0
    assert perfect["eval/loss"] == pytest.approx(right)
    assert sorted(k for k in perfect if k.startswith("eval/pos_acc/")) == [f"eval/pos_acc/{i}" for i in range(n_answer)]

    flawed = evaluate(LookupModel(batch, v, wrong_at=2), task, batch, "cpu")
    assert flawed["eval/exact_match"] == 0.0  # greedy decoding goes wrong at the third answer token
    assert flawed["eval/pos_acc/2"] == 0.0
    assert all(flawed[f"eval/pos_acc/{i}"] == 1.0 for i in range(n_answer) if i != 2)
    assert flawed["eval/token_acc"] == pytest.approx((n_answer - 1) / n_answer)
    assert flawed["eval/loss"] == pytest.approx(((n_answer - 1) * right + wrong) / n_answer)


# --- the loop, hooks, metrics ----------------------------------------------------------------------
class Recorder:
    def __init__(self):
        self.calls = []
        self.ckpt_steps = []

    def attach(self, model, task, store, run_cfg):
        self.calls.append(("attach", run_cfg.steps, type(model).__name__, task.name))

    def after_backward(self, step, model):
        has_grads = all(p.grad is not None for p in model.parameters())
        self.calls.append(("after_backward", step, has_grads))

    def after_step(self, step, model):
        self.calls.append(("after_step", step, model.training))

    def on_train_loss(self, steps, losses):
        self.calls.append(("on_train_loss", list(steps), list(losses)))

    def on_eval(self, step, model, metrics):
        self.calls.append(("on_eval", step, sorted(metrics)))

    def on_checkpoint(self, step, model):
        # the file is written in the background; the one before it is complete by now
        self.calls.append(("on_checkpoint", step, all(s in list_checkpoints(self.run_dir) for s in self.ckpt_steps)))
        self.ckpt_steps.append(step)

    def status(self):
        return "recording"


def test_loop_calls_hooks_logs_metrics_and_checkpoints(tmp_path):
    task = get_task("addition", n_bits=4)
    cfg = tiny(steps=None, flops=None)
    model_cfg = cfg.model_config(task)
    cfg.flops = 13.5 * flops_per_step(model_cfg, cfg.batch_size, task.seq_len)  # buys 13 steps
    hooks = Recorder()
    hooks.run_dir = tmp_path / "run"
    final = train(cfg, hooks.run_dir, hooks=hooks, progress=True)
    total = 13
    assert hooks.calls[0] == ("attach", total, "Transformer", "addition")
    assert [c[1] for c in hooks.calls if c[0] == "after_backward"] == list(range(1, total + 1))
    assert all(c[2] for c in hooks.calls if c[0] == "after_backward")
    evals = [c for c in hooks.calls if c[0] == "on_eval"]
    assert [c[1] for c in evals] == [0, 6, 12, 13]  # step 0 (the untrained model), every 6, the last
    assert "eval/exact_match" in evals[0][2] and "eval/pos_acc/0" in evals[0][2]
    ckpts = [c for c in hooks.calls if c[0] == "on_checkpoint"]
    assert [c[1] for c in ckpts] == [0, 8, 13] == list_checkpoints(hooks.run_dir) and all(c[2] for c in ckpts)
    # on_eval of a step comes before its checkpoint, both after that step's update
    order = [(c[0], c[1]) for c in hooks.calls if c[0] != "on_train_loss"]
    assert order.index(("on_eval", 0)) < order.index(("on_checkpoint", 0)) < order.index(("after_backward", 1))
    # after_step: step 0 once after its evaluation and checkpoint, then each update before its evaluation
    assert [c[1] for c in hooks.calls if c[0] == "after_step"] == list(range(0, total + 1))
    assert order.index(("on_checkpoint", 0)) < order.index(("after_step", 0)) < order.index(("after_backward", 1))
    assert order.index(("after_backward", 6)) < order.index(("after_step", 6)) < order.index(("on_eval", 6))
    # the training losses are handed over in step order, each once, all of them before each evaluation
    handed = [(c[1], c[2]) for c in hooks.calls if c[0] == "on_train_loss"]
    assert [s for steps, _ in handed for s in steps] == list(range(1, total + 1))
    seen = 0
    for c in hooks.calls:
        if c[0] == "on_train_loss":
            seen = c[1][-1]
        elif c[0] == "on_eval":
            assert seen == c[1]

    steps, losses = store_series(hooks.run_dir, "train/loss")
    assert steps == list(range(1, total + 1)) and all(math.isfinite(x) for x in losses)
    assert store_series(hooks.run_dir, "train/lr")[1] == pytest.approx([lr_at(s - 1, total, cfg.lr) for s in steps])
    tokens_per_step = cfg.batch_size * task.seq_len
    assert store_series(hooks.run_dir, "train/tokens")[1] == [s * tokens_per_step for s in steps]
    assert store_series(hooks.run_dir, "train/flops")[1] == [s * tokens_per_step * flops_per_token(model_cfg) for s in steps]
    rate_steps, rates = store_series(hooks.run_dir, "train/tokens_per_s")
    assert rate_steps and all(r > 0 for r in rates)
    assert store_series(hooks.run_dir, "eval/exact_match")[0] == [0, 6, 12, 13]
    assert final["steps"] == total and final["step"] == total and final["train/loss"] == losses[-1]
    assert [x for _, ls in handed for x in ls] == losses  # the very values the store holds

    saved = json.loads((hooks.run_dir / "config.json").read_text())
    assert saved["seed"] == 0 and saved["flops"] == cfg.flops and saved["resolved"]["steps"] == total
    assert "quietlab_version" in saved and saved["model_config"]["d_model"] == 16

    model, task2, cfg2, step = load_run(hooks.run_dir)
    assert step == total and not model.training and cfg2 == cfg and task2.sizes == {"n_bits": 4}
    assert float(model.blocks[0].attn.progress) == 1.0
    model0, _, _, step0 = load_run(hooks.run_dir, step=0)
    assert step0 == 0 and not torch.equal(model0.lm_head.weight, model.lm_head.weight)
    with pytest.raises(ValueError, match="no checkpoint at step 5"):
        load_run(hooks.run_dir, step=5)
    with pytest.raises(ValueError, match="already exists"):
        train(cfg, hooks.run_dir, progress=False)


def test_bad_settings_raise_one_clear_value_error(tmp_path):
    for bad, match in [(dict(steps=0), "--steps"), (dict(steps=None), "--steps or --flops"),
                       (dict(flops=1e9), "not both"), (dict(attention="cosine"), "--attention must be one of"),
                       (dict(lr=-1.0), "--lr"), (dict(d_model=18, n_heads=4), "--d-model"),
                       (dict(norm_form="l1"), "--norm-form"), (dict(device="tpu"), "--device")]:
        with pytest.raises(ValueError, match=match):
            train(tiny(**bad), tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


# --- exact resume after kill -9 ----------------------------------------------------------------------
CHILD = textwrap.dedent("""
    import json, os, signal, sys
    import torch
    from quietlab.train.threads import set_cpu_threads
    set_cpu_threads(1)
    from quietlab.train import TrainConfig, train
    cfg, run_dir, mode, arg = TrainConfig.from_dict(json.loads(sys.argv[1])), sys.argv[2], sys.argv[3], int(sys.argv[4])
    hooks = None
    if mode == "kill_in_checkpoint_write":  # die after the temp file is written, before its rename
        real = os.replace
        def replace(src, dst):
            if str(dst).endswith(f"step_{arg:06d}.pt"):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst)
        os.replace = replace
    if mode == "kill_after_backward":  # die in the middle of an update
        class hooks:
            attach = on_eval = on_checkpoint = after_step = on_train_loss = lambda *a: None
            status = lambda: ""
            def after_backward(step, model):
                if step == arg:
                    os.kill(os.getpid(), signal.SIGKILL)
    train(cfg, run_dir, hooks=hooks, progress=False, resume=mode != "fresh")
""")


def child(cfg, run_dir, mode, arg=0):
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(cfg.to_dict()), str(run_dir), mode, str(arg)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_resume_after_kill_minus_9_reproduces_the_uninterrupted_run(tmp_path):
    cfg = tiny(attention="heat")  # heat: the schedule's progress is part of the state
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    a, b = child(cfg, whole, "fresh"), child(cfg, broken, "kill_in_checkpoint_write", 16)
    assert a.wait(timeout=120) == 0
    assert b.wait(timeout=120) == -signal.SIGKILL
    # killed while writing checkpoint 16: its temp file is there, but no partial file under a final name
    assert list_checkpoints(broken) == [0, 8]
    assert list((broken / "checkpoints").glob(".step_000016.pt.*.tmp"))
    c = child(cfg, broken, "kill_after_backward", 20)
    assert c.wait(timeout=120) == -signal.SIGKILL
    assert list_checkpoints(broken) == [0, 8, 16]
    assert not list((broken / "checkpoints").glob("*.tmp"))
    assert store_series(broken, "train/loss")[0][-1] >= 16  # metrics past the last checkpoint exist ...
    d = child(cfg, broken, "resume")
    assert d.wait(timeout=120) == 0
    for name in ("train/loss", "train/lr", "eval/loss", "eval/exact_match", "eval/pos_acc/0"):
        assert store_series(broken, name) == store_series(whole, name), name  # ... and were redone exactly
    assert store_series(whole, "train/loss")[0] == list(range(1, 25))
    final_whole, final_broken = load_run(whole)[0].state_dict(), load_run(broken)[0].state_dict()
    for k in final_whole:
        assert torch.equal(final_whole[k], final_broken[k]), k


def test_ctrl_c_checkpoints_the_current_step_and_resume_is_exact(tmp_path):
    class Interrupt:
        attach = on_eval = on_checkpoint = after_step = on_train_loss = lambda *a: None
        status = lambda self: ""

        def after_backward(self, step, model):
            if step == 11:
                os.kill(os.getpid(), signal.SIGINT)

    cfg = tiny(steps=16)
    train(cfg, tmp_path / "whole", progress=False)
    inherited = signal.getsignal(signal.SIGINT)  # ignored under nohup or in a background job
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as at an interactive terminal
    try:
        with pytest.raises(TrainingInterrupted, match="interrupted at step 11"):
            train(cfg, tmp_path / "cut", hooks=Interrupt(), progress=False)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert 11 in list_checkpoints(tmp_path / "cut")
    final = train(cfg, tmp_path / "cut", progress=False, resume=True)
    assert store_series(tmp_path / "cut", "train/loss") == store_series(tmp_path / "whole", "train/loss")
    assert final["step"] == 16
    # resuming a finished run does nothing and returns the same final metrics
    again = train(cfg, tmp_path / "cut", progress=False, resume=True)
    assert again["eval/loss"] == final["eval/loss"] and again["train/loss"] == final["train/loss"]
    with pytest.raises(ValueError, match="differ from the run's config"):
        train(tiny(steps=17), tmp_path / "cut", progress=False, resume=True)


def test_an_ignored_ctrl_c_stays_ignored(tmp_path):
    """Under nohup (SIGINT ignored) a stray SIGINT neither stops the run nor changes the disposition."""
    class Interrupt:
        attach = on_eval = on_checkpoint = after_step = on_train_loss = lambda *a: None
        status = lambda self: ""

        def after_backward(self, step, model):
            if step == 3:
                os.kill(os.getpid(), signal.SIGINT)

    inherited = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        final = train(tiny(steps=6), tmp_path / "run", hooks=Interrupt(), progress=False)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert final["step"] == 6


# --- the CLI ----------------------------------------------------------------------------------------
def test_cli_train_json_and_resume(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["train", "addition", "--n-bits", "4", "--steps", "20", "--d-model", "16", "--layers", "1",
            "--eval-examples", "32", "--out", str(out), "--no-monitor", "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    final = json.loads(res.stdout)
    assert final["steps"] == 20 and 0 <= final["eval/exact_match"] <= 1 and final["run_dir"] == str(out)
    saved = json.loads((out / "config.json").read_text())
    assert saved["task_sizes"] == {"n_bits": 4} and saved["d_model"] == 16 and saved["n_layers"] == 1
    assert (out / "metrics.sqlite").exists() and list_checkpoints(out)[0] == 0 and list_checkpoints(out)[-1] == 20
    # --resume takes the saved settings; only what is typed overrides them
    res = runner.invoke(app, ["train", "addition", "--out", str(out), "--resume", "--no-monitor", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["eval/loss"] == pytest.approx(final["eval/loss"])


@pytest.mark.parametrize("args,match", [
    (["--steps", "0"], "--steps"),
    (["--attention", "bogus"], "--attention must be one of"),
    (["--flops", "10"], "less than one step"),
    (["--d-model", "30"], "--d-model"),
    (["--n-bits", "99"], "n_bits"),
    (["--colour", "red"], "--colour must be a number"),
    ([], "--steps or --flops"),
    (["--lr", "1e300"], "--lr must be a number in (0, 10], got 1e+300"),
    (["--seed", "99999999999999999999"], "--seed must be a whole number in [0, 2**63), got 99999999999999999999"),
    (["--seed", "-1"], "--seed must be a whole number in [0, 2**63), got -1"),
])
def test_cli_bad_values_exit_2_with_one_line(tmp_path, args, match):
    res = CliRunner().invoke(app, ["train", "addition", "--out", str(tmp_path / "x"), "--no-monitor", *args]
                             + (["--steps", "5"] if args and args[0] not in ("--steps", "--flops") else []))
    assert res.exit_code == 2
    assert len(res.stderr.strip().splitlines()) == 1 and match in res.stderr, res.stderr
    assert not (tmp_path / "x").exists()


def test_cli_refuses_an_existing_run_folder_without_resume(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text("{}")
    res = CliRunner().invoke(app, ["train", "addition", "--steps", "5", "--out", str(tmp_path / "x"), "--no-monitor"])
    assert res.exit_code == 2 and "already exists" in res.stderr and "--resume" in res.stderr


# --- functional: a small model learns addition --------------------------------------------------------
def test_small_model_learns_5_bit_addition(trained_addition):
    run_dir, final = trained_addition  # conftest.ADDITION_RUN: 5-bit, d32, 2 layers, 1000 steps
    assert final["eval/exact_match"] >= 0.99, final
    assert store_series(run_dir, "eval/exact_match")[1][0] == 0.0  # it started from nothing


def test_set_cpu_threads_leaves_mkl_dynamic_and_without_a_count_of_its_own():
    """torch.set_num_threads turns MKL's dynamic threads off and gives the thread a count of its own, which nests
    MKL's threads inside PyTorch's parallel kernels (benchmarks/thread_state.py); set_cpu_threads undoes both.
    In a fresh process, since MKL's settings are the process's."""
    code = textwrap.dedent("""
        import ctypes, json, os, torch
        from quietlab.train.threads import _mkl_setters, set_cpu_threads
        if _mkl_setters() is None:
            print(json.dumps(None)); raise SystemExit
        set_local, _ = _mkl_setters()
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        out = {"start": [lib.mkl_serv_get_dynamic()]}
        torch.set_num_threads(2)
        out["torch"] = [lib.mkl_serv_get_dynamic(), set_local(2)]  # set_local returns the count it replaces
        set_cpu_threads(2)
        out["ours"] = [lib.mkl_serv_get_dynamic(), set_local(0), torch.get_num_threads()]
        set_cpu_threads(1)
        out["one"] = [lib.mkl_serv_get_dynamic(), set_local(0), torch.get_num_threads()]
        print(json.dumps(out))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if out is None:
        pytest.skip("this PyTorch has no MKL of its own")
    assert out["start"] == [1]
    assert out["torch"] == [0, 2]  # the state that slowed the step
    assert out["ours"] == [1, 0, 2]
    assert out["one"] == [1, 0, 1]
