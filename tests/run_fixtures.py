"""Small training configurations and store readers shared by the training, monitor and packed tests."""

from quietlab.runs import RunFolder
from quietlab.train import TrainConfig


def tiny_config(**kw) -> TrainConfig:
    """4-bit addition on a d_model 16 × 2 model, 24 steps, on the CPU; keywords override any setting."""
    base = dict(task="addition", task_sizes={"n_bits": 4}, d_model=16, n_layers=2, n_heads=2, lr=1e-2,
                batch_size=16, steps=24, eval_every=6, eval_per_decade=0, eval_examples=32, checkpoint_every=8,
                checkpoint_per_decade=0, data_chunk=5, device="cpu")
    return TrainConfig(**{**base, **kw})


def store_series(run_dir, name):
    """(steps, values) of one metric of a run, read through its store."""
    with RunFolder(run_dir).store() as s:
        return s.series(name)
