"""quietlab sweep: the grid a spec means, the results table, failures, resuming, the executors."""

import itertools
import json
import sqlite3
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from quietlab.cli import app
from quietlab.runs import RunFolder
from quietlab.runs.sweep import expand_spec, run_sweep
from quietlab.train import load_run
from quietlab.train.threads import set_cpu_threads

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()

SMALL = """
task = "addition"
sizes = { n_bits = 4 }
d_model = 16
heads = 2
layers = 1
lr = [1e-2, 3e-3]
seed = [0, 1]
batch_size = 8
steps = 12
eval_every = 6
eval_per_decade = 0
eval_examples = 16
checkpoint_every = 6
checkpoint_per_decade = 0
device = "cpu"
"""


def write(tmp_path, text, name="spec.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def table(sweep_dir) -> pd.DataFrame:
    with sqlite3.connect(sweep_dir / "sweep.sqlite") as con:
        return pd.read_sql("SELECT * FROM runs", con)


def test_the_grid_is_the_product_of_the_lists():
    runs, _ = expand_spec({"task": "addition", "sizes": {"n_bits": [4, 6]}, "d_model": [16, 32], "lr": [1e-3, 3e-3],
                           "seed": [0, 1, 2], "steps": 10, "heads": 2, "preset": "quietlab"})
    got = sorted((r.cfg.task_sizes["n_bits"], r.cfg.d_model, r.cfg.lr, r.cfg.seed) for r in runs)
    assert got == sorted(itertools.product([4, 6], [16, 32], [1e-3, 3e-3], [0, 1, 2]))
    assert all(r.cfg.steps == 10 and r.cfg.n_heads == 2 and r.preset == "quietlab" for r in runs)
    assert len({r.run_id for r in runs}) == 24


def test_tasks_tables_give_each_task_its_own_sizes_and_axes():
    spec = {"tasks": [{"task": "addition", "sizes": {"n_bits": 4}, "d_model": [16, 32]},
                      {"task": "bfs", "sizes": {"n_nodes": 5}}, "multiplication"],
            "d_model": 16, "heads": 2, "seed": [0, 1], "flops": [1e9, 1e10]}
    runs, _ = expand_spec(spec)
    by_task = {}
    for r in runs:
        by_task.setdefault(r.cfg.task, set()).add((tuple(r.cfg.task_sizes.items()), r.cfg.d_model, r.cfg.seed, r.cfg.flops))
    assert by_task["addition"] == set(itertools.product([(("n_bits", 4),)], [16, 32], [0, 1], [1e9, 1e10]))
    assert by_task["bfs"] == set(itertools.product([(("n_nodes", 5),)], [16], [0, 1], [1e9, 1e10]))
    assert by_task["multiplication"] == set(itertools.product([()], [16], [0, 1], [1e9, 1e10]))


@pytest.mark.parametrize("extra, key", [
    ("colour = 3", "colour"),
    ("min_steps = 10\nmax_steps = 2", "min_steps"),
    ("d_model = \"big\"", "d_model"),
    ("lr = []", "lr"),
    ("flops = 1e12", "steps"),
    ("preset = [\"quietlab\", \"nonesuch\"]", "preset"),
    ("sizes = { n_bits = \"x\" }", "sizes.n_bits"),
])
def test_a_malformed_spec_is_one_line_naming_the_key(tmp_path, extra, key):
    text = "\n".join(l for l in SMALL.splitlines() if not l.startswith(extra.split(" ")[0] + " ")) + "\n" + extra
    result = runner.invoke(app, ["sweep", str(write(tmp_path, text)), "--out", str(tmp_path / "sw")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"'{key}'" in lines[0], result.output


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"task = \"addition\"\n\xe8\xff\n"), "{spec} is not a text file (TOML is UTF-8 text)"),
    (lambda p: None, "no sweep spec at {spec}"),
])
def test_an_unreadable_or_missing_spec_is_one_line_naming_the_file(tmp_path, make, message):
    spec = tmp_path / "spec.toml"
    make(spec)
    result = runner.invoke(app, ["sweep", str(spec), "--out", str(tmp_path / "sw")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == ["error: " + message.format(spec=spec)]


@pytest.mark.parametrize("args, message", [
    (["--workers", "0"], "--workers must be >= 1, got 0"),
    (["--gpus-per-pack", "0.25"], "--address and --gpus-per-pack are for --executor ray"),
    (["--executor", "ray", "--gpus-per-pack", "-1"], "--gpus-per-pack must be a number > 0, got -1.0"),
    (["--executor", "dask"], "--executor must be local or ray, got 'dask'"),
])
def test_bad_executor_options_are_refused_even_when_every_run_is_done(small_sweep, args, message):
    """Checked before the table is opened, not only when a pack is left to run."""
    out, _ = small_sweep
    result = runner.invoke(app, ["sweep", str(out / "spec.toml"), "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [f"error: {message}"]


def test_a_sweep_is_pointed_to_frontier_and_its_report_replaces_only_its_own(small_sweep, tmp_path):
    import shutil

    from quietlab.report.target import is_quietlab_report

    out, _ = small_sweep
    res = runner.invoke(app, ["report", str(out)])
    first_run = sorted((out / "runs").glob("*"))[0]
    assert res.exit_code == 2 and res.output.strip().splitlines() == [
        f"error: {out} is a sweep: `quietlab frontier {out}` writes its report; `quietlab report` takes its runs, e.g. {first_run}"]
    copy = tmp_path / "sw"
    shutil.copytree(out, copy)
    assert runner.invoke(app, ["frontier", str(copy)]).exit_code == 0 and is_quietlab_report(copy / "report.html")
    assert runner.invoke(app, ["frontier", str(copy)]).exit_code == 0  # its own report is replaced
    old = (copy / "report.html").read_text().replace('<meta name="generator" content="quietlab report">', "")
    (copy / "report.html").write_text(old)  # as frontier wrote it before its report carried the marker
    assert runner.invoke(app, ["frontier", str(copy)]).exit_code == 0
    (copy / "report.html").write_text("my notes")
    res = runner.invoke(app, ["frontier", str(copy)])
    assert res.exit_code == 2 and "report.html exists and is not a quietlab report" in res.output
    assert (copy / "report.html").read_text() == "my notes"


def test_frontier_of_a_folder_that_is_no_sweep_is_one_line(tmp_path):
    result = runner.invoke(app, ["frontier", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {tmp_path} is not a sweep folder (no sweep.sqlite)"]


def test_a_second_sweep_into_a_folder_being_swept_is_refused_before_it_writes(tmp_path):
    """As a run folder's: the sweep holds its folder's lock; a second sweep is one line naming the holder, exit 2,
    and leaves the table alone (it used to record every run of the first as failed, their folders being locked)."""
    out = tmp_path / "sw"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from quietlab.runs.lock import RunLock
        lock = RunLock({str(out)!r}, create=True, what="sweep folder").acquire()
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = runner.invoke(app, ["sweep", str(write(tmp_path, SMALL)), "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines() == [
            f"error: {out} is being written by another process (pid {holder.pid}); wait for it to finish or stop it"]
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()


def test_bad_values_are_caught_before_anything_runs(tmp_path):
    result = runner.invoke(app, ["sweep", str(write(tmp_path, SMALL + "attention = \"nonesuch\"\n")), "--out", str(tmp_path / "sw")])
    assert result.exit_code == 2 and "--attention must be one of" in result.output
    assert not (tmp_path / "sw" / "sweep.sqlite").exists()


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    set_cpu_threads(1)
    root = tmp_path_factory.mktemp("sweep")
    # four runs of one shape (packed), one of another, and one whose budget buys less than a step
    spec = write(root, SMALL.replace("d_model = 16", "d_model = 16").replace("lr = [1e-2, 3e-3]", "lr = [1e-2, 3e-3]"))
    extra = write(root, SMALL.replace("d_model = 16", "d_model = 32").replace("lr = [1e-2, 3e-3]", "lr = 1e-2")
                  .replace("seed = [0, 1]", "seed = 0"), "other.toml")
    tiny_budget = write(root, SMALL.replace("steps = 12", "flops = [1e3, 1e7]").replace("seed = [0, 1]", "seed = 0")
                        .replace("lr = [1e-2, 3e-3]", "lr = 1e-2"), "budget.toml")
    out = root / "sw"
    result = runner.invoke(app, ["sweep", str(spec), "--out", str(out), "--workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    first = json.loads(result.output.strip().splitlines()[-1])
    run_sweep(extra, out, workers=1, progress=False)
    run_sweep(tiny_budget, out, workers=1, progress=False)
    return out, first


def test_each_run_is_a_normal_run_folder_and_a_row_of_the_table(small_sweep):
    out, first = small_sweep
    assert first["done"] == 4 and first["packs"] == 1
    df = table(out)
    assert len(df) == 7
    done = df[df.status == "done"]
    assert len(done) == 6 and set(done.packed_with) == {4, 1}
    for _, row in done.iterrows():
        run_dir = out / row.run_dir
        with RunFolder(run_dir).store() as s:  # the table's final metrics are the run's own last evaluation
            assert row.eval_loss == pytest.approx(s.series("eval/loss")[1][-1])
            assert row.exact_match == pytest.approx(s.series("eval/exact_match")[1][-1])
        model, task, cfg, step = load_run(run_dir)
        assert step == row.total_steps and cfg.lr == row.lr and cfg.seed == row.seed and cfg.d_model == row.d_model
        assert row.train_flops == pytest.approx(row.total_steps * RunFolder(run_dir).read_config()["resolved"]["flops_per_step"])
        assert row.wall_s > 0 and row.size_n_bits == 4
    failed = df[df.status == "failed"]
    assert len(failed) == 1 and failed.iloc[0].flops == 1e3 and "less than one step" in failed.iloc[0].error
    assert df[df.flops == 1e7].iloc[0].budget == 1e7  # a budget sweep keeps its budget


def test_a_resumed_sweep_redoes_nothing_finished(small_sweep, tmp_path):
    import shutil

    out, _ = small_sweep
    copy = tmp_path / "sw"
    shutil.copytree(out, copy)
    df = table(copy)
    rows = df[(df.status == "done") & (df.packed_with == 4)].iloc[:2]
    with sqlite3.connect(copy / "sweep.sqlite") as con:  # as if killed while these two were training
        for _, row in rows.iterrows():
            con.execute("UPDATE runs SET status='pending' WHERE run_id=?", (row.run_id,))
    before = {}
    for _, row in rows.iterrows():
        run_dir = copy / "runs" / f"addition-{row.run_id}"
        with RunFolder(run_dir).store() as s:
            before[row.run_id] = s.series("train/loss")[1]
            s.truncate_after(6)
        for step, path in RunFolder(run_dir).checkpoints():
            if step > 6:
                path.unlink()
    summary = run_sweep(out.parent / "spec.toml", copy, workers=1, progress=False)
    assert summary["this_time"] == {"done": 2, "failed": 0} and summary["skipped"] == 2
    for run_id, losses in before.items():
        with RunFolder(copy / "runs" / f"addition-{run_id}").store() as s:
            assert s.series("train/loss")[1] == pytest.approx(losses, rel=1e-4)


def test_the_table_file_alone_holds_every_result_while_the_sweep_runs(tmp_path):
    """A sweep killed on a lent machine leaves sweep.sqlite to be copied off on its own: every finished run
    must be in that one file (not in a -wal file beside it) from the moment it is recorded."""
    import shutil

    from quietlab.runs.sweep import SweepTable

    runs, _ = expand_spec(__import__("tomllib").loads(textwrap.dedent(SMALL)))
    table_ = SweepTable(tmp_path / "sw" / "sweep.sqlite")
    for r in runs:
        table_.add(r, tmp_path / "sw" / "runs" / r.folder_name)
    table_.finish(runs[0].run_id, {"steps": 12, "eval/loss": 0.5}, 4)
    table_.fail(runs[1].run_id, "RuntimeError: boom")
    (tmp_path / "copy").mkdir()
    shutil.copy(tmp_path / "sw" / "sweep.sqlite", tmp_path / "copy" / "sweep.sqlite")  # the writer still open
    df = table(tmp_path / "copy").set_index("run_id")
    assert len(df) == len(runs)
    assert df.loc[runs[0].run_id, "status"] == "done" and df.loc[runs[0].run_id, "eval_loss"] == 0.5
    assert df.loc[runs[1].run_id, "status"] == "failed"
    table_.close()


def test_frontier_cli_reads_the_sweep(small_sweep):
    out, _ = small_sweep
    result = runner.invoke(app, ["frontier", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    (f,) = data["frontiers"]
    df = table(out)
    done = df[df.status == "done"]
    best = done.loc[done.groupby("budget").eval_loss.idxmin()]
    assert [p["budget"] for p in f["points"]] == sorted(best.budget)
    assert [p["run_id"] for p in f["points"]] == list(best.sort_values("budget").run_id)
    assert (out / "report.html").read_text().count("<script") >= 1


def test_min_steps_leaves_out_runs_too_short_to_train(tmp_path):
    spec = write(tmp_path, SMALL.replace("steps = 12", "flops = [1e3, 1e7]\nmin_steps = 1").replace("seed = [0, 1]", "seed = 0")
                 .replace("lr = [1e-2, 3e-3]", "lr = 1e-2"))
    summary = run_sweep(spec, tmp_path / "sw", workers=1, progress=False)
    assert summary["left_out"] == 1 and summary["runs"] == 1 and summary["done"] == 1 and summary["failed"] == 0
    assert list(table(tmp_path / "sw").flops) == [1e7]
    result = runner.invoke(app, ["sweep", str(spec), "--out", str(tmp_path / "sw")])  # the verb says so
    assert result.exit_code == 0 and "1 left out by min_steps/max_steps" in " ".join(result.output.split())


def test_a_run_that_fails_is_recorded_and_its_pack_goes_on(small_sweep, tmp_path):
    import shutil

    out, _ = small_sweep
    copy = tmp_path / "sw"
    shutil.copytree(out, copy)
    df = table(copy)
    broken, fine = df[(df.status == "done") & (df.packed_with == 4)].run_id.iloc[:2]
    with sqlite3.connect(copy / "sweep.sqlite") as con:
        con.execute("UPDATE runs SET status='pending' WHERE run_id IN (?, ?)", (broken, fine))
    fine_dir = copy / "runs" / f"addition-{fine}"
    with RunFolder(fine_dir).store() as s:  # the other run was cut short and must train on
        losses = s.series("train/loss")[1]
        s.truncate_after(6)
    for step, path in RunFolder(fine_dir).checkpoints():
        if step > 6:
            path.unlink()
    folder = RunFolder(copy / "runs" / f"addition-{broken}")
    config = folder.read_config()
    folder.config_path.write_text(json.dumps({**config, "weight_decay": 0.5}))  # no longer the run the spec asks for
    summary = run_sweep(out.parent / "spec.toml", copy, workers=1, progress=False)
    assert summary["this_time"] == {"done": 1, "failed": 1}
    after = table(copy).set_index("run_id")
    assert after.loc[fine, "status"] == "done" and after.loc[broken, "status"] == "failed"
    assert "settings that differ" in after.loc[broken, "error"] and "weight_decay" in after.loc[broken, "error"]
    with RunFolder(fine_dir).store() as s:
        assert s.series("train/loss")[1] == pytest.approx(losses, rel=1e-4)


def test_a_pack_out_of_gpu_memory_is_split_in_halves(small_sweep, tmp_path, monkeypatch):
    """A pack larger than the card holds (torch.cuda.OutOfMemoryError) trains as two halves, not one run at a
    time; each run ends as it does in the pack of four, to the packing tolerance."""
    import quietlab.train.packed as packed_module

    out, _ = small_sweep
    real, sizes = packed_module.train_packed, []

    def small_card(cfgs, run_dirs, **kw):
        sizes.append(len(cfgs))
        if len(cfgs) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 700.00 MiB.")
        return real(cfgs, run_dirs, **kw)

    monkeypatch.setattr(packed_module, "train_packed", small_card)
    summary = run_sweep(out.parent / "spec.toml", tmp_path / "sw", workers=1, progress=False)
    assert summary["failed"] == 0 and sizes == [4, 2, 2]
    halves, four = table(tmp_path / "sw").set_index("run_id"), table(out).set_index("run_id")
    assert set(halves.packed_with) == {2}
    for run_id in halves.index:
        for metric in ("train_loss", "eval_loss"):
            assert halves.loc[run_id, metric] == pytest.approx(four.loc[run_id, metric], rel=1e-4)


def test_packs_start_longest_first_across_shapes(tmp_path):
    """The workers' queue starts with the packs whose longest run has the most steps, whatever their shape,
    so that no long pack is left running alone at the end (largest-first scheduling); brute force: every
    pack's longest run, in the order planned, never grows."""
    from quietlab.runs.sweep import plan_packs

    runs, _ = expand_spec({"task": "addition", "sizes": {"n_bits": 4}, "d_model": [16, 32], "layers": 1,
                           "lr": 1e-3, "batch_size": 8, "seed": [0, 1, 2], "flops": [1e8, 1e9, 1e10]})
    dirs = {r.run_id: tmp_path / r.run_id for r in runs}
    packs, failed = plan_packs(runs, dirs, pack_size=2, slots=2)
    assert not failed and sorted(i.run_id for p in packs for i in p) == sorted(dirs)
    steps = {r.run_id: r.cfg.total_steps(r.cfg.build_task()) for r in runs}
    longest = [max(steps[i.run_id] for i in pack) for pack in packs]
    assert longest == sorted(longest, reverse=True)
    assert longest[0] == max(steps.values())
    # not simply the spec's order: the longest packs of both shapes come before either shape's shorter ones
    first_shapes = [packs[j][0].cfg["d_model"] for j in range(len(packs))]
    assert first_shapes != sorted(first_shapes) and first_shapes != sorted(first_shapes, reverse=True)
