"""`quietlab eureka`: the Eureka-moment study over seeds, softmax against its fixes and a CNN.

Every variant is trained over K seeds on the 2×2 indicator task (tasks/indicator.py), each run a normal
run folder (config.json, metrics.sqlite). Logged: train loss; at every evaluation the validation loss
(plain cross-entropy), accuracy and *decision accuracy*, attention entropy per layer and head, mean
|grad| of Q, K, V per layer and head; at a few evaluations linear probes of the task's features on the
CLS token of every layer (the CNN: each stage's pooled output).

Decision accuracy: on the validation examples whose two targets differ in class, among those where the
model answers with one of the two, the fraction where it picks the one the indicators select. A model
that ignores the indicators sits at 50% (it cannot tell which target to use), one that has made the
intermediate decision near 100%; it does not depend on how well the targets themselves are recognised.

Per variant (``summarize``):
- success: final decision accuracy ≥ ``SUCCESS`` = 75%, midway between the indicator-ignoring 50% and
  the indicator-using 100% (the study's code has no threshold; the spec's proposal, val accuracy ≥ 75%,
  depends on the target accuracy);
- Eureka step: the onset of the main transition (``features.main_transition``) the detector (monitor/transitions.py) finds in the
  validation loss of a successful run; also the first evaluation with decision accuracy ≥ 75%;
- steps to 95% of the softmax baseline's final accuracy (the median over its seeds), per run;
- final accuracy;
- on the plateau (``plateau_diagnostics``: the evaluations after step 0 before decision accuracy first reaches
  ``LEAVING`` = 60%), the study's proposed cause: the mean |grad| of W_Q and W_K against W_V's, and the
  normalised attention entropy (near 1: near-uniform attention, whose softmax passes W_Q and W_K small
  gradients).

Scales: ``medium`` is the spec's reduced scale for a GPU (§5); ``paper`` is the study's configuration (EUREKA_SPEC.md §2-3: 56×56 from MNIST + Fashion-MNIST,
patch 4, depth 7, width 256, 4 heads, MLP ratio 2, batch 512, AdamW wd 0.05, 5 warm-up epochs then
cosine to 1e-6, label smoothing 0.1, 300 epochs of 117 steps); ``small`` runs on a laptop CPU (16×16
from scikit-learn's 8×8 digits, see SMALL's comment). ``train_seeds`` trains a ViT variant's seeds as one
vmapped computation (train/packed.py) on a GPU, one after another elsewhere.

A study cut short resumes (``run_eureka(..., resume=True)``, ``quietlab eureka --resume``): ``OUT/eureka.json``
records what was asked, finished runs are kept, and the others continue from their checkpoints (``_RunWriter``)
to the numbers an uncut run gives.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing as mp
import os
import shutil
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..runs import RunFolder, write_atomic
from ..runs.lock import RunLock, holds_files

MODEL_VARIANTS = ("softmax", "temperature", "normsoftmax", "heat", "qk_rescale", "cnn")
DEFAULT_VARIANTS = ("softmax", "temperature", "normsoftmax", "heat", "cnn")
SUCCESS = 0.75
CHECKPOINT_EVERY = 10  # a checkpoint at every tenth evaluation (see _RunWriter)
LEAVING = 0.6  # decision accuracy at which a run has left the plateau's 45-55% (plateau_diagnostics)


@dataclass
class EurekaConfig:
    images: str = "paper"  # paper: MNIST + Fashion-MNIST 28×28 tiles; small: scikit-learn 8×8 digits
    task_variant: str = "base"  # tasks/indicator.py VARIANTS
    patch_size: int = 4
    d_model: int = 256
    n_layers: int = 7
    n_heads: int = 4
    mlp_ratio: float = 2.0
    drop_path: float = 0.1
    batch_size: int = 512
    steps: int = 35_100
    warmup_steps: int = 585
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    # "sgd": SGD with momentum 0.9 and coupled weight decay, for checking the study's mechanism (small Q/K
    # gradients slow W_Q and W_K only where the step scales with the gradient); the study uses AdamW
    optimizer: str = "adamw"
    label_smoothing: float = 0.1
    # peak learning rates (the study's README; temperature and cnn have no command there: the baseline's)
    lr: dict = field(default_factory=lambda: {"softmax": 5e-4, "temperature": 5e-4, "normsoftmax": 1e-5,
                                               "heat": 1e-4, "qk_rescale": 5e-4, "cnn": 5e-4})
    beta: float = 0.25  # temperature: the study's multiplier β of QKᵀ (quietlab's divisor τ = 1/β)
    norm_form: str = "var"  # NormSoftmax: the study's default command uses the variance
    heat_start: float = 3.0  # heat: β at step 0, half-cosine down to 1/√d_head
    heat_fraction: float = 0.5
    qk_grad_mode: str = "per_head_to_value_grad"  # qk_rescale's control
    cnn_widths: tuple = (64, 128, 256, 512)
    cnn_blocks: int = 1
    eval_every: int = 117
    eval_examples: int = 10_000
    stats_examples: int = 256  # attention entropy
    probe_evals: int = 6  # evaluations with probes, spread evenly (plus the last)
    probe_examples: int = 2000
    device: str = "auto"
    dtype: str = "auto"  # bf16 autocast on cuda, fp32 on cpu
    data_dir: str | None = None
    pack: bool | None = None  # train a ViT variant's seeds as one vmapped computation; None: on a GPU
    workers: int | None = None  # on the CPU: runs trained at once, each in a process of one torch thread; None: one per core

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "cnn_widths": list(self.cnn_widths)}


PAPER = EurekaConfig()
# The spec's reduced scale (8×8 tiles, 16×16 canvas, d_head 64 so τ₀ = 8 and the heat schedule carry over)
# shrunk for a 2-core CPU: patch 8 (one token a tile, with CLS five), one head of 64, two blocks, batch 256,
# 3,000 steps. There the softmax ViT sits at 50% decision accuracy and then learns the decision within one
# evaluation interval, at step 1,000-1,500, in 3 of 5 seeds (about 90 s a seed on one thread;
# benchmarks/results/cpu-2026-12-03-s6/eureka_small_patch8/, evaluated every 250 steps). The earlier
# setting, patch 4 (16 patches a canvas) at batch 64 and 600 steps, showed the plateau and no escape, nor did
# any ViT at patch 4 and batch 256 within 3,000 steps (benchmarks/results/cpu-2026-12-03-s4/). Five seeds of
# the five variants take over half an hour on 2 cores. NormSoftmax's rate, 3e-3, was picked from 3e-4, 1e-3,
# 3e-3 on seed 0 (at 1e-3 no seed of five learnt the decision; at 3e-3 three did); heat left the plateau at
# none of them, so it keeps the baseline's.
SMALL = EurekaConfig(images="small", patch_size=8, d_model=64, n_layers=2, n_heads=1, drop_path=0.0,
                     batch_size=256, steps=3000, warmup_steps=50, eval_every=100, eval_examples=512,
                     stats_examples=64, probe_evals=2, probe_examples=600, cnn_widths=(16, 32, 64, 128), cnn_blocks=1,
                     lr={"softmax": 1e-3, "temperature": 1e-3, "normsoftmax": 3e-3, "heat": 1e-3,
                         "qk_rescale": 1e-3, "cnn": 1e-3})
# EUREKA_SPEC.md §5's reduced scale for a GPU (untested there when written): 16×16 from 8×8 digits, patch 2
# (65 tokens, 4×4 patches per tile), depth 4, width 256 (d_head 64), batch 256, 8k steps, 400 warm-up
# steps, the heat schedule over the first half; the README's learning rates.
MEDIUM = dataclasses.replace(PAPER, images="small", patch_size=2, n_layers=4, batch_size=256, steps=8000, warmup_steps=400,
                             eval_every=100, eval_examples=4096, probe_evals=4, probe_examples=2000)
SCALES = {"small": SMALL, "medium": MEDIUM, "paper": PAPER}


def learning_rates(items: list[str], base: dict) -> dict:
    """``base`` (a scale's peak rates per variant) with ``VARIANT=RATE`` items applied: a ValueError
    naming the bad item if a variant is unknown or a rate is not a positive number."""
    rates = dict(base)
    for item in items:
        variant, _, rate = item.partition("=")
        if variant not in MODEL_VARIANTS:
            raise ValueError(f"--lr {item}: unknown variant {variant!r}; choose from {', '.join(MODEL_VARIANTS)}")
        try:
            value = float(rate)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"--lr {item}: the rate must be a positive number, as in normsoftmax=1e-4")
        rates[variant] = value
    return rates


def resolve_device(name: str) -> torch.device:
    from ..train.loop import resolve_device as resolve

    return resolve(name)


def load_task(cfg: EurekaConfig):
    from ..tasks.image_data import load_sources
    from ..tasks.indicator import IndicatorImages

    digits, targets = load_sources(cfg.images, cfg.data_dir)
    return IndicatorImages(digits, targets, cfg.task_variant)


def build_model(cfg: EurekaConfig, variant: str, image_size: int, n_classes: int):
    if variant not in MODEL_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(MODEL_VARIANTS)}, got {variant!r}")
    if variant == "cnn":
        from ..models.cnn import CNNConfig, ResNet

        return ResNet(CNNConfig(n_classes=n_classes, widths=tuple(cfg.cnn_widths), blocks_per_stage=cfg.cnn_blocks))
    from ..models.vit import ViT, ViTConfig

    attention = "softmax" if variant == "qk_rescale" else variant
    return ViT(ViTConfig(image_size=image_size, patch_size=cfg.patch_size, n_classes=n_classes, d_model=cfg.d_model,
                         n_layers=cfg.n_layers, n_heads=cfg.n_heads, mlp_ratio=cfg.mlp_ratio, drop_path=cfg.drop_path,
                         attention=attention, tau=1.0 / cfg.beta if variant == "temperature" else None,
                         norm_form=cfg.norm_form, heat_start=cfg.heat_start, heat_fraction=cfg.heat_fraction))


def decision_accuracy(pred: np.ndarray, labels: np.ndarray, if_equal: np.ndarray, if_unequal: np.ndarray) -> float:
    """Among examples whose two candidate answers differ and where the model gives one of them: how often the right one."""
    differ = if_equal != if_unequal
    chose = differ & ((pred == if_equal) | (pred == if_unequal))
    return float((pred[chose] == labels[chose]).mean()) if chose.any() else float("nan")


@torch.no_grad()
def evaluate(model, task, cfg: EurekaConfig, seed: int, step: int, device, autocast) -> dict[str, float]:
    """Validation loss, accuracy and decision accuracy on freshly drawn composites (the study redraws them)."""
    from ..train.loop import derive_seed

    rng = np.random.default_rng(derive_seed(seed, 0xE7A1, step))
    model.eval()
    losses, preds, parts = [], [], []
    for lo in range(0, cfg.eval_examples, 1024):
        idx = np.arange(lo, min(cfg.eval_examples, lo + 1024))
        x, y, feats = task.draw(idx, rng, "test")
        with autocast():
            logits = model(torch.from_numpy(x).to(device)).float()
        target = torch.from_numpy(y).to(device)
        losses.append(F.cross_entropy(logits, target, reduction="sum").item())
        preds.append(logits.argmax(-1).cpu().numpy())
        parts.append((y, feats["target_top"], feats["answer_if_unequal"]))
    model.train()
    pred = np.concatenate(preds)
    y, if_equal, if_unequal = (np.concatenate(p) for p in zip(*parts))
    return {"eval/loss": sum(losses) / len(y), "eval/acc": float((pred == y).mean()),
            "eval/decision_acc": decision_accuracy(pred, y, if_equal, if_unequal)}


@torch.no_grad()
def probe_cls(model, task, cfg: EurekaConfig, seed: int, step: int, device) -> list[tuple]:
    """Store rows of linear probes of every feature on the CLS token (CNN: pooled stage output) of every layer."""
    from ..monitor.probes import fit_features, split_probe_set
    from ..train.loop import derive_seed

    rng = np.random.default_rng(derive_seed(seed, 0x9B0E))  # the same probe set at every step
    x, _, feats = task.draw(np.arange(cfg.probe_examples), rng, "test")
    taps = [n for n in model.tap_names() if not n.endswith(".hook_pattern")]
    model.eval()
    acts: dict[str, list] = {}
    for lo in range(0, len(x), 512):
        _, out = model(torch.from_numpy(x[lo:lo + 512]).to(device), capture=taps)
        for name in taps:
            acts.setdefault(name, []).append(out[name][:, :1].float().cpu())
    model.train()
    acts = {l: torch.cat(a) for l, a in acts.items()}
    train_idx, test_idx = split_probe_set(len(x), seed=seed)
    rows = []
    for width in sorted({a.shape[-1] for a in acts.values()}):  # the CNN's stages differ in width: fit them apart
        same = {l: a for l, a in acts.items() if a.shape[-1] == width}
        results = fit_features(same, task.as_features(feats), train_idx, test_idx, bootstrap=0)
        rows += [row for r in results.values() for row in r.rows(step)]
    return rows


class _RunWriter:
    """One run's folder: its config, its train losses, its evaluations and its checkpoints (shared by the
    sequential and packed paths).

    Checkpoints (``checkpoint_steps``: every CHECKPOINT_EVERY-th evaluation, not the first or the last) hold the
    model, the optimizer's state, the random states and the training batches' generator, so that a run cut
    short resumes (``resume=True``: from ``checkpoint``, the newest readable one at or before ``at_most``) and
    gives what it would have given uninterrupted; the two newest are kept. A run folder with no checkpoint
    starts again from nothing."""

    def __init__(self, cfg: EurekaConfig, variant: str, seed: int, run_dir, task, model, device, amp, peak: float, log,
                 resume: bool = False, at_most: int | None = None):
        from ..train.loop import derive_seed

        self.cfg, self.variant, self.seed, self.task, self.device, self.log = cfg, variant, seed, task, device, log
        self.folder = RunFolder(run_dir)
        if self.folder.path.exists() and any(self.folder.path.iterdir()) and not resume:
            raise ValueError(f"{self.folder.path} already exists; choose another --out")
        self.autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp else _no_autocast
        self.checkpoint = _resume_point(self.folder, at_most) if resume else None
        if self.checkpoint is None:
            if self.folder.path.exists():
                shutil.rmtree(self.folder.path)
            self.folder.write_config({
                "recipe": "eureka", "variant": variant, "seed": seed, "attention": getattr(model.config, "attention", "cnn"),
                **cfg.to_dict(), "lr_peak": peak, "data_source": task.source, "model_config": model.config.to_dict(),
                "device": str(device), "autocast": str(amp or "fp32"), "n_params": sum(p.numel() for p in model.parameters()),
                "torch_version": torch.__version__})
        self.store = self.folder.store()
        self.batches = task.epoch_batches(seed, cfg.batch_size)
        self.rng = np.random.default_rng(derive_seed(seed, 0x7A11))
        self.start, self.wall_before = 0, 0.0  # wall_before: seconds of the sessions before, up to the checkpoint
        if self.checkpoint is not None:
            self.start = int(self.checkpoint["step"])
            self.store.truncate_after(self.start)
            for _ in range(self.start):  # the batches of the steps already taken
                next(self.batches)
            self.rng.bit_generator.state = self.checkpoint["config"]["data_rng"]
            self.wall_before = self.store.get("eureka", "wall_s") or 0.0
        ordered = sorted(set(range(0, cfg.steps + 1, cfg.eval_every)) | {cfg.steps})
        self.eval_steps = set(ordered)
        self.probe_steps = {ordered[round(i * (len(ordered) - 1) / max(1, cfg.probe_evals))] for i in range(cfg.probe_evals + 1)}
        self.checkpoint_steps = set(ordered[CHECKPOINT_EVERY:-1:CHECKPOINT_EVERY])
        stats = task.draw(np.arange(cfg.stats_examples), np.random.default_rng(seed), "test")[0]
        self.stats_x = torch.from_numpy(stats).to(device)
        self.pending: list[tuple[int, torch.Tensor]] = []

    def resume_into(self, model, optimizer=None, packed: bool = False) -> None:
        """Load the checkpoint's model and optimizer state (``optimizer``: one with ``load_state_dict``) and its
        random states; the model's training progress (heat treatment) follows. ``packed``: whether this run
        now trains in a pack, which must be as it was (their optimizer states differ)."""
        from ..train.checkpoint import set_rng_state

        if self.checkpoint["config"].get("packed", False) != packed:
            was = "in a pack of seeds" if not packed else "alone"
            raise ValueError(f"{self.folder.path} was checkpointed training {was}; resume it on the same kind of device "
                             "(seeds are packed on a GPU, not on the CPU)")
        model.load_state_dict(self.checkpoint["model"])
        if optimizer is not None:
            optimizer.load_state_dict(self.checkpoint["optimizer"])
        set_rng_state(self.checkpoint["rng"])

    def save(self, step: int, model, optimizer, wall_s: float, packed: bool = False) -> None:
        """A checkpoint at ``step`` (after its evaluation), then the older ones but the newest removed."""
        from ..train.checkpoint import save_checkpoint

        self.store.put("eureka", "wall_s", self.wall_before + wall_s)
        save_checkpoint(self.folder.path, step, model, optimizer, {"variant": self.variant, "seed": self.seed,
                                                                   "packed": packed, "data_rng": self.rng.bit_generator.state})
        for _, path in self.folder.checkpoints()[:-2]:
            path.unlink(missing_ok=True)

    def next_batch(self):
        x, y, _ = self.task.draw(next(self.batches), self.rng, "train")
        return torch.from_numpy(x), torch.from_numpy(y)

    def observe(self, step: int, model, grads: dict) -> None:
        from ..monitor.monitor import attention_entropy

        cfg = self.cfg
        metrics = {**evaluate(model, self.task, cfg, self.seed, step, self.device, self.autocast), **grads}
        metrics.update(attention_entropy(model, self.stats_x))
        if self.pending:
            values = torch.stack([loss for _, loss in self.pending]).tolist()
            for (s, _), value in zip(self.pending, values):
                self.store.log(s, {"train/loss": value})
            self.pending.clear()
        self.store.log(step, metrics)
        if step in self.probe_steps:
            self.store.log_probes(probe_cls(model, self.task, cfg, self.seed, step, self.device))
        if self.log:
            self.log(f"{self.variant} seed {self.seed} step {step}: acc {metrics['eval/acc']:.3f} "
                     f"decision {metrics['eval/decision_acc']:.3f} loss {metrics['eval/loss']:.3f}")

    def close(self, wall_s: float) -> dict:
        """The run is complete: its total wall time (over every session it took) and final metrics."""
        self.store.put("eureka", "wall_s", self.wall_before + wall_s)
        self.store.put("eureka", "complete", True)
        self.store.close()
        return finished_run(self.folder.path)


def finished_run(run_dir) -> dict | None:
    """(variant, seed, run_dir, wall_s and final metrics) of a complete run folder, else None."""
    folder = RunFolder(run_dir)
    if not (folder.path / "metrics.sqlite").is_file():
        return None
    with folder.store() as s:
        if not s.get("eureka", "complete"):
            return None
        final = {name: s.series(name)[1][-1] for name in ("eval/acc", "eval/decision_acc", "eval/loss")}
        wall = s.get("eureka", "wall_s")
    cfg = folder.read_config()
    return {"variant": cfg["variant"], "seed": cfg["seed"], "run_dir": str(folder.path), "wall_s": wall, **final}


def _resume_point(folder: RunFolder, at_most: int | None = None) -> dict | None:
    """The newest readable checkpoint of ``folder`` at or before step ``at_most`` (None: any), or None."""
    from ..train.checkpoint import readable_checkpoints, remove_stale_temp_files

    if not folder.path.is_dir():
        return None
    remove_stale_temp_files(folder.path)
    return next((payload for step, payload in readable_checkpoints(folder.path)
                 if at_most is None or step <= at_most), None)


def _setup(cfg: EurekaConfig, variant: str, task):
    from ..train.loop import resolve_dtype

    device = resolve_device(cfg.device)
    return device, resolve_dtype(cfg.dtype, device), cfg.lr[variant]


def _optimizer(cfg: EurekaConfig, model, peak: float) -> torch.optim.Optimizer:
    from ..train.schedule import make_optimizer, param_groups

    if cfg.optimizer == "sgd":
        return torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=peak, momentum=0.9)
    if cfg.optimizer != "adamw":
        raise ValueError(f"optimizer must be adamw or sgd, got {cfg.optimizer!r}")
    return make_optimizer(model, peak, cfg.weight_decay, betas=(0.9, 0.999))


def _lr(cfg: EurekaConfig, step: int, peak: float) -> float:
    from ..train.schedule import lr_at

    return lr_at(step - 1, cfg.steps, peak, cfg.warmup_steps / cfg.steps, min(1.0, cfg.min_lr / peak))


def train_run(cfg: EurekaConfig, variant: str, seed: int, run_dir, task=None, log=None, resume: bool = False) -> dict:
    """Train one variant at one seed into ``run_dir``; returns its final metrics. ``resume``: continue the run
    in ``run_dir`` from its newest checkpoint (a complete run is returned as it is)."""
    from ..models.attention import rescale_qk_grad
    from ..monitor.monitor import qkv_grad_stats
    from ..train.schedule import set_lr

    if resume and (done := finished_run(run_dir)) is not None:
        return done
    task = task if task is not None else load_task(cfg)
    device, amp, peak = _setup(cfg, variant, task)
    torch.manual_seed(seed)
    model = build_model(cfg, variant, task.image_size, task.n_classes).to(device)
    optimizer = _optimizer(cfg, model, peak)
    run = _RunWriter(cfg, variant, seed, run_dir, task, model, device, amp, peak, log, resume)
    if run.checkpoint is not None:
        run.resume_into(model, optimizer)
    t0 = time.perf_counter()
    try:
        if run.start == 0:
            run.observe(0, model, {})
        model.train()
        for step in range(run.start + 1, cfg.steps + 1):
            x, y = run.next_batch()
            set_lr(optimizer, _lr(cfg, step, peak))
            with run.autocast():
                logits = model(x.to(device))
            loss = F.cross_entropy(logits.float(), y.to(device), label_smoothing=cfg.label_smoothing)
            loss.backward()
            if variant == "qk_rescale":
                for block in model.blocks:
                    rescale_qk_grad(block.attn, cfg.qk_grad_mode)
            grads = qkv_grad_stats(model) if step in run.eval_steps else {}  # after any rescaling, as the study logs
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            model.set_progress(step / cfg.steps)
            run.pending.append((step, loss.detach()))
            if step in run.eval_steps:
                run.observe(step, model, grads)
            if step in run.checkpoint_steps:
                run.save(step, model, optimizer, time.perf_counter() - t0)
    except BaseException:
        run.store.close()
        raise
    return run.close(time.perf_counter() - t0)


def train_packed(cfg: EurekaConfig, variant: str, seeds: list[int], out: Path, task, log=None,
                 resume: bool = False) -> list[dict]:
    """All seeds of one ViT variant as one vmapped computation (train/packed.py), each with its own AdamW
    state, batches and run folder; evaluated one by one from copies of their weights. ``resume``: continue
    from the newest step at which every run has a checkpoint (else start them all again)."""
    from ..monitor.monitor import qkv_grad_stats
    from ..train.packed import PackedAdamW, PackedModels

    device, amp, peak = _setup(cfg, variant, task)
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(build_model(cfg, variant, task.image_size, task.n_classes).to(device))
    dirs = [out / f"{variant}-seed{seed}" for seed in seeds]
    at = _common_checkpoint(dirs) if resume else None  # None: every run from step 0
    runs = [_RunWriter(cfg, variant, seed, d, task, m, device, amp, peak, log, resume, -1 if at is None else at)
            for seed, d, m in zip(seeds, dirs, models)]
    for run, model in zip(runs, models):
        if run.checkpoint is not None:
            run.resume_into(model, packed=True)
    packed = PackedModels(models)
    decayed = {k for k, p in packed.params.items() if k.rsplit(".", 1)[-1] == "weight" and p.ndim >= 3}  # as param_groups
    optimizer = PackedAdamW(packed, lr=peak, weight_decay=cfg.weight_decay, decayed=decayed, betas=(0.9, 0.999))
    if at is not None:
        for i, run in enumerate(runs):
            _PackedRow(optimizer, i).load_state_dict(run.checkpoint["optimizer"])
    progress = [b for k, b in packed.buffers.items() if k.endswith("attn.progress")]
    start = runs[0].start
    autocast = runs[0].autocast

    def loss_fn(model, x, y):
        with autocast():
            logits = model(x)
        return F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)

    def observe(step: int, grads: list[dict]) -> None:
        for i, run in enumerate(runs):
            run.observe(step, packed.load_into(i, models[i]), grads[i])

    t0 = time.perf_counter()
    try:
        if start == 0:
            observe(0, [{}] * len(runs))
        for b in progress:
            b.fill_(start / cfg.steps)
        for step in range(start + 1, cfg.steps + 1):
            xs, ys = zip(*(run.next_batch() for run in runs))
            optimizer.set_lr(_lr(cfg, step, peak))
            losses = packed.losses(loss_fn, torch.stack(xs).to(device), torch.stack(ys).to(device))
            losses.sum().backward()
            grads = [{}] * len(runs)
            if step in runs[0].eval_steps:
                grads = [_packed_qkv_stats(packed, i, models[i], qkv_grad_stats) for i in range(len(runs))]
            optimizer.step()
            packed.zero_grad()
            for b in progress:
                b.fill_(step / cfg.steps)
            for run, loss in zip(runs, losses.detach()):
                run.pending.append((step, loss))
            if step in runs[0].eval_steps:
                observe(step, grads)
            if step in runs[0].checkpoint_steps:
                for i, run in enumerate(runs):
                    run.save(step, packed.load_into(i, models[i]), _PackedRow(optimizer, i), time.perf_counter() - t0,
                             packed=True)
    except BaseException:
        for run in runs:
            run.store.close()
        raise
    wall = time.perf_counter() - t0
    return [run.close(wall) for run in runs]


class _PackedRow:
    """Model ``i``'s AdamW state in a PackedAdamW, with an optimizer's ``state_dict``/``load_state_dict``."""

    def __init__(self, optimizer, i: int):
        self.optimizer, self.i = optimizer, i

    def state_dict(self) -> dict:
        o = self.optimizer
        return {"exp_avg": o.m[self.i], "exp_avg_sq": o.v[self.i], "steps": o.steps}

    def load_state_dict(self, state: dict) -> None:
        o = self.optimizer
        o.m[self.i].copy_(state["exp_avg"])
        o.v[self.i].copy_(state["exp_avg_sq"])
        o.steps.copy_(state["steps"])


def _common_checkpoint(run_dirs: list[Path]) -> int | None:
    """The newest step at which every one of ``run_dirs`` has a checkpoint (a pack saves them together), or None."""
    steps = None
    for d in run_dirs:
        have = {s for s, _ in RunFolder(d).checkpoints()} if Path(d).is_dir() else set()
        steps = have if steps is None else steps & have
    return max(steps) if steps else None


def _packed_qkv_stats(packed, i: int, model, stats) -> dict:
    """qkv_grad_stats of packed model i: its slices of the stacked gradients lent to its module."""
    grads = packed.grads()
    for l, block in enumerate(model.blocks):
        block.attn.qkv.weight.grad = grads[f"blocks.{l}.attn.qkv.weight"][i]
    try:
        return stats(model)
    finally:
        for block in model.blocks:
            block.attn.qkv.weight.grad = None


class _no_autocast:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def train_seeds(cfg: EurekaConfig, variant: str, seeds: list[int], out: Path, task, log=None,
                resume: bool = False) -> list[dict]:
    """Every seed of one variant: packed into one computation (``cfg.pack``; default on a GPU) for the ViT
    variants, else one after another. The CNN (BatchNorm's running statistics) and the Q/K rescaling
    control (a per-model gradient edit) always run one after another, as do runs under SGD (packs step AdamW).
    ``resume``: complete runs are kept as they are, the others continue from their checkpoints."""
    done = {s: finished_run(out / f"{variant}-seed{s}") for s in seeds} if resume else {}
    left = [s for s in seeds if done.get(s) is None]
    pack = cfg.pack if cfg.pack is not None else resolve_device(cfg.device).type == "cuda"
    if pack and len(left) > 1 and variant not in ("cnn", "qk_rescale") and cfg.optimizer == "adamw":
        trained = train_packed(cfg, variant, left, out, task, log, resume)
    else:
        trained = [train_run(cfg, variant, s, out / f"{variant}-seed{s}", task, log, resume) for s in left]
    by_seed = {**{s: r for s, r in done.items() if r is not None}, **dict(zip(left, trained))}
    return [by_seed[s] for s in seeds]


def cpu_workers(cfg: EurekaConfig, n_runs: int) -> int:
    """How many processes train runs at once: ``cfg.workers`` (default one per core) on the CPU, else one."""
    if resolve_device(cfg.device).type != "cpu":
        return 1
    workers = cfg.workers if cfg.workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    return min(workers, n_runs)


def train_variants(cfg: EurekaConfig, variants: list[str], seeds: list[int], out: Path, task, log=None,
                   resume: bool = False):
    """Every seed of every variant, yielding (variant, its runs' results) in the order of ``variants``.

    One process (``cpu_workers`` = 1, or a GPU): ``train_seeds`` per variant. On the CPU with more
    workers: every run in a pool of processes of one torch thread each (tiny models are bound by
    per-operation overhead, which a second thread barely shortens and a second process halves), all
    submitted at once so that no worker waits for a variant's last seed; log lines come through a queue."""
    jobs = [(v, s) for v in variants for s in seeds]
    workers = cpu_workers(cfg, len(jobs))
    if workers == 1:
        for variant in variants:
            yield variant, train_seeds(cfg, variant, seeds, out, task, log, resume)
        return
    ctx = mp.get_context("spawn")  # not fork: this process's OpenMP threads do not survive a fork
    queue = ctx.Queue()
    forward = threading.Thread(target=_forward_log, args=(queue, log), daemon=True)
    forward.start()
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_start, initargs=(queue,))
    try:
        futures = {(v, s): pool.submit(_worker_run, cfg, v, s, out / f"{v}-seed{s}", resume) for v, s in jobs}
        for variant in variants:
            yield variant, [futures[(variant, s)].result() for s in seeds]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        queue.put(None)
        forward.join()


def _forward_log(queue, log) -> None:
    while (line := queue.get()) is not None:
        if log is not None:
            log(line)


_WORKER: dict = {}


def _worker_start(queue) -> None:
    from ..train.threads import set_cpu_threads

    set_cpu_threads(1)
    _WORKER["log"] = queue.put


def _worker_run(cfg: EurekaConfig, variant: str, seed: int, run_dir: Path, resume: bool) -> dict:
    key = (cfg.images, cfg.task_variant, cfg.data_dir)
    if key not in _WORKER:
        _WORKER[key] = load_task(cfg)
    return train_run(cfg, variant, seed, run_dir, _WORKER[key], _WORKER["log"], resume)


# ------------------------------------------------------------------------------------------------
# analysis
def eureka_moment(store) -> dict:
    """The run's Eureka-moment: the detector's main transition in the validation loss
    (``features.main_transition``), and the first evaluation with decision accuracy ≥ SUCCESS."""
    from ..monitor.features import main_transition
    from ..monitor.transitions import detect_transitions

    steps, loss = store.series("eval/loss")
    dsteps, decision = store.series("eval/decision_acc")
    transitions = detect_transitions(steps, loss) if len(steps) >= 8 else []
    main = main_transition(transitions)
    first = first_step_at(dsteps, decision, SUCCESS)
    return {"onset": None if main is None else float(main.onset),
            "end": None if main is None else float(main.end),
            "loss_before": None if main is None else float(main.level_before),
            "loss_after": None if main is None else float(main.level_after),
            "first_decision_step": first, "n_transitions": len(transitions)}


#: the per-evaluation series ``attention_series`` reads: each a mean over layers and heads
ATTENTION_SERIES = {"grad_q": "grad/q/", "grad_k": "grad/k/", "grad_v": "grad/v/", "entropy": "attn/entropy/"}


def attention_series(store) -> dict[str, list]:
    """A run's per-evaluation decision accuracy and, per ``ATTENTION_SERIES``, the mean over layers and heads of
    its W_Q, W_K, W_V gradients and attention entropy: {name: [steps, values]} (what ``plateau_diagnostics`` reads)."""
    series = {"decision_acc": list(store.series("eval/decision_acc"))}
    series.update({name: list(store.mean_series(prefix)) for name, prefix in ATTENTION_SERIES.items()})
    return series


def plateau_diagnostics(series: dict, window: tuple[int, int] | None = None) -> dict | None:
    """The run's attention while it sits on the plateau, from its ``attention_series``: medians, over the
    evaluations after step 0 and before its decision accuracy first reaches ``LEAVING`` (all of them if it never
    does), of the mean |grad| of W_Q and W_K (``qk_grad``, their average) and W_V (``v_grad``) over layers and
    heads, their ratio ``qk_over_v``, and the mean normalised attention ``entropy``; ``evals``: how many
    evaluations that is. ``window`` (first, last): the evaluations at those steps instead (the same steps for
    every run). None for a model without attention (the CNN) or without evaluations there."""
    dsteps, decision = series["decision_acc"]
    if window is None:
        trained = [(s, v) for s, v in zip(dsteps, decision) if s > 0]
        leaving = first_step_at([s for s, _ in trained], [v for _, v in trained], LEAVING)
        end = leaving if leaving is not None else math.inf

        def kept(step):
            return 0 < step < end
    else:
        def kept(step):
            return window[0] <= step <= window[1]
    medians = {}
    for name in ATTENTION_SERIES:
        picked = [v for s, v in zip(*series[name]) if kept(s)]
        medians[name] = float(np.median(picked)) if picked else None
    if None in medians.values():
        return None
    qk, v = 0.5 * (medians["grad_q"] + medians["grad_k"]), medians["grad_v"]
    return {"evals": sum(map(kept, dsteps)), "qk_grad": qk, "v_grad": v, "qk_over_v": qk / v if v > 0 else None,
            "entropy": medians["entropy"]}


def first_step_at(steps, values, target: float) -> int | None:
    return next((s for s, v in zip(steps, values) if v is not None and v >= target), None)


def _median(xs):
    xs = [x for x in xs if x is not None]
    return float(np.median(xs)) if xs else None


def summarize(run_dirs: list[Path]) -> dict:
    """Per-run and per-variant results of a sweep's run folders (reads only the folders)."""
    runs = []
    for d in run_dirs:
        folder = RunFolder(d)
        cfg = folder.read_config()
        with folder.store() as store:
            steps, acc = store.series("eval/acc")
            decision = store.series("eval/decision_acc")[1]
            moment = eureka_moment(store)
            plateau = plateau_diagnostics(attention_series(store))
            store.put("eureka", "moment", moment)
        success = bool(decision and decision[-1] is not None and decision[-1] >= SUCCESS)
        runs.append({"variant": cfg["variant"], "seed": cfg["seed"], "run_dir": str(d), "final_acc": acc[-1],
                     "final_decision_acc": decision[-1], "success": success, "steps": steps, "acc": acc,
                     "eureka_step": moment["onset"] if success else None,
                     "first_decision_step": moment["first_decision_step"], "total_steps": steps[-1],
                     "plateau": plateau})
    base = [r["final_acc"] for r in runs if r["variant"] == "softmax"]
    baseline = float(np.median(base)) if base else None
    variants: dict[str, dict] = {}
    for r in runs:
        r["steps_to_95"] = first_step_at(r["steps"], r["acc"], 0.95 * baseline) if baseline is not None else None
    for name in dict.fromkeys(r["variant"] for r in runs):
        rs = [r for r in runs if r["variant"] == name]
        reached = [r["steps_to_95"] for r in rs if r["steps_to_95"] is not None]
        variants[name] = {
            "seeds": len(rs), "successes": sum(r["success"] for r in rs),
            "success_rate": sum(r["success"] for r in rs) / len(rs),
            "median_eureka_step": _median(r["eureka_step"] for r in rs),
            "median_first_decision_step": _median(r["first_decision_step"] for r in rs),
            "reached_95": len(reached), "median_steps_to_95": _median(reached),
            "final_acc_median": float(np.median([r["final_acc"] for r in rs])),
            "final_acc": [r["final_acc"] for r in rs],
            **{f"plateau_{key}": _median(r["plateau"][key] for r in rs if r["plateau"])
               for key in ("qk_grad", "v_grad", "qk_over_v", "entropy")},
        }
    for r in runs:
        del r["steps"], r["acc"]
    return {"success_criterion": f"final decision accuracy >= {SUCCESS:.0%}", "baseline_final_acc": baseline,
            "variants": variants, "runs": runs}


def run_eureka(scale: str, seeds: int, variants: list[str], out, overrides: dict | None = None, log=None,
               on_variant=None, report: bool = True, resume: bool = False) -> dict:
    """Train every variant over ``seeds`` seeds into ``out``/VARIANT-seedK, summarize, write the report
    (``report``; it needs plotly). ``summary.json`` is rewritten after each variant (``complete`` false
    until the last), and ``on_variant(summary)``, if given, is called with it, so that a run cut short
    keeps what it finished.

    ``out``/eureka.json records what was asked; ``resume=True`` continues the study in ``out`` if the same
    was asked (the device and the CPU workers may change): complete runs are kept, the others continue from
    their checkpoints. The study holds ``out``'s writer lock (runs/lock.py) while it runs."""
    if scale not in SCALES:
        raise ValueError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    bad = [v for v in variants if v not in MODEL_VARIANTS]
    if bad or not variants:
        raise ValueError(f"unknown variant {', '.join(bad) or '(none)'}; choose from {', '.join(MODEL_VARIANTS)}")
    cfg = dataclasses.replace(SCALES[scale], **(overrides or {}))
    if cfg.data_dir is not None and cfg.images != "paper":
        raise ValueError(f"--data is read at --scale paper only; --scale {scale} draws scikit-learn's 8×8 digits")
    out = Path(out)
    request = {"scale": scale, "seeds": seeds, "variants": list(variants),
               "config": {k: v for k, v in cfg.to_dict().items() if k not in SPEED_SETTINGS}}
    with RunLock(out, create=True, what="eureka folder"):
        if resume:
            _check_resumable(out, request)
        elif holds_files(out):
            raise ValueError(f"{out} already exists and is not empty; pass --resume to continue that study, or choose another --out")
        else:
            write_atomic(out / "eureka.json", json.dumps(request, indent=1).encode())
        return _run_study(cfg, scale, seeds, variants, out, log, on_variant, report, resume)


#: settings a resumed study may change: where and how fast it trains, not what
SPEED_SETTINGS = ("device", "workers")


def _check_resumable(out: Path, request: dict) -> None:
    try:
        saved = json.loads((out / "eureka.json").read_text())
    except FileNotFoundError:
        raise ValueError(f"{out} holds no eureka study to resume (no eureka.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{out / 'eureka.json'} is not readable JSON") from None
    def flat(r: dict) -> dict:  # the request's keys and its config's, as JSON has them (tuples as lists)
        return {**{k: v for k, v in r.items() if k != "config"}, **r.get("config", {})}

    saved, given = flat(saved), flat(json.loads(json.dumps(request)))
    diffs = [f"{k} (the study has {saved.get(k)!r}, given {v!r})" for k, v in given.items() if saved.get(k) != v]
    if diffs:
        raise ValueError("--resume with settings that differ from the study's eureka.json: " + "; ".join(diffs))


def _run_study(cfg: EurekaConfig, scale: str, seeds: int, variants: list[str], out: Path, log, on_variant, report: bool,
               resume: bool) -> dict:
    task = load_task(cfg)
    t0 = time.perf_counter()
    walls: dict[str, float] = {}
    for i, (variant, results) in enumerate(train_variants(cfg, variants, list(range(seeds)), out, task, log, resume)):
        for r in results:
            walls[r["run_dir"]] = r["wall_s"]
        summary = summarize([Path(d) for d in walls])
        for r in summary["runs"]:
            r["wall_s"] = walls[r["run_dir"]]  # packed seeds share their pack's wall time
        summary.update(scale=scale, config=cfg.to_dict(), data_source=task.source, wall_s=time.perf_counter() - t0,
                       device=str(resolve_device(cfg.device)), complete=i == len(variants) - 1)
        if summary["complete"] and report:
            from ..report.eureka import write_eureka_report

            summary["report"] = str(write_eureka_report(summary, out / "report.html"))
        write_atomic(out / "summary.json", json.dumps(summary, indent=2).encode())
        if on_variant is not None:
            on_variant(summary)
    return summary
