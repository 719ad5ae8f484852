"""The demo recipe end to end, on a tiny configuration: train with the monitor, classify, ablate, report,
summarise; and an interrupted demo resumes in its folder."""

import pytest
import torch

from typer.testing import CliRunner

from quietlab.cli import app
from quietlab.recipes import demo
from quietlab.runs import RunFolder

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_demo_runs_every_part_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setitem(demo.DEMO_CONFIG, "task_sizes", {"n_bits": 4})
    for key, value in dict(d_model=16, n_layers=1, steps=40, eval_examples=64).items():
        monkeypatch.setitem(demo.DEMO_CONFIG, key, value)
    logged = []
    out = tmp_path / "demo"
    lines = demo.run_demo(out, progress=False, n_controls=2, log=logged.append)
    assert logged[0].startswith("training addition (4-bit) with the monitor")
    assert any(line.startswith("Report: ") for line in lines) and (out / "report.html").is_file()
    with RunFolder(out).store() as store:
        classes = store.results("feature_class")
        ablations = store.results("ablation")
        probed = {r[0] for r in store.probes()}
    assert set(classes) == {"carry", "first_operand", "second_operand", "next_sum_bit"}
    assert list(ablations) == ["carry/boundary"] and ablations["carry/boundary"]["n_controls"] == 2
    assert {0, 40} <= probed
    assert any("Ablating `carry`" in line for line in lines)
    # the summary's first line names the task and its size, the model's size and the attention
    assert lines[0].startswith("`addition` (n_bits=4); d_model 16 × 1 layer, 4 heads; softmax attention; seed 0:")

    # run again in the same folder: it resumes (nothing left to train) and reports the same run
    again = demo.run_demo(out, progress=False, n_controls=2, log=logged.append)
    assert logged[-2].endswith("(resuming)")
    assert again[0] == lines[0]
    assert torch.get_num_threads() == 1


def test_the_paper_demo_probes_and_ablates_by_the_studys_protocol(tmp_path, monkeypatch):
    from quietlab.monitor import paper_probes

    monkeypatch.setitem(demo.DEMO_CONFIG, "task_sizes", {"n_bits": 4})
    for key, value in dict(d_model=16, n_layers=1, steps=30, eval_examples=64).items():
        monkeypatch.setitem(demo.DEMO_CONFIG, key, value)
    monkeypatch.setattr(demo, "DEMO_PAPER_CHECKPOINTS", 3)
    monkeypatch.setattr(paper_probes, "PROBE_TRAIN", 200)  # the protocol's 10,000 + 1,000, scaled down
    monkeypatch.setattr(paper_probes, "PROBE_TEST", 40)
    out = tmp_path / "demo"
    lines = demo.run_demo(out, progress=False, n_controls=2, log=lambda s: None, preset="paper")
    with RunFolder(out).store() as store:
        assert set(store.results("feature_class_paper")) == {"carry", "first_operand", "second_operand",
                                                              "next_sum_bit"}
        ablation = store.get("ablation", "carry/boundary")
    assert ablation["protocol"] == "paper" and ablation["n_examples"] == 40
    assert RunFolder(out).read_config()["preset"] == "paper"
    assert "the paper preset" in lines[0] and any("by the paper's metric" in line for line in lines)
    with pytest.raises(ValueError, match="preset"):  # the folder holds a paper run: no quietlab demo on top
        demo.run_demo(out, progress=False, n_controls=2, log=lambda s: None)


@pytest.mark.parametrize("args, message", [
    (["--controls", "-1"], "--controls must be >= 0, got -1"),
    (["--seed", "-5"], "--seed must be a whole number in [0, 2**63), got -5"),
])
def test_bad_demo_values_are_refused_before_training(tmp_path, args, message):
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d"), *args])
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "d").exists()


def test_the_demo_refuses_a_folder_that_holds_something_else(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "d")])
    assert res.exit_code == 2 and f"{tmp_path / 'd'} already exists and holds no demo run; choose another --out" in res.output
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["notes.txt"]
