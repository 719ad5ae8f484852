"""Packed training: N same-shaped models trained at once, in one process, as one batched computation.

Generic part (any ``nn.Module`` and loss; the models must share their structure and shapes):

    packed = PackedModels(models)                     # parameters stacked to (N, ...), leaves with grad
    opt = PackedAdamW(packed.params, lr=[1e-3, 3e-3, ...], weight_decay=0.1,
                      decayed={"fc.weight", ...}, betas=(0.9, 0.95))
    for step in ...:
        losses = packed.losses(loss_fn, x, y)        # loss_fn(model, x_i, y_i) -> scalar; x, y: (N, ...)
        losses.sum().backward()                       # model i's gradient is d loss_i / d θ_i: no cross-talk
        norms = clip_grad_norms_(packed.params, max_norm=[1.0, ...])   # per-model global-norm clip
        opt.set_lr([...]); opt.step(); opt.zero_grad()                # per-model lr schedule
    packed.load_into(i, module)                       # model i's weights into an ordinary module

``loss_fn`` receives ``model``, a callable that behaves like the module with model i's parameters, and
model i's slice of each batched argument (``in_dims`` says which arguments are batched; default all).
The update equals ``torch.nn.utils.clip_grad_norm_`` then ``torch.optim.AdamW`` (decoupled weight decay,
bias correction, eps outside the square root) applied to each model alone. Everything the step needs
(learning rates, step count, bias corrections, clip coefficients) lives in device tensors, so a step
never waits for the host and can be captured as a CUDA graph.

quietlab part: ``train_packed(cfgs, run_dirs)`` trains TrainConfigs that differ only in seed, learning
rate, schedule fractions, weight decay, clip and data chunking (``pack_key`` says which may differ) into
ordinary run folders: the same config.json, metrics.sqlite and checkpoints as ``train`` writes, so the
verbs that read runs work on each, and a packed run can be resumed by ``train(resume=True)`` alone.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Callable, Sequence

import torch
import torch.nn as nn
from torch.func import functional_call, stack_module_state, vmap

# ------------------------------------------------------------------------------------------------
# generic


class PackedModels:
    """N models of one structure, their parameters and buffers stacked along a new leading dim."""

    def __init__(self, models: Sequence[nn.Module]):
        if not models:
            raise ValueError("packing needs at least one model")
        shapes = [[(n, tuple(p.shape)) for n, p in m.named_parameters()] for m in models]
        if any(s != shapes[0] for s in shapes):
            raise ValueError("packed models must have the same parameter names and shapes")
        self.n = len(models)
        params, buffers = stack_module_state(list(models))
        self.params: dict[str, torch.Tensor] = params
        self.buffers: dict[str, torch.Tensor] = buffers
        # the structure to call, holding no data of its own (functional_call supplies every tensor)
        import copy

        self.base = copy.deepcopy(models[0]).to("meta")

    def losses(self, loss_fn: Callable, *args, in_dims: Sequence[int | None] | None = None) -> torch.Tensor:
        """(N,) losses: ``loss_fn(model_i, *args_i)`` for each model, as one vmapped computation."""
        batched = self._batched(loss_fn, in_dims, len(args))
        with warnings.catch_warnings():  # CPU attention under vmap loops over the models: slower, still exact
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
            return batched(self.params, self.buffers, *args)

    def compiled_losses(self, loss_fn: Callable, in_dims: Sequence[int | None] | None = None, n_args: int = 2,
                        **compile_options) -> Callable:
        """``losses`` for ``n_args`` batched arguments as one ``torch.compile``d function (fused kernels;
        compiled once per pack, on the first call)."""
        compiled = torch.compile(self._batched(loss_fn, in_dims, n_args), **compile_options)
        return lambda *args: compiled(self.params, self.buffers, *args)

    def _batched(self, loss_fn: Callable, in_dims, n_args: int) -> Callable:
        base = self.base

        def one(params, buffers, *a):
            def model(*margs, **mkwargs):
                return functional_call(base, (params, buffers), margs, mkwargs)

            return loss_fn(model, *a)

        dims = tuple(in_dims) if in_dims is not None else (0,) * n_args
        return vmap(one, in_dims=(0, 0, *dims), randomness="different")

    def state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Model i's parameters and buffers (views into the stacks, detached)."""
        return {k: v[i].detach() for k, v in {**self.params, **self.buffers}.items()}

    def load_into(self, i: int, module: nn.Module) -> nn.Module:
        """Copy model i's parameters and buffers into ``module`` (same structure); returns it."""
        own = dict(module.named_parameters()) | dict(module.named_buffers())
        with torch.no_grad():
            for k, v in self.state_dict(i).items():
                own[k].copy_(v)
        return module

    def load_from(self, i: int, state: dict[str, torch.Tensor]) -> None:
        """Overwrite model i's parameters and (present) buffers from a state dict."""
        with torch.no_grad():
            for k, v in state.items():
                stack = self.params.get(k, self.buffers.get(k))
                if stack is not None:
                    stack[i].copy_(v)

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None


def _per_model(value, n: int, device, dtype=torch.float64) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=dtype, device=device)
    return t.expand(n).clone() if t.ndim == 0 else t.clone()


def _bcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, 1, 1, ...) in ``like``'s dtype, to scale each model's slice of a stacked tensor."""
    return t.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


@torch.no_grad()
def clip_grad_norms_(params: dict[str, torch.Tensor], max_norm) -> torch.Tensor:
    """Clip each model's gradient to a global norm of ``max_norm`` (a float or (N,)), as
    ``torch.nn.utils.clip_grad_norm_`` does for one model; returns the (N,) norms before clipping."""
    grads = [p.grad for p in params.values() if p.grad is not None]
    n = grads[0].shape[0]
    squares = torch.stack([g.reshape(n, -1).double().pow(2).sum(1) for g in grads]).sum(0)
    norms = squares.sqrt()
    limit = _per_model(max_norm, n, norms.device)
    coef = (limit / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(_bcast(coef, g))
    return norms


class PackedAdamW:
    """AdamW on stacked parameters: each model its own moments, learning rate and weight decay.

    ``decayed``: names of the parameters that get weight decay (default: all); ``lr`` and
    ``weight_decay``: a float or one value per model. Equal to ``torch.optim.AdamW`` per model.
    """

    def __init__(self, params: dict[str, torch.Tensor], lr, weight_decay=0.0, decayed: set[str] | None = None,
                 betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = params
        first = next(iter(params.values()))
        self.n, device = first.shape[0], first.device
        self.lr = _per_model(lr, self.n, device)
        self.weight_decay = _per_model(weight_decay, self.n, device)
        self.decayed = set(params) if decayed is None else set(decayed)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self.steps = torch.zeros((), dtype=torch.float64, device=device)  # updates done (same for all models)
        self.exp_avg = {k: torch.zeros_like(p, memory_format=torch.preserve_format) for k, p in params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(p, memory_format=torch.preserve_format) for k, p in params.items()}

    def set_lr(self, lr) -> None:
        """Set every model's learning rate for the next step (in place: a captured graph sees it). A
        tensor already on the device is copied without a host sync; a list or float is not."""
        self.lr.copy_(torch.as_tensor(lr, dtype=torch.float64).expand(self.n), non_blocking=True)

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        bias1 = 1 - self.beta1 ** self.steps
        bias2_sqrt = (1 - self.beta2 ** self.steps).sqrt()
        step_size = self.lr / bias1
        for k, p in self.params.items():
            g = p.grad
            if g is None:
                continue
            if k in self.decayed:
                p.mul_(_bcast(1 - self.lr * self.weight_decay, p))
            m, v = self.exp_avg[k], self.exp_avg_sq[k]
            m.lerp_(g, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            denom = (v.sqrt() / _bcast(bias2_sqrt.expand(self.n), v)).add_(self.eps)
            p.sub_(m / denom * _bcast(step_size, p))

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None


class PackedStep:
    """One training step of packed models: losses, backward, per-model clip, AdamW; returns (N,) losses.

    ``compile=True`` runs forward and loss (``n_args`` batched inputs) through ``torch.compile``.
    With ``cuda_graph=True`` (CUDA only) the first ``warmup`` calls run eagerly on a side stream, the next
    one captures the whole step (forward, loss, backward, clip, AdamW) as one CUDA graph, and every later
    call copies its inputs into the graph's static buffers and replays it: no host synchronisation and
    one launch per step. Inputs must keep their shapes from call to call.
    """

    def __init__(self, packed: PackedModels, optimizer: PackedAdamW, loss_fn: Callable, max_norm=1.0,
                 cuda_graph: bool = False, warmup: int = 3, compile: bool = False, n_args: int = 2):
        self.packed, self.optimizer, self.loss_fn, self.cuda_graph, self.warmup = packed, optimizer, loss_fn, cuda_graph, warmup
        # compile: forward and loss through torch.compile (no CUDA graphs of its own: the step's graph holds them)
        self._losses = (packed.compiled_losses(loss_fn, n_args=n_args) if compile
                        else lambda *args: packed.losses(loss_fn, *args))
        first = next(iter(packed.params.values()))
        self.max_norm = _per_model(max_norm, packed.n, first.device)
        self.calls = 0
        self._graph = self._static_in = self._static_out = None

    def _eager(self, *args) -> torch.Tensor:
        losses = self._losses(*args)
        losses.sum().backward()
        clip_grad_norms_(self.packed.params, self.max_norm)
        self.optimizer.step()
        return losses.detach()

    def __call__(self, *args) -> torch.Tensor:
        self.calls += 1
        if not self.cuda_graph:
            losses = self._eager(*args)
            self.packed.zero_grad()
            return losses
        if self._graph is None and self.calls <= self.warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                losses = self._eager(*args)
                self.packed.zero_grad()
            torch.cuda.current_stream().wait_stream(side)
            return losses
        if self._graph is None:
            self._static_in = [a.clone() for a in args]
            self.packed.zero_grad()  # grads allocated inside the capture are rewritten by every replay
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph):
                self._static_out = self._eager(*self._static_in)
        else:
            for static, a in zip(self._static_in, args):
                static.copy_(a, non_blocking=True)
        self._graph.replay()
        return self._static_out.clone()


# ------------------------------------------------------------------------------------------------
# quietlab: TrainConfigs into run folders

# settings each packed run may have of its own; everything else must agree (pack_key)
PER_MODEL = ("seed", "lr", "weight_decay", "grad_clip", "warmup_fraction", "min_lr_fraction", "data_chunk")


def pack_key(cfg) -> str:
    """Runs with equal keys can be trained packed: same task, shapes, length in steps, batch and hardware."""
    import json

    d = {k: v for k, v in cfg.to_dict().items() if k not in PER_MODEL and k != "flops"}
    d["steps"] = cfg.total_steps(cfg.build_task())
    return json.dumps(d, sort_keys=True, default=str)


class _AdamWState:
    """Model i's optimizer state in ``torch.optim.AdamW``'s state_dict format (what ``train`` saves and resumes)."""

    def __init__(self, template: dict, index_names: list[str], opt: PackedAdamW, i: int, lr: float, weight_decay: float):
        self.template, self.index_names, self.opt, self.i = template, index_names, opt, i
        self.lr, self.weight_decay = lr, weight_decay

    def state_dict(self) -> dict:
        step = float(self.opt.steps)
        groups = [{**g, "lr": self.lr} for g in self.template["param_groups"]]
        groups[0]["weight_decay"] = self.weight_decay
        state = {}
        if step > 0:
            for idx, name in enumerate(self.index_names):
                state[idx] = {"step": torch.tensor(step), "exp_avg": self.opt.exp_avg[name][self.i].detach().cpu().clone(),
                              "exp_avg_sq": self.opt.exp_avg_sq[name][self.i].detach().cpu().clone()}
        return {"state": state, "param_groups": groups}


def train_packed(cfgs: Sequence, run_dirs: Sequence, progress: bool = False, resume: bool = False) -> list[dict]:
    """Train every TrainConfig of ``cfgs`` (equal ``pack_key``) into its run folder at once; returns each
    run's final metrics, as ``train`` does. ``resume=True`` continues from the last step at which every run
    has a checkpoint (runs with none start afresh with the rest)."""
    from .. import __version__
    from ..models.transformer import Transformer
    from ..runs.folder import RunFolder
    from .budget import flops_per_step, flops_per_token, non_embedding_params
    from .checkpoint import load_checkpoint, remove_stale_temp_files, save_checkpoint
    from .evaluate import evaluate, masked_loss
    from .loop import (_EVAL, ExampleStream, TrainingInterrupted, _progress_bar, _StopRequested, check_resumable,
                       derive_seed, resolve_device, resolve_dtype)
    from .schedule import lr_at, make_optimizer, param_groups, schedule_steps

    cfgs, run_dirs = list(cfgs), list(run_dirs)
    if len(cfgs) != len(run_dirs) or not cfgs:
        raise ValueError("train_packed needs one run folder per config, and at least one config")
    for cfg in cfgs:
        cfg.validate()
    keys = {pack_key(c) for c in cfgs}
    if len(keys) > 1:
        raise ValueError("packed runs may differ only in " + ", ".join(PER_MODEL))
    folders = [RunFolder(d) for d in run_dirs]
    for folder, cfg in zip(folders, cfgs):
        if not resume and folder.path.exists() and any(folder.path.iterdir()):
            raise ValueError(f"{folder.path} already exists; pass --resume to continue that run, or choose another --out")
        if resume and folder.exists():
            check_resumable(folder.read_config(), cfg)

    c0 = cfgs[0]
    task = c0.build_task()
    device = resolve_device(c0.device)
    amp_dtype = resolve_dtype(c0.dtype, device)
    model_cfg = c0.model_config(task)
    total = c0.total_steps(task)
    tokens_per_step = c0.batch_size * task.seq_len
    step_flops = flops_per_step(model_cfg, c0.batch_size, task.seq_len)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True

    models = []
    for cfg in cfgs:
        torch.manual_seed(cfg.seed)
        models.append(Transformer(model_cfg).to(device))
    scratch = models[0]  # reused to evaluate and checkpoint one model at a time
    template_opt = make_optimizer(scratch, c0.lr, c0.weight_decay, (c0.beta1, c0.beta2))
    names_by_id = {id(p): n for n, p in scratch.named_parameters()}
    index_names = [names_by_id[id(p)] for g in template_opt.param_groups for p in g["params"]]
    template = template_opt.state_dict()
    decayed = {names_by_id[id(p)] for p in param_groups(scratch, 1.0)[0]["params"]}
    packed = PackedModels(models)
    opt = PackedAdamW(packed.params, [c.lr for c in cfgs], [c.weight_decay for c in cfgs], decayed, (c0.beta1, c0.beta2))
    progress_buffers = [v for k, v in packed.buffers.items() if k.endswith("attn.progress")]

    start = -1
    if resume:
        for folder in folders:
            remove_stale_temp_files(folder.path)
        common = set.intersection(*({s for s, _ in f.checkpoints()} for f in folders))
        if common:
            start = max(common)
            for i, folder in enumerate(folders):
                payload = load_checkpoint(folder.checkpoint_path(start), map_location="cpu")
                packed.load_from(i, payload["model"])
                for idx, st in payload["optimizer"]["state"].items():
                    opt.exp_avg[index_names[int(idx)]][i].copy_(st["exp_avg"])
                    opt.exp_avg_sq[index_names[int(idx)]][i].copy_(st["exp_avg_sq"])
            opt.steps.fill_(start)
        for folder in folders:  # checkpoints past the common step belong to an abandoned attempt
            for step, path in folder.checkpoints():
                if step > start:
                    path.unlink()
    stores = [f.store() for f in folders]
    saved_configs = [c.to_dict() for c in cfgs]
    for folder, cfg, store in zip(folders, cfgs, stores):
        if start < 0:
            folder.write_config({
                **cfg.to_dict(),
                "model_config": model_cfg.to_dict(),
                "resolved": {"steps": total, "device": str(device), "autocast": str(amp_dtype or "fp32"),
                             "non_embedding_params": non_embedding_params(model_cfg),
                             "flops_per_token": flops_per_token(model_cfg), "flops_per_step": step_flops,
                             "tokens_per_step": tokens_per_step, "seq_len": task.seq_len, "vocab": "".join(task.vocab),
                             "packed_with": len(cfgs)},
                "torch_version": torch.__version__,
                "quietlab_version": __version__,
            })
        store.truncate_after(start)

    eval_steps = set(schedule_steps(total, c0.eval_every or max(1, round(total / 50)), c0.eval_per_decade))
    ckpt_steps = set(schedule_steps(total, c0.checkpoint_every or max(1, round(total / 20)), c0.checkpoint_per_decade))
    eval_batches = [task.sample(c.eval_examples, seed=derive_seed(c.seed, _EVAL), split="test") for c in cfgs]
    streams = [ExampleStream(task, c.seed, c.batch_size, c.data_chunk, device) for c in cfgs]
    # no autocast weight cache: a captured CUDA graph must not keep casts made during capture
    autocast = ((lambda: torch.autocast(device.type, dtype=amp_dtype, cache_enabled=False)) if amp_dtype
                else contextlib.nullcontext)

    def lm_loss(model, tokens, mask):
        with autocast():
            logits = model(tokens)
        return masked_loss(logits, tokens, mask)

    train_step = PackedStep(packed, opt, lm_loss, [c.grad_clip for c in cfgs],
                            cuda_graph=c0.compile and device.type == "cuda")
    pending: list[tuple[int, torch.Tensor, list[float]]] = []
    clock = {"t": time.perf_counter(), "steps": 0, "flushed": time.perf_counter()}
    last_eval: list[dict] = [{} for _ in cfgs]

    def set_progress(fraction: float) -> None:
        for b in progress_buffers:
            b.fill_(fraction)

    def flush(step: int) -> None:
        rows: list[dict[int, dict]] = [{} for _ in cfgs]
        if pending:
            losses = torch.stack([l for _, l, _ in pending]).tolist()
            for (s, _, lrs), per_model in zip(pending, losses):
                for i in range(len(cfgs)):
                    rows[i][s] = {"train/loss": per_model[i], "train/lr": lrs[i], "train/tokens": s * tokens_per_step,
                                  "train/flops": s * step_flops}
            pending.clear()
        now = time.perf_counter()
        if clock["steps"]:  # each run advances at the pack's pace
            rate = clock["steps"] * tokens_per_step / max(now - clock["t"], 1e-9)
            for r in rows:
                r.setdefault(step, {})["train/tokens_per_s"] = rate
        for store, r in zip(stores, rows):
            for s, metrics in r.items():
                store.log(s, metrics)
        clock.update(t=now, steps=0, flushed=now)

    def evaluate_now(step: int) -> None:
        flush(step)
        for i, (store, batch) in enumerate(zip(stores, eval_batches)):
            metrics = evaluate(packed.load_into(i, scratch), task, batch, device, amp_dtype)
            store.log(step, metrics)
            last_eval[i] = {"step": step, **metrics}
        clock.update(t=time.perf_counter(), steps=0)

    def checkpoint_now(step: int, lrs: list[float]) -> None:
        flush(step)
        for i, (folder, cfg) in enumerate(zip(folders, cfgs)):
            state = _AdamWState(template, index_names, opt, i, lrs[i], cfg.weight_decay)
            save_checkpoint(folder.path, step, packed.load_into(i, scratch), state, saved_configs[i])
        clock.update(t=time.perf_counter(), steps=0)

    lr_rows: dict[int, tuple[torch.Tensor, list]] = {}  # learning rates of upcoming steps, on the device

    def lrs_of(step: int) -> tuple[torch.Tensor, list[float]]:
        """Every model's lr for ``step``; computed 256 steps at a time and copied to the device without
        waiting, so that setting the lr never synchronises the host with the GPU."""
        if step not in lr_rows:
            lr_rows.clear()
            rows = [[lr_at(s - 1, total, c.lr, c.warmup_fraction, c.min_lr_fraction) for c in cfgs]
                    for s in range(step, min(step + 256, total + 1))]
            table = torch.tensor(rows, dtype=torch.float64)
            if device.type == "cuda":
                table = table.pin_memory()
            on_device = table.to(device, non_blocking=True)
            for k, row in enumerate(rows):
                lr_rows[step + k] = (on_device[k], row)
        return lr_rows[step]

    bar = _progress_bar(progress, total, max(start, 0))
    t_start = time.perf_counter()
    lrs = [c.lr for c in cfgs]
    set_progress(max(start, 0) / total)
    try:
        with bar if bar is not None else contextlib.nullcontext(), _StopRequested() as stop:
            if start < 0:
                evaluate_now(0)
                checkpoint_now(0, [lr_at(0, total, c.lr, c.warmup_fraction, c.min_lr_fraction) for c in cfgs])
                start = 0
            for step in range(start + 1, total + 1):
                batches = [s.batch(step) for s in streams]
                tokens = torch.stack([b[0] for b in batches])
                mask = torch.stack([b[1] for b in batches])
                lr_now, lrs = lrs_of(step)
                opt.set_lr(lr_now)
                losses = train_step(tokens, mask)
                set_progress(step / total)
                clock["steps"] += 1
                if step % c0.log_every == 0 or step == total:
                    pending.append((step, losses, lrs))
                if step in eval_steps:
                    evaluate_now(step)
                if step in ckpt_steps:
                    checkpoint_now(step, lrs)
                if time.perf_counter() - clock["flushed"] > 1.0:
                    flush(step)
                    if bar is not None:
                        bar.update(0, completed=step, info=f"{len(cfgs)} packed")
                if stop.requested and step < total:
                    if step not in ckpt_steps:
                        checkpoint_now(step, lrs)
                    raise TrainingInterrupted(step, folders[0].path.parent)
            flush(total)
            if bar is not None:
                bar.update(0, completed=total)
    finally:
        for s in streams:
            s.close()
        for store in stores:
            store.close()

    wall = time.perf_counter() - t_start
    out = []
    for i, folder in enumerate(folders):
        with folder.store() as s:
            losses = s.series("train/loss")[1]
            last = last_eval[i] or {"step": total, **{n: s.series(n)[1][-1] for n in s.metric_names("eval/")}}
        out.append({**last, "train/loss": losses[-1] if losses else None, "steps": total,
                    "train/tokens": total * tokens_per_step, "train/flops": total * step_flops,
                    "wall_s": wall, "run_dir": str(folder.path)})
    return out
