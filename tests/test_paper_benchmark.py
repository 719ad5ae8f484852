"""benchmarks/paper_ablation.py at its tiny size: every stage runs and the JSON holds what the lead's GPU
run reports (exact match with and without '=', the ablation with its intervals and controls, both
classifications of every feature)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """benchmarks/SCRIPT run with ARGS in a clean environment (this checkout's src, one OpenMP thread)."""
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=timeout, env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"),
                                                "PATH": "/usr/bin:/bin"})


def test_the_paper_ablation_benchmark_runs_tiny(tmp_path):
    done = run_benchmark("paper_ablation.py", "--out", str(tmp_path), "--tiny", "--device", "cpu", "--tasks", "addition",
                         "--seeds", "0,1")
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
        assert (tmp_path / f"addition-s{seed}.metrics.sqlite.gz").exists()
        # every transition of the training loss is kept, the main one (the largest factor) among them
        found = run["loss_transitions"]
        assert run["transition"] is None or run["transition"] in found
        if found and all(t["level_after"] > 0 for t in found):
            ratio = [t["level_before"] / t["level_after"] for t in found]
            assert run["transition"]["level_before"] / run["transition"]["level_after"] == max(ratio)
    assert "drop %" in (tmp_path / "paper_ablation.log").read_text()


def test_resume_without_a_run_folder_refuses_instead_of_training_from_scratch(tmp_path):
    done = run_benchmark("paper_ablation.py", "--out", str(tmp_path), "--tiny", "--device", "cpu", "--tasks", "bfs",
                         "--resume", "--run-dir", str(tmp_path / "gone"), timeout=120)
    assert done.returncode != 0
    assert "--resume: no run folder" in done.stderr and str(tmp_path / "gone") in done.stderr
    assert not (tmp_path / "gone").exists()


def _benchmark_module(name: str = "paper_ablation"):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_probed_checkpoints_put_half_inside_the_plateau_and_spread_the_rest():
    """Against a brute-force reading of the rule: n checkpoints, min(n // 2, those available) of them
    inside [plateau_start, onset], the first and last checkpoints always, no repeats; without a transition
    the checkpoints are only spread (first and last kept)."""
    from quietlab.train.schedule import schedule_steps

    choose = _benchmark_module().probe_checkpoints
    checkpoints = schedule_steps(24_000, 2_400, 12)
    for start, onset in [(461, 1_560), (424, 997), (5_000, 5_100), (30_000, 31_000)]:
        t = {"plateau_start": start, "onset": onset, "end": onset * 2}  # as features.run_transition gives it
        for n in (4, 8, 16):
            probed = choose(checkpoints, t, n)
            inside = [c for c in checkpoints if start <= c <= onset]
            assert len(probed) == len(set(probed)) == min(n, len(checkpoints)) and set(probed) <= set(checkpoints)
            assert probed[0] == checkpoints[0] and probed[-1] == checkpoints[-1]
            assert sum(start <= c <= onset for c in probed) >= min(n // 2, len(inside))
            assert choose(checkpoints, t, n) == probed  # the same losses, the same checkpoints
    plain = choose(checkpoints, None, 8)
    assert len(plain) == 8 and plain[0] == checkpoints[0] and plain[-1] == checkpoints[-1]


def test_probed_checkpoints_inside_the_plateau_come_before_a_quiet_feature_must_be_decodable():
    """With the drop's width known (decades), the checkpoints put inside the plateau are those before the
    onset moved back by half the width, the latest step at which a feature first decodable still counts
    as quiet (brute force: onset / 10 ** (width / 2)), wherever the plateau has checkpoints before it."""
    import math

    from quietlab.train.schedule import schedule_steps

    choose = _benchmark_module().probe_checkpoints
    checkpoints = schedule_steps(48_000, 4_800, 12)
    for start, onset, end in [(582, 1_875, 4_404), (643, 1_853, 5_643), (461, 1_560, 3_000)]:
        t = {"plateau_start": start, "onset": onset, "end": end, "width": math.log10(end / onset)}
        guarded = onset / 10 ** (0.5 * t["width"])
        counted = [c for c in checkpoints if start <= c < guarded]
        assert counted  # these plateaus have checkpoints before the guarded start
        for n in (6, 8, 16):
            probed = choose(checkpoints, t, n)
            assert sum(start <= c < guarded for c in probed) >= min(n // 2, len(counted))


def test_the_repeatability_benchmark_finds_cpu_training_repeats_bit_for_bit(tmp_path):
    """benchmarks/gpu_repeatability.py at its tiny size on the CPU, where training is deterministic: the two
    runs of each seed (separate processes, fresh folders) log the same 20 training losses, bit for bit."""
    out = tmp_path / "rep.json"
    done = run_benchmark("gpu_repeatability.py", "--out", str(out), "--tiny", "--device", "cpu", "--arms", "default",
                         "--seeds", "0,1")
    assert done.returncode == 0, done.stderr[-2000:]
    arm = json.loads(out.read_text())["arms"]["default"]
    assert arm["repeats_bit_for_bit"] and set(arm["seeds"]) == {"0", "1"}
    for seed in arm["seeds"].values():
        assert seed["equal"] and seed["max_abs_diff"] == 0 and seed["first_differing_step"] is None
        assert seed["final"][0] == seed["final"][1] and seed["final"][0] > 0


def test_the_repeatability_comparison_finds_the_first_differing_step():
    module = _benchmark_module("gpu_repeatability")
    a = {"losses": {0: [3.0, 2.0, 1.0], 1: [3.0, 2.5, 1.5]}}
    b = {"losses": {0: [3.0, 2.0, 1.0], 1: [3.0, 2.5, 1.25]}}
    got = module.compare(a, b)
    assert got[0] == {"equal": True, "max_abs_diff": 0.0, "first_differing_step": None, "final": [1.0, 1.0]}
    assert got[1]["equal"] is False and got[1]["max_abs_diff"] == 0.25 and got[1]["first_differing_step"] == 3


def test_the_pack_step_profile_runs_tiny(tmp_path):
    """benchmarks/pack_step_profile.py at the tiny sizes on the CPU: the pack trains, the profiler's table of
    the profiled steps is written, with the steady rate and whether deterministic algorithms were on."""
    out = tmp_path / "profile.txt"
    done = run_benchmark("pack_step_profile.py", "--out", str(out), "--tiny", "--steps", "30", "--profile-from", "10",
                         "--profile-steps", "5", "--no-deterministic")
    assert done.returncode == 0, done.stderr[-2000:]
    text = out.read_text()
    assert "deterministic algorithms off" in text.splitlines()[0]
    rate = float(text.splitlines()[1].split("second half) ")[1].split(" tokens/s")[0])
    assert rate > 0 and "profiled steps 10..14" in text
    assert "Self CPU" in text and "aten::" in text  # the table of the profiled steps' operations
