"""The training loop: fresh examples every step, the paper's recipe, evaluations, checkpoints, hooks.

    cfg = TrainConfig(task="addition", task_sizes={"n_bits": 8}, d_model=64, steps=2000)
    final = train(cfg, "runs/add8")                    # dict of the last evaluation's metrics and more
    final = train(cfg, "runs/add8", resume=True)       # after a kill: continue from the last checkpoint
    cfg = TrainConfig(task="addition", preset="paper", d_model=64, flops=1e12)   # the study as its code ran

Presets (``TrainConfig.preset``, docs/presets.md): ``quietlab`` (default) and ``paper``, which takes the
quiet-feature study's tasks (``get_task(..., preset="paper")``), model (``models.paper``), weight decay on
every parameter, fp32, learning-rate schedule (``paper_lr_at``) and FLOPs/steps accounting
(``paper_steps_for_flops``). The preset is saved in config.json like every other setting.

Step numbering: step k is the model after k optimizer updates; step 0 is the untrained model, which is
always evaluated and checkpointed (the monitor's random-init baseline). ``train/loss`` at step k is the
loss of the batch that update k was computed on.

Data: the examples of update k are a pure function of (seed, k). They are drawn from the task's train
side ``data_chunk`` steps at a time: chunk c = (k-1) // data_chunk is ``task.sample(data_chunk·batch_size,
seed=derive(seed, c))``. Evaluation uses one fixed held-out batch of ``eval_examples`` (the test side).

Metrics logged to metrics.sqlite: train/loss, train/lr, train/tokens, train/flops (every
``log_every`` steps), train/tokens_per_s (at each flush, about once a second: tokens over the plain
training time since the last flush, evaluations and checkpoints left out) and train/elapsed_s (wall
seconds since the loop started, everything included), train/first_step_s (wall seconds of the first
step, compilation included), train/eval_s and train/checkpoint_s (the loop's wall seconds spent so far
on evaluations and on checkpoints: the state's copy; the writing runs beside training), and eval/loss,
eval/token_acc, eval/pos_acc/{i}, eval/exact_match (and under the paper preset eval/exact_match_given_eq)
at each evaluation (see evaluate.py).

Schedules (schedule.py): by default the evaluations are step 0, the last step, ``eval_per_decade``
log-spaced steps per decade and about 50 evenly spaced ones, thinned evenly so that their estimated
cost (a forward pass of ``eval_examples`` examples: eval_examples / (3·batch_size) training steps)
stays within EVAL_BUDGET (3%) of the run's training compute; checkpoints are ``checkpoint_per_decade``
log-spaced steps per decade plus at most 10 evenly spaced ones. An explicit ``eval_every`` or
``checkpoint_every`` is taken as given, unthinned.

Resuming reloads model, optimizer and RNG state from the last complete checkpoint and forgets every
metric logged after it; on CPU the continued run's losses equal the uninterrupted run's exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from .. import __version__
from ..models.attention import NORM_FORMS, VARIANTS
from ..models.transformer import Transformer, TransformerConfig
from ..runs.folder import RunFolder
from ..runs.lock import RunLock, holds_files
from .budget import (flops_per_step, flops_per_token, mean_context, non_embedding_params, paper_flops_per_token,
                     paper_steps_for_flops, steps_for_flops)
from .checkpoint import CheckpointWriter, latest_checkpoint, remove_stale_temp_files, set_rng_state
from .evaluate import evaluate, masked_loss
from .schedule import budgeted_steps, lr_at, make_optimizer, paper_lr_at, schedule_steps, set_lr

DTYPES = ("auto", "fp32", "bf16")
#: quietlab's own recipe, or the quiet-feature study's as its released code ran it (docs/presets.md)
PRESETS = ("quietlab", "paper")
#: examples whose mean length is the paper preset's context ``ctx`` (PAPER_PROTOCOL §3: 128 val examples)
PAPER_CTX_EXAMPLES = 128
# Settings that may differ when a run is resumed (they change speed, not what is trained).
RESUMABLE_CHANGES = ("device", "dtype", "compile")
#: the largest learning rate accepted: AdamW moves each weight by about lr a step, so more is surely a typo
#: (1e300 used to end in a traceback from the optimizer's float32 arithmetic)
MAX_LR = 10.0
#: the default evaluations' estimated cost as a fraction of the training compute (see above)
EVAL_BUDGET = 0.03
#: evenly spaced checkpoints by default, besides the log-spaced ones
CHECKPOINTS_SPREAD = 10


@runtime_checkable
class TrainHooks(Protocol):
    """What the training loop calls; ``quietlab.monitor.Monitor`` implements it.

    - ``attach(model, task, store, run_cfg)``: once before training (also on resume). ``run_cfg`` is
      the TrainConfig with ``steps`` resolved (set even when the budget was given as ``flops``).
    - ``after_backward(step, model)``: during update ``step`` (1-based), after ``loss.backward()`` and
      before clipping and the optimizer step; the gradients are in ``p.grad``.
    - ``after_step(step, model)``: with the model after update ``step``, before that step's
      evaluation and checkpoint; step 0 (the untrained model) once, after its evaluation and checkpoint.
    - ``on_train_loss(steps, losses)``: the per-step training losses (lists of int and float) logged
      since the last call, in step order, handed over at each flush (at the latest before every
      evaluation and checkpoint, and at the end).
    - ``on_eval(step, model, metrics)``: after each evaluation of the model at ``step`` (metrics is the
      dict just logged; step 0 is the untrained model).
    - ``on_checkpoint(step, model)``: after each checkpoint is taken (step 0 included); its file may still
      be on its way to the disk (``CheckpointWriter``): it is complete when the next checkpoint is taken
      and when ``train`` returns.
    - ``status() -> str``: a short text shown in the progress bar.

    ``model`` is always the plain (uncompiled) Transformer; the loop puts it back in train mode.
    """

    def attach(self, model, task, store, run_cfg) -> None: ...

    def after_backward(self, step: int, model) -> None: ...

    def after_step(self, step: int, model) -> None: ...

    def on_train_loss(self, steps: list[int], losses: list[float]) -> None: ...

    def on_eval(self, step: int, model, metrics: dict) -> None: ...

    def on_checkpoint(self, step: int, model) -> None: ...

    def status(self) -> str: ...


@dataclass
class TrainConfig:
    # task
    task: str = "addition"
    task_sizes: dict = field(default_factory=dict)
    preset: str = "quietlab"  # quietlab | paper: tasks, model, recipe and accounting of the quiet-feature study
    # model (TransformerConfig's fields; vocab_size and seq_len come from the task)
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_mlp: int | None = None
    attention: str = "softmax"
    tau: float | None = None
    norm_form: str = "std"
    heat_start: float = 3.0
    heat_fraction: float = 0.5
    # optimisation (the paper's recipe)
    lr: float = 1e-3
    batch_size: int = 64
    steps: int | None = None  # give steps or flops
    flops: float | None = None  # budget in FLOPs (budget.py); steps = floor(flops / FLOPs per step)
    warmup_fraction: float = 0.1
    min_lr_fraction: float = 0.1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    # evaluation, logging, checkpoints
    eval_every: int | None = None  # None: about 50 evenly spread + log-spaced, thinned to EVAL_BUDGET
    eval_per_decade: float = 10  # log-spaced evaluations: 0, 1, 2, 3, 4, 5, 6, 8, 10, 13, 16, ...
    eval_examples: int = 512
    log_every: int = 1
    checkpoint_every: int | None = None  # None: CHECKPOINTS_SPREAD checkpoints spread evenly
    checkpoint_per_decade: float = 3  # plus log-spaced checkpoints: 0, 1, 2, 5, 10, 22, 46, 100, ...
    data_chunk: int = 16  # steps of examples drawn per task.sample call (part of what defines the data)
    # hardware
    device: str = "auto"  # auto: cuda if available, else cpu
    dtype: str = "auto"  # auto: bf16 autocast on cuda, fp32 on cpu
    compile: bool = False  # torch.compile forward + loss (on GPU with CUDA graphs: mode="reduce-overhead")

    # --- construction ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def validate(self) -> None:
        """A ValueError naming the first bad setting and what is allowed."""
        self.check_types()
        if self.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.preset == "paper" and (self.warmup_fraction, self.min_lr_fraction) != (0.1, 0.1):
            raise ValueError("the paper preset's learning-rate schedule is fixed (10% warm-up from 0.01·lr, cosine "
                             "to 0.1·lr): leave warmup_fraction and min_lr_fraction at 0.1")
        if (self.steps is None) == (self.flops is None):
            raise ValueError("give the length of training as steps (--steps) or as a FLOPs budget (--flops), not both"
                             if self.steps is not None else "give --steps or --flops")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"--steps must be a whole number >= 1, got {self.steps!r}")
        if self.flops is not None and not (self.flops > 0 and math.isfinite(self.flops)):
            raise ValueError(f"--flops must be a positive number, got {self.flops!r}")
        for name in ("d_model", "n_layers", "n_heads", "batch_size", "eval_examples", "log_every", "data_chunk"):
            if getattr(self, name) < 1:
                raise ValueError(f"{_flag(name)} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "checkpoint_every", "d_mlp"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{_flag(name)} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.lr <= MAX_LR:
            raise ValueError(f"--lr must be a number in (0, {MAX_LR:g}], got {self.lr}")
        if not 0 <= self.seed < 2**63:  # numpy's seeds are non-negative, torch's 64-bit
            raise ValueError(f"--seed must be a whole number in [0, 2**63), got {self.seed}")
        if self.attention not in VARIANTS:
            raise ValueError(f"--attention must be one of {', '.join(VARIANTS)}, got {self.attention!r}")
        if self.norm_form not in NORM_FORMS:
            raise ValueError(f"--norm-form must be one of {', '.join(NORM_FORMS)}, got {self.norm_form!r}")
        if self.tau is not None and not (self.tau > 0 and math.isfinite(self.tau)):
            raise ValueError(f"--tau must be a finite number > 0, got {self.tau}")
        if not 0 < self.heat_fraction <= 1:
            raise ValueError(f"--heat-fraction must be in (0, 1], got {self.heat_fraction}")
        if not (self.heat_start > 0 and math.isfinite(self.heat_start)):
            raise ValueError(f"--heat-start must be a finite number > 0, got {self.heat_start}")
        for name in ("eval_per_decade", "checkpoint_per_decade"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if not 0 <= self.min_lr_fraction <= 1:
            raise ValueError(f"min_lr_fraction must be in [0, 1], got {self.min_lr_fraction}")
        if self.weight_decay < 0 or self.grad_clip <= 0 or not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError("weight_decay must be >= 0, grad_clip > 0 and betas in [0, 1)")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        resolve_device(self.device)
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"--d-model ({self.d_model}) must split into --heads ({self.n_heads}) heads of even size")

    def check_types(self) -> None:
        """Each setting of the type its field declares (a config.json edited by hand may hold anything)."""
        kinds = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "dict": (dict,)}
        for f in dataclasses.fields(self):
            declared = str(f.type).replace(" ", "").split("|")
            value = getattr(self, f.name)
            if value is None and "None" in declared:
                continue
            allowed = tuple(t for k in declared for t in kinds.get(k, ()))
            if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                want = " or ".join("a number" if k == "float" else "a whole number" if k == "int" else
                                   "none" if k == "None" else f"a {k}" for k in declared)
                raise ValueError(f"{f.name} must be {want}, got {value!r}")

    def build_task(self):
        from ..tasks import get_task

        return get_task(self.task, preset=self.preset, **self.task_sizes)

    @property
    def paper(self) -> bool:
        return self.preset == "paper"

    def model_config(self, task) -> TransformerConfig:
        """The model: quietlab's Transformer++, or under the paper preset the study's (PyTorch's default
        initialisation, RMSNorm eps 1e-5, interleaved RoPE, SwiGLU hidden int(8d/3) rounded up to even)."""
        options = dict(n_heads=self.n_heads, attention=self.attention, tau=self.tau, norm_form=self.norm_form,
                       heat_start=self.heat_start, heat_fraction=self.heat_fraction)
        if self.paper:
            from ..models.paper import paper_config

            if self.d_mlp is not None:
                options["d_mlp"] = self.d_mlp
            return paper_config(len(task.vocab), task.seq_len, self.d_model, self.n_layers, **options)
        return TransformerConfig(vocab_size=len(task.vocab), seq_len=task.seq_len, d_model=self.d_model,
                                 n_layers=self.n_layers, d_mlp=self.d_mlp, **options)

    def context(self, task) -> float:
        """The paper preset's ctx: the mean tokens through the first end token of PAPER_CTX_EXAMPLES held-out
        examples, drawn with the seed of the run's evaluation batch (the study used 128 of its val set)."""
        return mean_context(task.sample(PAPER_CTX_EXAMPLES, seed=derive_seed(self.seed, _EVAL), split="test"))

    def total_steps(self, task) -> int:
        if self.steps is not None:
            return int(self.steps)
        if self.paper:
            return paper_steps_for_flops(self.flops, self.n_layers, self.d_model, self.context(task), self.batch_size)
        return steps_for_flops(self.flops, self.model_config(task), self.batch_size, task.seq_len)

    def flops_accounting(self, task) -> tuple[float, float]:
        """(training FLOPs per token, per step) as the preset counts them: quietlab's 6·N + 6·L·seq_len·d on
        every token of the padded examples (budget.py); the paper's 6·(12·L·d² + L·ctx·d) on ctx tokens per
        example."""
        if self.paper:
            ctx = self.context(task)
            per_token = 6 * paper_flops_per_token(self.n_layers, self.d_model, ctx)
            return per_token, per_token * ctx * self.batch_size
        model_cfg = self.model_config(task)
        return flops_per_token(model_cfg), flops_per_step(model_cfg, self.batch_size, task.seq_len)

    def lr_at(self, step: int, total: int) -> float:
        """The learning rate of update ``step`` (0-based) of ``total`` (schedule.py)."""
        if self.paper:
            return paper_lr_at(step, total, self.lr)
        return lr_at(step, total, self.lr, self.warmup_fraction, self.min_lr_fraction)

    def make_optimizer(self, model) -> torch.optim.AdamW:
        """AdamW; weight decay on linear-layer matrices only, or under the paper preset on every parameter."""
        return make_optimizer(model, self.lr, self.weight_decay, (self.beta1, self.beta2), decay_all=self.paper)

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """The autocast dtype (None: plain fp32); ``auto`` is bf16 on CUDA, except under the paper preset,
        which trains in fp32 as the study did."""
        return resolve_dtype("fp32" if self.paper and self.dtype == "auto" else self.dtype, device)


def _flag(name: str) -> str:
    return "--" + {"n_layers": "layers", "n_heads": "heads"}.get(name, name).replace("_", "-")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} asked for, but no CUDA GPU is available (use auto or cpu)")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return dev


def set_matmul_precision(cfg: TrainConfig, device: torch.device) -> None:
    """On CUDA, TF32 matrix products for quietlab's runs; the paper preset's fp32 keeps PyTorch's default
    full-precision float32 products, as the study's code ran."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = not cfg.paper
        torch.backends.cudnn.allow_tf32 = not cfg.paper


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if dtype == "bf16" or (dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return None


# ------------------------------------------------------------------------------------------------
def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed that is a pure function of (seed, *keys)."""
    state = np.random.SeedSequence([int(seed) & (2**63 - 1), *keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


_DATA, _EVAL = 0x7A11, 0xE7A1


class ExampleStream:
    """Training examples as a pure function of (seed, step), drawn a chunk of steps at a time. On a GPU
    the next chunk is generated in a background thread while the current one trains; on the CPU it is
    drawn in place (a drawing thread beside torch's own threads halved the speed on 2 cores: 600 steps
    of the demo's model took 74.7 s with it, 33.5 s without)."""

    def __init__(self, task, seed: int, batch_size: int, chunk: int, device: torch.device):
        self.task, self.seed, self.batch_size, self.chunk, self.device = task, seed, batch_size, chunk, device
        self.prefetch = device.type == "cuda"
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="quietlab-data")
        self._futures: dict[int, Any] = {}
        self._current: tuple[int, torch.Tensor, torch.Tensor] | None = None

    def _make(self, c: int):
        b = self.task.sample(self.chunk * self.batch_size, seed=derive_seed(self.seed, _DATA, c), split="train")
        tokens = torch.as_tensor(b.tokens, dtype=torch.long)
        mask = torch.as_tensor(b.loss_mask, dtype=torch.bool)
        if self.device.type == "cuda":
            tokens, mask = tokens.pin_memory(), mask.pin_memory()
        return tokens, mask

    def _get(self, c: int):
        fut = self._futures.pop(c, None)
        tokens, mask = fut.result() if fut is not None else self._make(c)
        for old in [k for k in self._futures if k < c]:
            self._futures.pop(old).cancel()
        if self.prefetch and c + 1 not in self._futures:
            self._futures[c + 1] = self._pool.submit(self._make, c + 1)
        nb = self.device.type == "cuda"
        return tokens.to(self.device, non_blocking=nb), mask.to(self.device, non_blocking=nb)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, loss_mask) of update ``step`` (1-based)."""
        c, i = divmod(step - 1, self.chunk)
        if self._current is None or self._current[0] != c:
            self._current = (c, *self._get(c))
        _, tokens, mask = self._current
        rows = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return tokens[rows], mask[rows]

    def close(self):
        for f in self._futures.values():
            f.cancel()
        self._pool.shutdown(wait=True)


# ------------------------------------------------------------------------------------------------
class _StopRequested:
    """Ctrl-C asks the loop to stop at the next step boundary (after a checkpoint); a second one aborts.
    A process that ignores SIGINT (nohup, a background job) keeps ignoring it."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            old = signal.getsignal(signal.SIGINT)
            if old is not signal.SIG_IGN:
                self._old = old
                signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


class TrainingInterrupted(KeyboardInterrupt):
    """Raised by ``train`` after Ctrl-C, once a checkpoint of the current step is safely written."""

    def __init__(self, step: int, run_dir):
        super().__init__(f"interrupted at step {step}; continue with --resume (run folder {run_dir})")
        self.step, self.run_dir = step, run_dir


def _progress_bar(enabled: bool, total: int, start: int):
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("[bold]train"), BarColumn(bar_width=24), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("<"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                   console=Console(stderr=True), transient=False)
    bar.add_task("train", total=total, completed=start, info="")
    return bar


def _fmt_rate(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"


def check_resumable(saved: dict, cfg: TrainConfig) -> None:
    """A ValueError if ``cfg`` changes what a resumed run would train (anything but device/dtype/compile)."""
    mine = cfg.to_dict()
    diffs = [f"{k} (run has {saved.get(k)!r}, given {v!r})" for k, v in mine.items()
             if k not in RESUMABLE_CHANGES and k in saved and saved[k] != v]
    if diffs:
        raise ValueError("--resume with settings that differ from the run's config.json: " + "; ".join(diffs))


def run_schedules(cfg: TrainConfig, total: int) -> tuple[list[int], list[int]]:
    """(evaluation steps, checkpoint steps) of a run of ``total`` steps (see the module docstring)."""
    if cfg.eval_every:
        evals = schedule_steps(total, cfg.eval_every, cfg.eval_per_decade)
    else:
        eval_cost = cfg.eval_examples / (3 * cfg.batch_size)  # a forward pass is a third of a training step
        evals = budgeted_steps(total, max(1, round(total / 50)), cfg.eval_per_decade, eval_cost, EVAL_BUDGET)
    every = cfg.checkpoint_every or max(1, -(-total // CHECKPOINTS_SPREAD))
    return evals, schedule_steps(total, every, cfg.checkpoint_per_decade)


def train(cfg: TrainConfig, run_dir, hooks: TrainHooks | None = None, progress: bool = True,
          resume: bool = False) -> dict:
    """Train ``cfg`` into ``run_dir``; returns the final metrics (last evaluation, last train loss, totals).

    ``resume=True`` continues the run in ``run_dir`` from its last complete checkpoint (a fresh start if
    it has none); without it, an existing non-empty ``run_dir`` is an error.

    Everything that can be checked is checked before the folder is touched (settings, the task's sizes,
    that both sides of the task can be drawn from); then the run holds the folder's writer lock
    (runs/lock.py) until it returns. A folder this call created is removed again if the run fails before
    its first checkpoint.
    """
    cfg.validate()
    if cfg.compile and resolve_device(cfg.device).type == "cuda":
        start_compile_workers()
    task = cfg.build_task()
    eval_batch = _draw(task, cfg.eval_examples, derive_seed(cfg.seed, _EVAL), "test")
    _draw(task, cfg.batch_size, derive_seed(cfg.seed, _DATA, 0), "train")
    folder = RunFolder(run_dir)
    created = not folder.path.exists()
    with RunLock(folder.path, create=True):
        try:
            return _train(cfg, folder, task, eval_batch, hooks, progress, resume)
        except BaseException:
            if created and not folder.checkpoints():  # nothing of this run to keep or resume
                shutil.rmtree(folder.path, ignore_errors=True)
            raise


def start_compile_workers() -> None:
    """Start Inductor's pool of compile workers now rather than when Dynamo hands it the traced graph, so
    that their start-up overlaps building the task and model and tracing (on an H200, bfs-11 d_model 256
    × 4, empty caches: 26.6 s to the end of the first step against 34.6 s, one measurement of each,
    benchmarks/compile_cost.py's ``model_pool`` and ``model`` arms). A private torch function: where it is
    missing, torch starts the pool itself as before."""
    try:
        from torch._inductor.async_compile import maybe_warm_pool
    except ImportError:
        return
    maybe_warm_pool()


def _draw(task, n: int, seed: int, split: str):
    try:
        return task.sample(n, seed=seed, split=split)
    except RuntimeError as exc:  # rejection sampling found too few distinct examples on that side
        raise ValueError(f"{task.name} at sizes {task.sizes} cannot be trained on: {exc}; choose larger sizes") from None


def _train(cfg: TrainConfig, folder: RunFolder, task, eval_batch, hooks, progress: bool, resume: bool) -> dict:
    if not resume and holds_files(folder.path):
        raise ValueError(f"{folder.path} already exists; pass --resume to continue that run, or choose another --out")
    if resume and folder.exists():
        check_resumable(folder.read_config(), cfg)

    device = resolve_device(cfg.device)
    amp_dtype = cfg.autocast_dtype(device)
    model_cfg = cfg.model_config(task)
    total = cfg.total_steps(task)
    run_cfg = dataclasses.replace(cfg, steps=total)
    tokens_per_step = cfg.batch_size * task.seq_len
    token_flops, step_flops = cfg.flops_accounting(task)
    set_matmul_precision(cfg, device)

    torch.manual_seed(cfg.seed)
    model = Transformer(model_cfg).to(device)
    optimizer = cfg.make_optimizer(model)

    ckpt = None
    if resume:
        remove_stale_temp_files(folder.path)
        ckpt = latest_checkpoint(folder.path, map_location="cpu")
    store = folder.store()
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])
        start = int(ckpt["step"])
        del ckpt
    else:
        start = -1  # nothing done yet, not even the step-0 evaluation
        folder.write_config({
            **cfg.to_dict(),
            "model_config": model_cfg.to_dict(),
            "resolved": {"steps": total, "device": str(device), "autocast": str(amp_dtype or "fp32"),
                         "non_embedding_params": non_embedding_params(model_cfg),
                         "flops_per_token": token_flops, "flops_per_step": step_flops,
                         "tokens_per_step": tokens_per_step, "seq_len": task.seq_len, "vocab": "".join(task.vocab),
                         **({"ctx": cfg.context(task)} if cfg.paper else {})},
            "hooks": None if hooks is None else type(hooks).__name__,  # None: no monitor, and `--resume` keeps it so
            "torch_version": torch.__version__,
            "quietlab_version": __version__,
        })
    store.truncate_after(start)
    model.set_progress(max(start, 0) / total)
    state = {"loss": _last(store, "train/loss"), "acc": _last(store, "eval/exact_match"), "rate": 0.0, "last_eval": {}}

    eval_steps, ckpt_steps = (set(s) for s in run_schedules(cfg, total))
    saved_config = cfg.to_dict()
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext

    def forward_loss(tokens, mask):
        with autocast():
            logits = model(tokens)
        return masked_loss(logits, tokens, mask)

    # forward and loss in one compiled graph; on GPU replayed as a CUDA graph ("reduce-overhead"), which
    # removes the kernel-launch cost that dominates small models (benchmarks/train_speed.py)
    cuda_graphs = cfg.compile and device.type == "cuda"
    train_loss = (torch.compile(forward_loss, mode="reduce-overhead" if cuda_graphs else None)
                  if cfg.compile else forward_loss)
    stream = ExampleStream(task, cfg.seed, cfg.batch_size, cfg.data_chunk, device)

    if hooks is not None:
        hooks.attach(model, task, store, run_cfg)

    pending: list[tuple[int, torch.Tensor, float]] = []  # (step, loss on device, lr) not yet in the store
    writer = CheckpointWriter(folder.path)
    spent = {"eval": 0.0, "checkpoint": 0.0}  # wall seconds the loop spent on them (checkpoints: the copy)
    clock = {"t": time.perf_counter(), "steps": 0, "flushed": time.perf_counter()}

    def flush(step: int) -> None:
        """Write pending train metrics (one device sync for all of them) and the throughput since last time."""
        rows: dict[int, dict[str, float]] = {}
        if pending:
            losses = torch.stack([loss for _, loss, _ in pending]).tolist()
            for (s, _, lr), loss in zip(pending, losses):
                rows[s] = {"train/loss": loss, "train/lr": lr, "train/tokens": s * tokens_per_step,
                           "train/flops": s * step_flops}
            state["loss"] = losses[-1]
            if hooks is not None:
                hooks.on_train_loss([s for s, _, _ in pending], losses)
            pending.clear()
        now = time.perf_counter()
        if clock["steps"]:
            state["rate"] = clock["steps"] * tokens_per_step / max(now - clock["t"], 1e-9)
            rows.setdefault(step, {}).update({"train/tokens_per_s": state["rate"], "train/elapsed_s": now - t_start})
        store.log_steps(rows)
        clock.update(t=now, steps=0, flushed=now)

    def evaluate_now(step: int) -> None:
        flush(step)
        t = time.perf_counter()
        metrics = evaluate(model, task, eval_batch, device, amp_dtype)
        spent["eval"] += time.perf_counter() - t
        store.log(step, {**metrics, "train/eval_s": spent["eval"]})
        state["acc"], state["last_eval"] = metrics["eval/exact_match"], {"step": step, **metrics}
        if hooks is not None:
            hooks.on_eval(step, model, metrics)
            model.train()
        clock.update(t=time.perf_counter(), steps=0)  # evaluation time is not training throughput

    def checkpoint_now(step: int, call_hook: bool = True) -> None:
        flush(step)
        t = time.perf_counter()
        writer.save(step, model, optimizer, saved_config)
        spent["checkpoint"] += time.perf_counter() - t
        store.log(step, {"train/checkpoint_s": spent["checkpoint"]})
        if hooks is not None and call_hook:
            hooks.on_checkpoint(step, model)
            model.train()
        clock.update(t=time.perf_counter(), steps=0)

    def show(bar, step: int) -> None:
        if bar is None:
            return
        info = f"loss {state['loss']:.4f} · exact {state['acc']:.1%} · {_fmt_rate(state['rate'])} tok/s"
        if hooks is not None:
            status = hooks.status()
            if status:
                info += f" · {status}"
        bar.update(0, completed=step, info=info)

    bar = _progress_bar(progress, total, max(start, 0))
    t_start = time.perf_counter()
    try:
        with bar if bar is not None else contextlib.nullcontext(), _StopRequested() as stop:
            if start < 0:
                evaluate_now(0)
                checkpoint_now(0)
                if hooks is not None:
                    hooks.after_step(0, model)
                    model.train()
                start = 0
            show(bar, start)
            model.train()
            t_first = time.perf_counter()
            for step in range(start + 1, total + 1):
                tokens, mask = stream.batch(step)
                lr = cfg.lr_at(step - 1, total)
                set_lr(optimizer, lr)
                if cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                loss = train_loss(tokens, mask)
                loss.backward()
                if step == start + 1:  # what compiling (and the first step) cost
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    store.log(step, {"train/first_step_s": time.perf_counter() - t_first})
                if hooks is not None:
                    hooks.after_backward(step, model)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                model.set_progress(step / total)
                clock["steps"] += 1
                if step % cfg.log_every == 0 or step == total:
                    pending.append((step, loss.detach().clone(), lr))  # a CUDA graph reuses its output
                if hooks is not None:
                    hooks.after_step(step, model)
                    if not model.training:
                        model.train()
                if step in eval_steps:
                    evaluate_now(step)
                if step in ckpt_steps:
                    checkpoint_now(step)
                if time.perf_counter() - clock["flushed"] > 1.0:
                    flush(step)
                    show(bar, step)
                if stop.requested and step < total:
                    if step not in ckpt_steps:
                        checkpoint_now(step, call_hook=False)
                    raise TrainingInterrupted(step, folder.path)
            flush(total)
            show(bar, total)
    finally:
        try:
            writer.close()
        finally:
            stream.close()
            store.close()

    with folder.store() as s:
        last = state["last_eval"] or _final_eval(s, total)  # the latter when resuming a finished run
        losses = s.series("train/loss")[1]
    return {
        **last,
        "train/loss": losses[-1] if losses else None,
        "steps": total,
        "train/tokens": total * tokens_per_step,
        "train/flops": total * step_flops,
        "wall_s": time.perf_counter() - t_start,
        "run_dir": str(folder.path),
    }



def _final_eval(store, step: int) -> dict:
    out = {"step": step}
    for name in store.metric_names("eval/"):
        steps, values = store.series(name)
        if steps and steps[-1] == step:
            out[name] = values[-1]
    return out


def _last(store, name: str) -> float:
    values = store.series(name)[1]
    return values[-1] if values else float("nan")
