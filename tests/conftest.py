"""Shared fixtures: one small trained addition run, reused by the training, monitor and ablation tests."""

import pytest
import torch

from quietlab.train.loop import TrainConfig, train
from quietlab.train.threads import set_cpu_threads

# 5-bit addition: a 2-layer d32 model solves it on CPU in about 15 s (seeds 0-3 all reach 100%)
ADDITION_RUN = dict(task="addition", task_sizes={"n_bits": 5}, d_model=32, n_layers=2, n_heads=4, lr=1e-2,
                    batch_size=64, steps=1000, seed=0, eval_every=500, eval_per_decade=0, eval_examples=512,
                    checkpoint_every=1000, checkpoint_per_decade=0, device="cpu")


@pytest.fixture
def one_thread():
    """Tiny models and problems: one thread for torch and for the BLAS under scikit-learn is fastest and
    deterministic (spinning BLAS threads on a busy 2-core machine make sklearn a hundred times slower)."""
    from threadpoolctl import threadpool_limits

    old = torch.get_num_threads()
    set_cpu_threads(1)
    with threadpool_limits(1):
        yield
    set_cpu_threads(old)


@pytest.fixture(scope="session")
def trained_addition(tmp_path_factory):
    """(run_dir, final metrics) of a 5-bit addition model trained to completion."""
    old = torch.get_num_threads()
    set_cpu_threads(1)
    try:
        run_dir = tmp_path_factory.mktemp("runs") / "add5"
        final = train(TrainConfig(**ADDITION_RUN), run_dir, progress=False)
    finally:
        set_cpu_threads(old)
    return run_dir, final
