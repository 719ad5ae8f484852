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
    assert first.probe_steps == slowed.probe_steps and first.follower.steps == slowed.follower.steps
    assert sorted({r[0] for r in rows1}) == sorted(first.probe_steps + first.follower.steps)  # + the plateau's
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


# --- the run folder guards itself -----------------------------------------------------------------
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from typer.testing import CliRunner

from quietlab.cli import app
from quietlab.runs import RunFolder
from quietlab.runs.lock import RunLock

TINY = ["addition", "--n-bits", "4", "--d-model", "16", "--layers", "1", "--heads", "2", "--batch-size", "16",
        "--eval-examples", "32", "--device", "cpu"]


def cli(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr


def one_line(stderr: str) -> str:
    lines = [l for l in stderr.strip().splitlines() if not l.startswith(("warning:", "train "))]  # and the bar
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A finished 12-step run without the monitor; tests copy it before damaging it."""
    run = tmp_path_factory.mktemp("runs") / "small"
    code, out, err = cli("train", *TINY, "--steps", 12, "--checkpoint-every", 6, "--out", run, "--no-monitor")
    assert code == 0, err
    return run


def copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from quietlab.runs.lock import RunLock
        lock = RunLock({str(tmp_path / 'run')!r}, create=True).acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    try:
        assert holder.stdout.readline().strip() == "locked"
        for args in (["train", *TINY, "--steps", 5, "--out", tmp_path / "run", "--resume", "--no-monitor"],
                     ["train", *TINY, "--steps", 5, "--out", tmp_path / "run", "--no-monitor"],
                     ["probe", tmp_path / "run"], ["ablate", tmp_path / "run", "--feature", "carry"]):
            code, _, err = cli(*args)
            assert code == 2 and f"pid {holder.pid}" in one_line(err) and "being written" in err, (args, err)
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / "run" / ".lock").read_text().strip() == str(holder.pid)  # the dead holder's file stays
    code, _, err = cli("train", *TINY, "--steps", 5, "--out", tmp_path / "run", "--resume", "--no-monitor")
    assert code == 0, err  # ... and is taken over
    with RunLock(tmp_path / "run"):
        assert (tmp_path / "run" / ".lock").read_text().strip() == str(os.getpid())


def test_readers_open_the_run_read_only_and_change_nothing(small_run, tmp_path):
    run = copy_run(small_run, tmp_path / "ro")
    (run / "report.html").unlink(missing_ok=True)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    for p in [run, run / "checkpoints", *run.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        code, out, err = cli("report", run, "--out", tmp_path / "out.html")
        assert code == 0, err
        assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # nothing created or touched
        assert "quietlab report" in (tmp_path / "out.html").read_text()[:400]
    finally:
        for p in [run, *run.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    # an empty database is an error, not silently recreated
    (run / "metrics.sqlite").write_bytes(b"")
    code, _, err = cli("report", run)
    assert code == 2 and "metrics.sqlite" in one_line(err)
    assert (run / "metrics.sqlite").stat().st_size == 0


def test_report_out_never_lands_on_a_runs_files_or_a_strangers_file(small_run, tmp_path):
    run = copy_run(small_run, tmp_path / "r")
    data = (run / "metrics.sqlite").read_bytes()
    for target in (run / "metrics.sqlite", run / "config.json", run / "checkpoints" / "x.html", run / "other.html"):
        code, _, err = cli("report", run, "--out", target)
        assert code == 2 and "inside the run folder" in one_line(err), (target, err)
    assert (run / "metrics.sqlite").read_bytes() == data
    stranger = tmp_path / "notes.html"
    stranger.write_text("<html>my notes</html>")
    code, _, err = cli("report", run, "--out", stranger)
    assert code == 2 and "not a quietlab report" in one_line(err) and stranger.read_text() == "<html>my notes</html>"
    assert cli("report", run, "--out", run / "report.html")[0] == 0
    assert cli("report", run, "--out", tmp_path / "mine.html")[0] == 0
    assert cli("report", run, "--out", tmp_path / "mine.html")[0] == 0  # its own earlier report is replaced


# --- one line for every user-caused error ---------------------------------------------------------
def test_damaged_files_are_one_line_naming_the_file(small_run, tmp_path):
    run = copy_run(small_run, tmp_path / "d")
    config = (run / "config.json").read_text()
    (run / "config.json").write_text(json.dumps({**json.loads(config), "steps": "twelve"}))
    code, _, err = cli("train", "addition", "--out", run, "--resume", "--no-monitor")
    assert code == 2 and "config.json: steps must be a whole number" in one_line(err)
    (run / "config.json").write_text("[1, 2]")
    code, _, err = cli("train", "addition", "--out", run, "--resume", "--no-monitor")
    assert code == 2 and "config.json" in one_line(err)
    (run / "config.json").write_text(config)
    (run / "metrics.sqlite").write_bytes(b"this is not a database" * 100)
    for args in (["report", run], ["probe", run], ["ablate", run, "--feature", "carry"]):
        code, _, err = cli(*args)
        assert code == 2 and "metrics.sqlite" in one_line(err), (args, err)
    (tmp_path / "file").write_text("")
    code, _, err = cli("train", *TINY, "--steps", 5, "--out", tmp_path / "file" / "run", "--no-monitor")
    assert code == 2 and "file" in one_line(err)
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "closed").mkdir(mode=0o555)
        code, _, err = cli("train", *TINY, "--steps", 5, "--out", tmp_path / "closed" / "run", "--no-monitor")
        assert code == 2 and "closed" in one_line(err) and "ermission" in err


def test_corrupt_checkpoints_are_skipped_with_a_warning_by_probe_ablate_and_resume(small_run, tmp_path):
    run = copy_run(small_run, tmp_path / "c")
    steps = [s for s, _ in RunFolder(run).checkpoints()]
    assert steps[-2:] == [10, 12]
    last = RunFolder(run).checkpoint_path(12)
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    skipped = pytest.warns(UserWarning, match=r"skipping .*step_000012.pt is not a readable checkpoint")
    with skipped:
        code, out, err = cli("ablate", run, "--feature", "carry", "--examples", 40, "--controls", 2, "--json")
    assert code == 0, err
    with RunFolder(run).store(readonly=True) as store:
        assert store.get("ablation", "carry/boundary")["step"] == 10
    with skipped:
        code, out, err = cli("probe", run, "--examples", 40, "--features", "carry", "--json")
    assert code == 0, err
    assert sorted({r[0] for r in RunStore_rows(run)}) == steps[:-1]
    RunFolder(run).checkpoint_path(10).write_bytes(b"")  # zero bytes
    code, _, err = cli("ablate", run, "--feature", "carry", "--step", 10)
    assert code == 2 and "step_000010.pt" in one_line(err) and "readable checkpoint" in err
    with pytest.warns(UserWarning, match="step_000010.pt"):
        code, out, err = cli("train", "addition", "--out", run, "--resume", "--no-monitor", "--json")
    assert code == 0 and json.loads(out)["step"] == 12, err


def RunStore_rows(run):
    with RunFolder(run).store(readonly=True) as store:
        return store.probes(feature="carry")


@pytest.mark.parametrize("args,match", [
    (["--tau", "inf", "--attention", "temperature"], "--tau"),
    (["--tau", "nan", "--attention", "temperature"], "--tau"),
    (["--heat-start", "inf", "--attention", "heat"], "--heat-start"),
    (["--lr", "nan"], "--lr"),
])
def test_non_finite_values_fail_before_the_folder_is_made(tmp_path, args, match):
    code, _, err = cli("train", *TINY, "--steps", 5, "--out", tmp_path / "x", *args)
    assert code == 2 and match in one_line(err) and not (tmp_path / "x").exists()


def test_sizes_with_an_empty_held_out_side_fail_before_the_folder_is_made(tmp_path):
    code, _, err = cli("train", "majority_of_majorities", "--n-bits", 1, "--n-groups", 1, "--steps", 5,
                       "--out", tmp_path / "x")
    assert code == 2 and "test side" in one_line(err) and not (tmp_path / "x").exists()
    code, _, err = cli("train", "majority_of_majorities", "--n-bits", 3, "--n-groups", 1, "--steps", 2,
                       "--eval-examples", 16, "--d-model", 16, "--layers", 1, "--heads", 2, "--out", tmp_path / "x",
                       "--no-monitor")
    assert code == 0, err  # the same --out is free for a run that can be made


def test_no_monitor_is_remembered_on_resume(tmp_path):
    run = tmp_path / "nm"
    assert cli("train", *TINY, "--steps", 4, "--out", run, "--no-monitor")[0] == 0
    RunFolder(run).checkpoint_path(4).unlink()
    code, _, err = cli("train", "addition", "--out", run, "--resume")
    assert code == 0, err
    with RunFolder(run).store(readonly=True) as store:
        assert store.probes() == [] and not store.metric_names("attn/")


def test_probe_features_must_name_features(small_run):
    for bad in (",", "carry,", " , "):
        code, _, err = cli("probe", small_run, "--features", bad)
        assert code == 2 and "--features" in one_line(err)


def test_ablate_fails_on_the_store_before_any_work(small_run, tmp_path, monkeypatch):
    import quietlab.interventions.ablation as ablation

    def no_work(*a, **k):
        raise AssertionError("ablation started before the store was checked")

    monkeypatch.setattr(ablation, "ablate", no_work)
    run = copy_run(small_run, tmp_path / "a")
    (run / "metrics.sqlite").write_bytes(b"garbage" * 500)
    code, _, err = cli("ablate", run, "--feature", "carry")
    assert code == 2 and "metrics.sqlite" in one_line(err)


def test_a_full_disk_mid_run_is_one_line(tmp_path):
    """Files capped at 200 kB (RLIMIT_FSIZE): the first checkpoint that does not fit fails with EFBIG."""
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        from quietlab.cli import app
        sys.argv = ["quietlab", "train", "addition", "--n-bits", "4", "--d-model", "64", "--layers", "2",
                    "--steps", "3", "--eval-examples", "16", "--device", "cpu", "--no-monitor", "--out", {str(tmp_path / 'full')!r}]
        app(prog_name="quietlab")
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    assert res.returncode == 2, res.stderr
    assert "File too large" in one_line(res.stderr) and "step_000000.pt" in res.stderr


# --- checkpoints carry every GPU's random state -----------------------------------------------------
def test_cuda_random_states_round_trip_through_a_checkpoint(tmp_path, monkeypatch):
    from quietlab.train import checkpoint

    states = {0: torch.arange(16, dtype=torch.uint8), 1: torch.arange(16, 32, dtype=torch.uint8)}
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda i=0: states[i].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i=0: restored.__setitem__(i, s.clone()))
    model = Transformer(TransformerConfig(vocab_size=5, seq_len=8, d_model=16, n_layers=1, n_heads=2))
    path = checkpoint.save_checkpoint(tmp_path, 3, model, None, {})
    checkpoint.set_rng_state(checkpoint.load_checkpoint(path)["rng"])
    assert set(restored) == {0, 1} and all(torch.equal(restored[i], states[i]) for i in states)


# --- bounded evaluation and checkpoint schedules ----------------------------------------------------
def test_default_evaluations_and_checkpoints_stay_within_their_bounds():
    import math as _math

    from quietlab.train import TrainConfig
    from quietlab.train.loop import EVAL_BUDGET, run_schedules

    for total in (1, 7, 300, 600, 1000, 20_000, 200_000):
        for examples, batch in ((512, 64), (256, 64), (32, 16)):
            evals, ckpts = run_schedules(TrainConfig(steps=total, eval_examples=examples, batch_size=batch), total)
            cost = examples / (3 * batch)  # a forward pass is a third of a training step per token
            assert evals[0] == 0 and evals[-1] == total and evals == sorted(set(evals))
            assert len(evals) * cost <= EVAL_BUDGET * total or len(evals) <= 2
            assert ckpts[0] == 0 and ckpts[-1] == total
            assert len(ckpts) <= 3 * _math.log10(max(total, 1)) + 13
    # explicit intervals are taken as given
    evals, ckpts = run_schedules(TrainConfig(steps=100, eval_every=10, eval_per_decade=0, checkpoint_every=50,
                                             checkpoint_per_decade=0), 100)
    assert evals == list(range(0, 101, 10)) and ckpts == [0, 50, 100]


def test_a_monitor_that_cannot_load_is_an_error_not_silence(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "quietlab.monitor", None)  # any import of it now raises ImportError
    code, _, err = cli("train", *TINY, "--steps", 3, "--out", tmp_path / "m")
    assert code == 2 and "--no-monitor" in one_line(err) and not (tmp_path / "m").exists()


def test_a_file_given_as_the_folder_to_write_is_refused_by_every_writer(tmp_path):
    """The writer lock (runs/lock.py) refuses it for train, sweep, eureka and demo alike, and leaves the file."""
    target = tmp_path / "afile"
    target.write_text("mine")
    spec = tmp_path / "spec.toml"
    spec.write_text('task = "addition"\nsizes = { n_bits = 4 }\nd_model = 16\nlayers = 1\nlr = 1e-3\nbatch_size = 8\nsteps = 3\n')
    for args in (["train", *TINY, "--steps", 3, "--no-monitor", "--out", target], ["sweep", spec, "--out", target],
                 ["eureka", "--seeds", 1, "--variants", "cnn", "--out", target], ["demo", "--out", target]):
        code, _, err = cli(*args)
        last = err.strip().splitlines()[-1]  # the demo says what it is about to train first
        assert code == 2 and last == f"error: {target} is not a directory; choose another --out", (args, err)
    assert target.read_text() == "mine"
