"""The Ray executor on a local Ray instance on the CPU: Ray's scheduler runs the packs, the table fills."""

import sqlite3
import textwrap

import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from quietlab.runs.sweep import run_sweep  # noqa: E402

SPEC = """
task = "addition"
sizes = { n_bits = 4 }
d_model = [16, 32]
heads = 2
layers = 1
lr = 1e-2
seed = [0, 1]
batch_size = 8
steps = 6
eval_every = 6
eval_per_decade = 0
eval_examples = 16
checkpoint_every = 6
checkpoint_per_decade = 0
device = "cpu"
"""


def test_ray_executor_runs_every_pack_and_resumes(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(textwrap.dedent(SPEC))
    summary = run_sweep(spec, tmp_path / "sw", executor="ray", workers=2, progress=False)
    assert summary["this_time"] == {"done": 4, "failed": 0} and summary["packs"] == 2
    with sqlite3.connect(tmp_path / "sw" / "sweep.sqlite") as con:
        df = pd.read_sql("SELECT * FROM runs", con)
    assert set(df.status) == {"done"} and sorted(df.packed_with) == [2, 2, 2, 2]
    assert sorted(zip(df.d_model, df.seed)) == [(16, 0), (16, 1), (32, 0), (32, 1)]
    assert not ray.is_initialized()  # the instance it started is stopped again
    again = run_sweep(spec, tmp_path / "sw", executor="ray", workers=2, progress=False)
    assert again["this_time"] == {"done": 0, "failed": 0} and again["skipped"] == 4
