"""The compute frontier on synthetic sweep tables whose answers are known by construction."""

import json
import math
import sqlite3

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from quietlab.cli import app
from quietlab.runs.frontier import compute_frontiers, load_rows

BUDGETS = np.logspace(9, 16, 33)  # 33 budgets, 4.6 per decade


def two_phase(u):  # flat at 2.0, then a logistic drop centred at 1e13 FLOPs (width 0.1 decade) to 0.3
    return 0.3 + 1.7 / (1 + np.exp((u - 13.0) / 0.1))


def power_law(u):  # a smooth decrease, convex in log FLOPs: no two phases
    return 3.0 * 10 ** (-0.15 * (u - 9))


def synthetic_table(path, rng):
    """Per task and budget four runs: the frontier's value (±0.2% noise) and three worse ones."""
    rows, best = [], {}
    for task, curve in (("addition", two_phase), ("bfs", power_law)):
        for b in BUDGETS:
            target = curve(math.log10(b)) * (1 + 0.002 * rng.standard_normal())
            losses = [target] + list(target + rng.uniform(0.05, 0.5, size=3))
            order = rng.permutation(4)
            for k in order:
                run_id = f"{task}-{b:.3g}-{k}"
                rows.append(dict(run_id=run_id, status="done", task=task, task_sizes="{}", preset="quietlab",
                                 budget=b, train_flops=b * 0.97, eval_loss=losses[k], exact_match=1.0 / (1 + losses[k]),
                                 run_dir=f"runs/{run_id}", d_model=32))
            best[(task, b)] = f"{task}-{b:.3g}-0"
    # a failed run and a diverged one never count
    rows.append(dict(run_id="x1", status="failed", task="addition", task_sizes="{}", preset="quietlab", budget=BUDGETS[0],
                     train_flops=None, eval_loss=None, exact_match=None, run_dir=None, d_model=32))
    rows.append(dict(run_id="x2", status="done", task="addition", task_sizes="{}", preset="quietlab", budget=BUDGETS[0],
                     train_flops=BUDGETS[0], eval_loss=float("nan"), exact_match=0.0, run_dir=None, d_model=32))
    path.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path / "sweep.sqlite") as con:
        pd.DataFrame(rows).to_sql("runs", con, index=False)
    return best


def test_frontier_picks_the_best_run_and_finds_two_phases_only_where_they_are(tmp_path):
    best = synthetic_table(tmp_path / "sw", np.random.default_rng(0))
    frontiers = {f.task: f for f in compute_frontiers(load_rows(tmp_path / "sw"))}
    for task, f in frontiers.items():
        assert [p.budget for p in f.points] == pytest.approx(list(BUDGETS))
        assert [p.run_id for p in f.points] == [best[(task, b)] for b in BUDGETS]
        assert all(p.runs == 4 for p in f.points)
    add, bfs = frontiers["addition"], frontiers["bfs"]
    assert add.two_phase and not bfs.two_phase
    # the logistic's steepest tangent meets the two levels at 1e13 ∓ 2 widths = 10^12.8 and 10^13.2
    assert 12.5 <= math.log10(add.drop_start) <= 12.95 and 13.05 <= math.log10(add.drop_end) <= 13.5
    assert add.loss_before == pytest.approx(2.0, rel=0.05) and add.loss_after == pytest.approx(0.3, rel=0.1)


def test_frontier_cli_prints_each_task_and_writes_the_report(tmp_path):
    synthetic_table(tmp_path / "sw", np.random.default_rng(1))
    result = CliRunner().invoke(app, ["frontier", str(tmp_path / "sw")])
    assert result.exit_code == 0, result.output
    summary = result.output[result.output.index("Two phases on each frontier"):]
    rows = {line.split("│")[1].strip(): line for line in summary.splitlines() if line.startswith("│ ")}
    assert "│ yes" in rows["addition"] and "│ no" in rows["bfs"]
    html = (tmp_path / "sw" / "report.html").read_text()
    assert '"type":"log"' in html.replace(" ", "") and "addition" in html
    data = json.loads(CliRunner().invoke(app, ["frontier", str(tmp_path / "sw"), "--json", "--by", "d_model"]).output)
    assert [f["curve"] for f in data["frontiers"]] == ["addition d_model=32", "bfs d_model=32"]
    bad = CliRunner().invoke(app, ["frontier", str(tmp_path / "sw"), "--by", "colour"])
    assert bad.exit_code == 2 and "colour" in bad.output
    missing = CliRunner().invoke(app, ["frontier", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "not a sweep folder" in missing.output


STUDY_BUDGETS = np.logspace(10, 14, 17)  # the reduced study's grid: four budgets a decade


def frontier_of(task, losses):
    rows = [dict(run_id=f"{task}-{k}", status="done", task=task, task_sizes="{}", preset="quietlab", budget=b,
                 train_flops=b, eval_loss=loss, exact_match=None, run_dir=None)
            for k, (b, loss) in enumerate(zip(STUDY_BUDGETS, losses))]
    (f,) = compute_frontiers(rows)
    return f


def test_a_frontier_of_four_budgets_a_decade_is_read_on_log_axes():
    u = np.log10(STUDY_BUDGETS)
    # addition's shape in the reduced study: a fall onto the coin-flip level 0.66 by 1e11, flat to 1e12, then
    # within a quarter decade a drop to float32's rounding (exactly 0 at the largest budgets)
    plateau = 0.66 + 0.5 * np.clip(11 - u, 0, None)
    solved = np.where(u > 13.4, 0.0, 1e-10)
    add = frontier_of("addition", plateau / (1 + np.exp((u - 12.1) / 0.03)) + solved)
    assert add.two_phase
    assert 11.9 <= math.log10(add.drop_start) <= 12.1 and 12.1 <= math.log10(add.drop_end) <= 12.5
    assert 0.66 <= add.loss_before <= plateau[0] and add.loss_after < 1e-4  # the plateau, in loss units
    # the same fall over the same budgets without the flat stretch: a power law, straight on log-log axes
    assert not frontier_of("bfs", 2.6 * 10 ** (-0.9 * (u - 10))).two_phase
    # a slow bend onto a floor is no drop either
    assert not frontier_of("mst", 0.5 + 2.5 * 10 ** (-0.5 * (u - 10))).two_phase


def test_detect_transitions_rejects_fewer_than_two_min_points():
    from quietlab.monitor.transitions import detect_transitions

    with pytest.raises(ValueError, match="min_points"):
        detect_transitions([1, 2, 3], [3.0, 2.0, 1.0], min_points=1)


def test_a_frontier_too_short_to_read_says_so_instead_of_no(tmp_path):
    rows = [dict(run_id=f"r{k}", status="done", task="addition", task_sizes="{}", preset="quietlab", budget=b,
                 train_flops=b, eval_loss=loss, exact_match=0.5, run_dir=None)
            for k, (b, loss) in enumerate([(1e10, 0.6), (1e11, 0.6), (1e12, 1e-3)])]
    (f,) = compute_frontiers(rows)
    assert f.two_phase is None and f.verdict.startswith("too few budgets (3;")
    (tmp_path / "sw").mkdir()
    with sqlite3.connect(tmp_path / "sw" / "sweep.sqlite") as con:
        pd.DataFrame(rows).to_sql("runs", con, index=False)
    result = CliRunner().invoke(app, ["frontier", str(tmp_path / "sw")])
    assert result.exit_code == 0 and "too few" in result.output
    assert json.loads(CliRunner().invoke(app, ["frontier", str(tmp_path / "sw"), "--json"]).output)["frontiers"][0][
        "two_phase"] is None
