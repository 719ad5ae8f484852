"""Training: compute budget, schedule, the loop, checkpoints, evaluation and greedy decoding."""

from .budget import flops_per_step, flops_per_token, non_embedding_params, steps_for_flops
from .checkpoint import list_checkpoints, load_run
from .decode import exact_match, greedy_decode
from .evaluate import evaluate
from .loop import TrainConfig, TrainHooks, TrainingInterrupted, train
from .schedule import lr_at, make_optimizer

__all__ = [
    "TrainConfig", "TrainHooks", "TrainingInterrupted", "evaluate", "exact_match", "flops_per_step",
    "flops_per_token", "greedy_decode", "list_checkpoints", "load_run", "lr_at", "make_optimizer",
    "non_embedding_params", "steps_for_flops", "train",
]
