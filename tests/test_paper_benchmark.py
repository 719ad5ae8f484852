"""benchmarks/paper_ablation.py at its tiny size: every stage runs and the JSON holds what the lead's GPU
run reports (exact match with and without '=', the ablation with its intervals and controls, both
classifications of every feature)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_paper_ablation_benchmark_runs_tiny(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paper_ablation.py"), "--out", str(tmp_path),
                           "--tiny", "--device", "cpu", "--tasks", "addition", "--seeds", "0,1"],
                          capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1",
                                                                            "PYTHONPATH": str(ROOT / "src"),
                                                                            "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "paper_ablation.json").read_text())
    task = summary["tasks"]["addition"]
    assert task["config"]["preset"] == "paper" and task["feature"] == "carry" and task["paper_drop_pct"] == 75.1
    for seed in ("0", "1"):
        run = task["runs"][seed]
        assert {"eval/exact_match", "eval/exact_match_given_eq"} <= set(run["final"])
        assert run["ablation"]["protocol"] == "paper" and run["ablation"]["n_controls"] == 2
        assert set(run["features"]) == {"carry", "first_operand", "second_operand", "next_sum_bit"}
        for f in run["features"].values():
            assert f["paper"]["class"] in ("quiet", "loud", "absent", "unresolved")
            assert f["ours"]["class"] in ("quiet", "loud", "absent", "unresolved")
        assert (tmp_path / "runs" / f"addition-s{seed}" / "metrics.sqlite.gz").exists()
    assert "drop %" in (tmp_path / "paper_ablation.log").read_text()
