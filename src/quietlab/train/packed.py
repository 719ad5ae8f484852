"""Packed training: N same-shaped models trained at once, in one process, as one batched computation.

Generic part (any ``nn.Module`` and loss; the models must share their structure and shapes):

    packed = PackedModels(models)                     # parameters side by side in one (N, P) leaf, packed.flat
    opt = PackedAdamW(packed, lr=[1e-3, 3e-3, ...], weight_decay=0.1,
                      decayed={"fc.weight", ...}, betas=(0.9, 0.95))
    for step in ...:
        losses = packed.losses(loss_fn, x, y)        # loss_fn(model, x_i, y_i) -> scalar; x, y: (N, ...)
        losses.sum().backward()                       # model i's gradient is d loss_i / d θ_i: no cross-talk
        norms = clip_grad_norms_(packed, max_norm=[1.0, ...])   # per-model global-norm clip
        opt.set_lr([...]); opt.step(); packed.zero_grad()      # per-model lr schedule
    packed.load_into(i, module)                       # model i's weights into an ordinary module

``loss_fn`` receives ``model``, a callable that behaves like the module with model i's parameters, and
model i's slice of each batched argument (``in_dims`` says which arguments are batched; default all).
The update equals ``torch.nn.utils.clip_grad_norm_`` then ``torch.optim.AdamW`` (decoupled weight decay,
bias correction, eps outside the square root) applied to each model alone. The parameters live side by side
in one (N, P) tensor, so that the gradient arrives as one (N, P) tensor too (the backward of the split that
hands each parameter its slice is one concatenation) and clip and AdamW are a dozen kernels over it, whatever
the number of parameters: stacked one tensor per parameter, they were a dozen kernels per parameter, which
bounded a small model's step. Everything the step needs
(learning rates, step count, bias corrections, clip coefficients) lives in device tensors, so a step
never waits for the host and can be captured as a CUDA graph.

quietlab part: ``train_packed(cfgs, run_dirs)`` trains TrainConfigs that differ only in seed, learning
rate, schedule fractions, weight decay, clip, data chunking and length (``PER_MODEL``; ``pack_key`` is
what must agree) into ordinary run folders: the same config.json, metrics.sqlite and checkpoints as
``train`` writes, so the verbs that read runs work on each, and a packed run can be resumed by
``train(resume=True)`` alone. A run leaves the pack at its last step; the others go on as a smaller pack.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Callable, Sequence

import torch
import torch.nn as nn
from torch.func import functional_call, stack_module_state, vmap

from ..models.attention import padded_causal_attention
from ..runs.lock import RunLock, holds_files

# ------------------------------------------------------------------------------------------------
# generic


class PackedModels:
    """N models of one structure: their parameters side by side in one (N, P) leaf ``flat`` (model i's row
    holds its parameters in ``named_parameters`` order), their buffers stacked along a new leading dim.
    ``params``: each parameter as an (N, ...) view of ``flat`` (no grad: to read and load weights);
    ``grads()``: the same views of ``flat.grad``."""

    def __init__(self, models: Sequence[nn.Module]):
        if not models:
            raise ValueError("packing needs at least one model")
        shapes = [[(n, tuple(p.shape)) for n, p in m.named_parameters()] for m in models]
        if any(s != shapes[0] for s in shapes):
            raise ValueError("packed models must have the same parameter names and shapes")
        if len({p.dtype for p in models[0].parameters()}) > 1:
            raise ValueError("packed models' parameters must share one dtype")
        self.n = len(models)
        params, buffers = stack_module_state(list(models))
        self.names = list(params)
        self.shapes = [tuple(p.shape[1:]) for p in params.values()]
        self.sizes = [torch.Size(s).numel() for s in self.shapes]
        self.flat = torch.cat([p.detach().reshape(self.n, -1) for p in params.values()], dim=1).requires_grad_()
        self.params: dict[str, torch.Tensor] = self.views(self.flat.detach())
        self.buffers: dict[str, torch.Tensor] = buffers
        # the structure to call, holding no data of its own (functional_call supplies every tensor)
        import copy

        self.base = copy.deepcopy(models[0]).to("meta")

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each parameter's view of a tensor laid out as ``flat`` along its last dim: (N, ...) of an (N, P)
        tensor, or one model's parameters of a (P,) row (inside the vmapped function)."""
        lead = flat.shape[:-1]
        return {k: t.view(*lead, *shape) for k, t, shape in zip(self.names, flat.split(self.sizes, dim=-1), self.shapes)}

    def grads(self) -> dict[str, torch.Tensor]:
        """Each parameter's (N, ...) view of the gradient ({} before a backward)."""
        return {} if self.flat.grad is None else self.views(self.flat.grad)

    def losses(self, loss_fn: Callable, *args, in_dims: Sequence[int | None] | None = None) -> torch.Tensor:
        """(N,) losses: ``loss_fn(model_i, *args_i)`` for each model, as one vmapped computation."""
        batched = self._batched(loss_fn, in_dims, len(args))
        with warnings.catch_warnings(), _attention_under_vmap(self.flat):
            # CPU attention under vmap loops over the models: slower, still exact
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
            return batched(self.flat, self.buffers, *args)

    def compiled_losses(self, loss_fn: Callable, in_dims: Sequence[int | None] | None = None, n_args: int = 2,
                        math_attention: bool = False, **compile_options) -> Callable:
        """``losses`` for ``n_args`` batched arguments as one ``torch.compile``d function (fused kernels;
        compiled once per pack, on the first call). ``math_attention``: on a GPU, attention through the
        math kernel, written out and fused by the compiler, instead of flash attention
        (``math_attention_pays``)."""
        # a pack's shapes never change; symbolic sizes (automatic dynamic shapes, after another compiled
        # model of other sizes in the process) fail under vmap: "Cannot call sizes() on tensor with symbolic sizes"
        compile_options.setdefault("dynamic", False)
        compiled = torch.compile(self._batched(loss_fn, in_dims, n_args), **compile_options)

        def losses(*args):
            with _attention_under_vmap(self.flat, math_only=math_attention):
                return compiled(self.flat, self.buffers, *args)

        return losses

    def _batched(self, loss_fn: Callable, in_dims, n_args: int) -> Callable:
        base, views = self.base, self.views

        def one(flat, buffers, *a):
            params = views(flat)

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
        self.flat.grad = None

    def select(self, rows: Sequence[int]) -> "PackedModels":
        """A new pack of the models at ``rows`` (copies), e.g. to go on without the ones that finished."""
        index = torch.as_tensor(list(rows), device=self.flat.device)
        new = object.__new__(PackedModels)
        new.n, new.base, new.names, new.shapes, new.sizes = len(rows), self.base, self.names, self.shapes, self.sizes
        new.flat = self.flat.detach()[index].clone().requires_grad_()
        new.params = new.views(new.flat.detach())
        new.buffers = {k: v[index].clone() for k, v in self.buffers.items()}
        return new


#: what causal sequences are padded to a multiple of in packs on the math kernel (0: not padded)
CAUSAL_PAD_MULTIPLE = 8


@contextlib.contextmanager
def _attention_under_vmap(flat: torch.Tensor, math_only: bool = False):
    """The attention kernels that are right under vmap: on a GPU (torch 2.11, H200) the memory-efficient
    kernel that ``scaled_dot_product_attention`` picks by default gives NaN gradients to every model of
    a vmapped ViT from the first step, and refuses float32 ('LSE is not correctly aligned'); flash
    attention (half precision) and the math kernel (float32) train as the models do alone
    (benchmarks/packed_gpu_check.py). ``math_only``: the math kernel alone, causal sequences padded to a
    multiple of ``CAUSAL_PAD_MULTIPLE`` (``padded_causal_attention``: at 52 tokens, the products' kernels for 2-element alignment
    had taken a third of a 64-model pack's step, results/h200-2026-12-04-s13/pack64_math_profile.txt).
    Nothing changes on a CPU."""
    if flat.device.type != "cuda":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not math_only:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]):
            yield
        return
    with sdpa_kernel([SDPBackend.MATH]), padded_causal_attention(CAUSAL_PAD_MULTIPLE):
        yield


def math_attention_pays(n_models: int, seq_len: int) -> bool:
    """Whether a compiled pack should leave its attention to the compiler (the math kernel, written out and
    fused) rather than call flash attention: for several models at sequences of at most 64 tokens. Flash
    attention works in tiles of 128 keys, mostly padding there. Measured on an H200
    (benchmarks/small_step_profile.py, results/h200-2026-12-04-s13), 64 packed d_model-64 models, compiled:
    addition-16 (52 tokens) 8.51 ms a step with the math kernel against 10.17 ms with flash attention;
    max_subarray (130 tokens) 34.76 against 26.83 ms. One model alone keeps flash attention (not measured
    with the math kernel). With the math kernel's sequences padded to 56 (``_attention_under_vmap``), the
    addition-16 pack steps in 7.45 ms (benchmarks/packed_speed.py, results/h200-2026-12-05-s16)."""
    return n_models > 1 and seq_len <= 64


def _per_model(value, n: int, device, dtype=torch.float64) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=dtype, device=device)
    return t.expand(n).clone() if t.ndim == 0 else t.clone()


def _column(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, 1) in ``like``'s dtype: one value per model, to scale the rows of an (N, P) tensor."""
    return t.to(like.dtype)[:, None]


@torch.no_grad()
def clip_grad_norms_(packed: PackedModels, max_norm) -> torch.Tensor:
    """Clip each model's gradient to a global norm of ``max_norm`` (a float or (N,)), as
    ``torch.nn.utils.clip_grad_norm_`` does for one model; returns the (N,) norms before clipping."""
    grad = packed.flat.grad
    norms = torch.linalg.vector_norm(grad, dim=1, dtype=torch.float64)
    limit = _per_model(max_norm, packed.n, norms.device)
    coef = (limit / (norms + 1e-6)).clamp(max=1.0)
    grad.mul_(_column(coef, grad))
    return norms


class PackedAdamW:
    """AdamW on a pack's (N, P) parameters: each model its own moments, learning rate and weight decay.

    ``decayed``: names of the parameters that get weight decay (default: all); ``lr`` and
    ``weight_decay``: a float or one value per model. Equal to ``torch.optim.AdamW`` per model, for
    parameters that the loss reaches (one it does not reach gets a zero gradient here, where torch's
    AdamW would skip it: so a decayed one still decays). ``exp_avg``, ``exp_avg_sq``: each parameter's
    (N, ...) view of the moments.
    """

    def __init__(self, packed: PackedModels, lr, weight_decay=0.0, decayed: set[str] | None = None,
                 betas=(0.9, 0.999), eps: float = 1e-8):
        self.packed = packed
        flat = packed.flat.detach()
        self.n, device = packed.n, flat.device
        self.lr = _per_model(lr, self.n, device)
        self.weight_decay = _per_model(weight_decay, self.n, device)
        self.decayed = set(packed.names) if decayed is None else set(decayed)
        # (1, P): True on the decayed parameters' columns (None: every column)
        self.decay_mask = None if self.decayed >= set(packed.names) else torch.cat(
            [torch.full((size,), k in self.decayed, device=device) for k, size in zip(packed.names, packed.sizes)])[None]
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self.steps = torch.zeros((), dtype=torch.float64, device=device)  # updates done (same for all models)
        self.m, self.v = torch.zeros_like(flat), torch.zeros_like(flat)
        self.exp_avg, self.exp_avg_sq = packed.views(self.m), packed.views(self.v)

    def set_lr(self, lr) -> None:
        """Set every model's learning rate for the next step (in place: a captured graph sees it). A
        tensor already on the device is copied without a host sync; a list or float is not."""
        self.lr.copy_(torch.as_tensor(lr, dtype=torch.float64).expand(self.n), non_blocking=True)

    @torch.no_grad()
    def step(self) -> None:
        p, g = self.packed.flat, self.packed.flat.grad
        if g is None:
            return
        self.steps += 1
        bias1 = 1 - self.beta1 ** self.steps
        bias2_sqrt = (1 - self.beta2 ** self.steps).sqrt()
        keep = _column(1 - self.lr * self.weight_decay, p)
        p.mul_(keep if self.decay_mask is None else torch.where(self.decay_mask, keep, 1.0))
        self.m.lerp_(g, 1 - self.beta1)
        self.v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
        denom = (self.v.sqrt() / _column(bias2_sqrt.expand(self.n), p)).add_(self.eps)
        p.sub_(self.m / denom * _column(self.lr / bias1, p))

    def select(self, rows: Sequence[int], packed: PackedModels) -> "PackedAdamW":
        """The state of the models at ``rows``, for ``packed`` (the matching ``PackedModels.select``)."""
        index = torch.as_tensor(list(rows), device=self.lr.device)
        new = object.__new__(PackedAdamW)
        new.packed, new.n, new.decayed, new.decay_mask = packed, len(rows), self.decayed, self.decay_mask
        new.beta1, new.beta2, new.eps = self.beta1, self.beta2, self.eps
        new.lr, new.weight_decay, new.steps = self.lr[index].clone(), self.weight_decay[index].clone(), self.steps.clone()
        new.m, new.v = self.m[index].clone(), self.v[index].clone()
        new.exp_avg, new.exp_avg_sq = packed.views(new.m), packed.views(new.v)
        return new


class PackedStep:
    """One training step of packed models: losses, backward, per-model clip, AdamW; returns (N,) losses.

    ``compile=True`` runs forward and loss (``n_args`` batched inputs) through ``torch.compile``, and the
    update (clip and AdamW) too, which fuses its dozen elementwise passes over the (N, P) parameters.
    ``math_attention`` (with ``compile``): attention through the math kernel on a GPU (``math_attention_pays``).
    With ``cuda_graph=True`` (CUDA only) the first ``warmup`` calls run eagerly on a side stream, the next
    one captures the whole step (forward, loss, backward, clip, AdamW) as one CUDA graph, and every later
    call copies its inputs into the graph's static buffers and replays it: no host synchronisation and
    one launch per step. Inputs must keep their shapes from call to call.
    """

    def __init__(self, packed: PackedModels, optimizer: PackedAdamW, loss_fn: Callable, max_norm=1.0,
                 cuda_graph: bool = False, warmup: int = 3, compile: bool = False, n_args: int = 2,
                 math_attention: bool = False):
        self.packed, self.optimizer, self.loss_fn, self.cuda_graph, self.warmup = packed, optimizer, loss_fn, cuda_graph, warmup
        # compile: forward and loss through torch.compile (no CUDA graphs of its own: the step's graph holds them)
        self._losses = (packed.compiled_losses(loss_fn, n_args=n_args, math_attention=math_attention) if compile
                        else lambda *args: packed.losses(loss_fn, *args))
        self._update = torch.compile(self.update, fullgraph=True, dynamic=False) if compile else self.update
        self.max_norm = _per_model(max_norm, packed.n, packed.flat.device)
        self.calls = 0
        self._graph = self._static_in = self._static_out = None

    def update(self) -> None:
        """Clip each model's gradient, then take its AdamW step."""
        clip_grad_norms_(self.packed, self.max_norm)
        self.optimizer.step()

    def _eager(self, *args) -> torch.Tensor:
        losses = self._losses(*args)
        losses.sum().backward()
        self._update()
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
            # thread_local: the data threads may pin memory meanwhile, which a global capture forbids
            with torch.cuda.graph(self._graph, capture_error_mode="thread_local"):
                self._static_out = self._eager(*self._static_in)
        else:
            for static, a in zip(self._static_in, args):
                static.copy_(a, non_blocking=True)
        self._graph.replay()
        return self._static_out.clone()


# ------------------------------------------------------------------------------------------------
# quietlab: TrainConfigs into run folders

# settings each packed run may have of its own; everything else must agree (pack_key)
PER_MODEL = ("seed", "lr", "weight_decay", "grad_clip", "warmup_fraction", "min_lr_fraction", "data_chunk",
             "steps", "flops")


# a pack compiles its forward and update only if at least this many steps are left when it takes its final shape
COMPILE_MIN_STEPS = 10_000


def compiles_forward(compile: bool, device: torch.device, lengths: Sequence[int], since: int = 0,
                     min_steps: int = COMPILE_MIN_STEPS) -> bool:
    """Whether a pack compiles its forward and update (inside the step's CUDA graph): with ``compile``, on a
    GPU, once the pack has its final shape (its runs all end at one step), if it keeps that shape for at
    least ``min_steps`` steps after step ``since`` (where it took it). Each run that leaves changes the
    shape, and a new shape is a new compile, which pays only over many steps. Measured on an H200: the paper
    preset's BFS pack of three (d_model 128 x 4) stepped 1.28x faster compiled, about 2 ms a step, after a
    compile of about 18 s (benchmarks/packed_compile_ab.py, results/h200-2026-12-03-s6), repaid after 8,000
    to 10,000 steps; one d_model-128 model's step, 2.83 ms as a CUDA graph of eager kernels against 1.02 ms
    compiled (results/h200-2026-12-04-s12), repays a compile of that length after about 10,000. On a CPU a
    packed compile costs minutes."""
    return (bool(compile) and device.type == "cuda" and len(set(lengths)) == 1
            and lengths[0] - since >= min_steps)


def pack_key(cfg) -> str:
    """Runs with equal keys can be trained packed: same task, shapes, batch, evaluation and hardware. Their
    lengths may differ: a run leaves the pack when it ends, and the rest go on as a smaller pack. A
    ValueError if the run cannot be trained at all (e.g. a budget under one step)."""
    import json

    cfg.total_steps(cfg.build_task())
    d = {k: v for k, v in cfg.to_dict().items() if k not in PER_MODEL}
    return json.dumps(d, sort_keys=True, default=str)


class _AdamWState:
    """Model i's optimizer state in ``torch.optim.AdamW``'s state_dict format (what ``train`` saves and resumes)."""

    def __init__(self, template: dict, index_names: list[str], opt: PackedAdamW, row: int, lr: float, weight_decay: float):
        self.template, self.index_names, self.opt, self.row = template, index_names, opt, row
        self.lr, self.weight_decay = lr, weight_decay

    def state_dict(self) -> dict:
        step = float(self.opt.steps)
        groups = [{**g, "lr": self.lr} for g in self.template["param_groups"]]
        groups[0]["weight_decay"] = self.weight_decay
        state = {}
        if step > 0:
            for idx, name in enumerate(self.index_names):
                state[idx] = {"step": torch.tensor(step),
                              "exp_avg": self.opt.exp_avg[name][self.row].detach().cpu().clone(),
                              "exp_avg_sq": self.opt.exp_avg_sq[name][self.row].detach().cpu().clone()}
        return {"state": state, "param_groups": groups}


def train_packed(cfgs: Sequence, run_dirs: Sequence, progress: bool = False, resume: bool = False) -> list[dict]:
    """Train every TrainConfig of ``cfgs`` (equal ``pack_key``) into its run folder at once; returns each
    run's final metrics, as ``train`` does. Runs may differ in length: each leaves the pack at its own last
    step. ``resume=True`` skips runs already finished and continues the others from the last step at which
    all of them have a checkpoint (from scratch if there is none). Each run folder's writer lock
    (runs/lock.py) is held throughout, as ``train`` holds it."""
    with contextlib.ExitStack() as locks:
        for run_dir in run_dirs:
            locks.enter_context(RunLock(run_dir, create=True))
        return _train_packed(cfgs, run_dirs, progress, resume)


def _train_packed(cfgs: Sequence, run_dirs: Sequence, progress: bool, resume: bool) -> list[dict]:
    from .. import __version__
    from ..models.transformer import Transformer
    from ..runs.folder import RunFolder
    from .budget import non_embedding_params
    from .checkpoint import load_checkpoint, remove_stale_temp_files, save_checkpoint
    from .evaluate import evaluate, masked_loss
    from .loop import (_EVAL, ExampleStream, TrainingInterrupted, _progress_bar, _StopRequested, check_resumable,
                       derive_seed, resolve_device, set_matmul_precision)
    from .schedule import param_groups, schedule_steps

    cfgs, run_dirs = list(cfgs), list(run_dirs)
    if len(cfgs) != len(run_dirs) or not cfgs:
        raise ValueError("train_packed needs one run folder per config, and at least one config")
    for cfg in cfgs:
        cfg.validate()
    if len({pack_key(c) for c in cfgs}) > 1:
        raise ValueError("packed runs may differ only in " + ", ".join(PER_MODEL))
    folders = [RunFolder(d) for d in run_dirs]
    for folder, cfg in zip(folders, cfgs):
        if not resume and holds_files(folder.path):
            raise ValueError(f"{folder.path} already exists; pass --resume to continue that run, or choose another --out")
        if resume and folder.exists():
            check_resumable(folder.read_config(), cfg)

    n = len(cfgs)
    c0 = cfgs[0]
    task = c0.build_task()
    device = resolve_device(c0.device)
    amp_dtype = c0.autocast_dtype(device)
    model_cfg = c0.model_config(task)
    totals = [c.total_steps(task) for c in cfgs]
    tokens_per_step = c0.batch_size * task.seq_len
    accounting = [c.flops_accounting(task) for c in cfgs]  # (per token, per step); the paper's ctx is per seed
    set_matmul_precision(c0, device)

    # resume: runs with a checkpoint at their last step are done; the others restart from a common step
    finished = set()
    start = -1
    if resume:
        for i, folder in enumerate(folders):
            remove_stale_temp_files(folder.path)
            if folder.exists() and totals[i] in {s for s, _ in folder.checkpoints()}:
                finished.add(i)
        going = [i for i in range(n) if i not in finished]
        common = set.intersection(*({s for s, _ in folders[i].checkpoints()} for i in going)) if going else set()
        start = max(common) if common else -1
        for i in going:  # checkpoints past the common step belong to an abandoned attempt
            for step, path in folders[i].checkpoints():
                if step > start:
                    path.unlink()
    active = [i for i in range(n) if i not in finished]  # runs in the pack, in the pack's row order

    models = []
    for i in active:
        torch.manual_seed(cfgs[i].seed)
        models.append(Transformer(model_cfg).to(device))
    torch.manual_seed(c0.seed)
    scratch = Transformer(model_cfg).to(device)  # reused to evaluate and checkpoint one model at a time
    template_opt = c0.make_optimizer(scratch)
    names_by_id = {id(p): k for k, p in scratch.named_parameters()}
    index_names = [names_by_id[id(p)] for g in template_opt.param_groups for p in g["params"]]
    template = template_opt.state_dict()
    decayed = {names_by_id[id(p)] for p in param_groups(scratch, 1.0, decay_all=c0.paper)[0]["params"]}
    del template_opt

    autocast = ((lambda: torch.autocast(device.type, dtype=amp_dtype, cache_enabled=False)) if amp_dtype
                else contextlib.nullcontext)  # no weight cache: a captured CUDA graph must not keep casts

    def lm_loss(model, tokens, mask):
        with autocast():
            logits = model(tokens)
        return masked_loss(logits, tokens, mask)

    pack: dict = {}

    def build(packed: PackedModels, opt: PackedAdamW) -> None:
        # the step from which this pack's shape holds in a run from the start (the last other run's end), so a
        # resumed pack makes the same choice as an uninterrupted one
        ends = [totals[i] for i in active]
        since = max((t for t in totals if t < min(ends)), default=0)
        pack.update(packed=packed, opt=opt, lr_rows={},
                    progress=[v for k, v in packed.buffers.items() if k.endswith("attn.progress")],
                    step=PackedStep(packed, opt, lm_loss, [cfgs[i].grad_clip for i in active],
                                    cuda_graph=c0.compile and device.type == "cuda",
                                    compile=compiles_forward(c0.compile, device, ends, since),
                                    math_attention=math_attention_pays(len(active), task.seq_len)))

    stores, streams = {}, {}
    if active:
        packed = PackedModels(models)
        del models
        opt = PackedAdamW(packed, [cfgs[i].lr for i in active], [cfgs[i].weight_decay for i in active],
                          decayed, (c0.beta1, c0.beta2))
        if start >= 0:
            for row, i in enumerate(active):
                payload = load_checkpoint(folders[i].checkpoint_path(start), map_location="cpu")
                packed.load_from(row, payload["model"])
                for idx, st in payload["optimizer"]["state"].items():
                    opt.exp_avg[index_names[int(idx)]][row].copy_(st["exp_avg"])
                    opt.exp_avg_sq[index_names[int(idx)]][row].copy_(st["exp_avg_sq"])
            opt.steps.fill_(start)
        build(packed, opt)
        for i in active:
            folder, cfg = folders[i], cfgs[i]
            if start < 0:
                folder.write_config({
                    **cfg.to_dict(),
                    "model_config": model_cfg.to_dict(),
                    "resolved": {"steps": totals[i], "device": str(device), "autocast": str(amp_dtype or "fp32"),
                                 "non_embedding_params": non_embedding_params(model_cfg),
                                 "flops_per_token": accounting[i][0], "flops_per_step": accounting[i][1],
                                 "tokens_per_step": tokens_per_step, "seq_len": task.seq_len,
                                 "vocab": "".join(task.vocab), "packed_with": n,
                                 **({"ctx": cfg.context(task)} if cfg.paper else {})},
                    "torch_version": torch.__version__,
                    "quietlab_version": __version__,
                })
            stores[i] = folder.store()
            stores[i].truncate_after(start)
            streams[i] = ExampleStream(task, cfg.seed, cfg.batch_size, cfg.data_chunk, device)

    eval_steps = {i: set(schedule_steps(totals[i], cfgs[i].eval_every or max(1, round(totals[i] / 50)),
                                        cfgs[i].eval_per_decade)) for i in active}
    ckpt_steps = {i: set(schedule_steps(totals[i], cfgs[i].checkpoint_every or max(1, round(totals[i] / 20)),
                                        cfgs[i].checkpoint_per_decade)) for i in active}
    eval_batches = {i: task.sample(cfgs[i].eval_examples, seed=derive_seed(cfgs[i].seed, _EVAL), split="test")
                    for i in active}
    saved_configs = [c.to_dict() for c in cfgs]
    pending: list[tuple[int, torch.Tensor, list[float], list[int]]] = []  # (step, losses, lrs, runs) not yet stored
    clock = {"t": time.perf_counter(), "steps": 0, "flushed": time.perf_counter()}
    last_eval: dict[int, dict] = {}

    def flush(step: int) -> None:
        rows: dict[int, dict[int, dict]] = {i: {} for i in active}
        if pending:
            values = [l.tolist() for l in torch.cat([l for _, l, _, _ in pending]).split([len(r) for *_, r in pending])]
            for (s, _, lrs, runs), losses in zip(pending, values):
                for i, loss, lr in zip(runs, losses, lrs):
                    rows.setdefault(i, {})[s] = {"train/loss": loss, "train/lr": lr, "train/tokens": s * tokens_per_step,
                                                 "train/flops": s * accounting[i][1]}
            pending.clear()
        now = time.perf_counter()
        if clock["steps"]:  # each run advances at the pack's pace
            rate = clock["steps"] * tokens_per_step / max(now - clock["t"], 1e-9)
            for i in active:
                rows[i].setdefault(step, {})["train/tokens_per_s"] = rate
        for i, r in rows.items():
            for s, metrics in r.items():
                stores[i].log(s, metrics)
        clock.update(t=now, steps=0, flushed=now)

    def evaluate_now(step: int, runs: list[int]) -> None:
        flush(step)
        for i in runs:
            metrics = evaluate(pack["packed"].load_into(active.index(i), scratch), task, eval_batches[i], device, amp_dtype)
            stores[i].log(step, metrics)
            last_eval[i] = {"step": step, **metrics}
        clock.update(t=time.perf_counter(), steps=0)

    def checkpoint_now(step: int, runs: list[int], lrs: dict[int, float]) -> None:
        flush(step)
        for i in runs:
            row = active.index(i)
            state = _AdamWState(template, index_names, pack["opt"], row, lrs[i], cfgs[i].weight_decay)
            save_checkpoint(folders[i].path, step, pack["packed"].load_into(row, scratch), state, saved_configs[i])
        clock.update(t=time.perf_counter(), steps=0)

    def rates_of(step: int) -> tuple[torch.Tensor, list[float]]:
        """(every active run's lr and training progress for ``step`` on the device, the lrs as floats);
        computed 256 steps at a time and copied without waiting, so the step never syncs with the host."""
        cache = pack["lr_rows"]
        if step not in cache:
            cache.clear()
            last = min(step + 256, max(totals[i] for i in active) + 1)
            lrs = [[cfgs[i].lr_at(s - 1, totals[i]) for i in active] for s in range(step, last)]
            progress_rows = [[s / totals[i] for i in active] for s in range(step, last)]
            table = torch.tensor([a + b for a, b in zip(lrs, progress_rows)], dtype=torch.float64)
            if device.type == "cuda":
                table = table.pin_memory()
            on_device = table.to(device, non_blocking=True)
            for k, row in enumerate(lrs):
                cache[step + k] = (on_device[k], row)
        return cache[step]

    def set_progress(values: torch.Tensor) -> None:
        for b in pack["progress"]:
            b.copy_(values, non_blocking=True)

    total_max = max((totals[i] for i in active), default=0)
    bar = _progress_bar(progress and bool(active), total_max, max(start, 0))
    t_start = time.perf_counter()
    try:
        with bar if bar is not None else contextlib.nullcontext(), _StopRequested() as stop:
            if active:
                set_progress(torch.tensor([max(start, 0) / totals[i] for i in active], dtype=torch.float64, device=device))
            if start < 0 and active:
                evaluate_now(0, active)
                checkpoint_now(0, active, {i: cfgs[i].lr_at(0, totals[i]) for i in active})
                start = 0
            for step in range(start + 1, total_max + 1) if active else ():
                batches = [streams[i].batch(step) for i in active]
                tokens = torch.stack([b[0] for b in batches])
                mask = torch.stack([b[1] for b in batches])
                on_device, lrs = rates_of(step)
                k = len(active)
                pack["opt"].set_lr(on_device[:k])
                losses = pack["step"](tokens, mask)
                set_progress(on_device[k:])
                clock["steps"] += 1
                if step % c0.log_every == 0 or any(totals[i] == step for i in active):
                    pending.append((step, losses, lrs, list(active)))
                lr_of = dict(zip(active, lrs))
                due = [i for i in active if step in eval_steps[i]]
                if due:
                    evaluate_now(step, due)
                due = [i for i in active if step in ckpt_steps[i]]
                if due:
                    checkpoint_now(step, due, lr_of)
                if time.perf_counter() - clock["flushed"] > 1.0:
                    flush(step)
                    if bar is not None:
                        bar.update(0, completed=step, info=f"{len(active)} packed")
                if stop.requested and step < total_max:
                    due = [i for i in active if step not in ckpt_steps[i]]
                    if due:
                        checkpoint_now(step, due, lr_of)
                    raise TrainingInterrupted(step, folders[active[0]].path.parent)
                done_now = [i for i in active if totals[i] == step]
                if done_now:  # they leave the pack; the others go on as a smaller one
                    flush(step)
                    keep = [row for row, i in enumerate(active) if totals[i] != step]
                    for i in done_now:
                        streams.pop(i).close()
                        stores.pop(i).close()
                    active = [active[row] for row in keep]
                    if active:
                        packed = pack["packed"].select(keep)
                        build(packed, pack["opt"].select(keep, packed))
            flush(total_max)
            if bar is not None:
                bar.update(0, completed=total_max)
    finally:
        for stream in streams.values():
            stream.close()
        for store in stores.values():
            store.close()

    wall = time.perf_counter() - t_start
    out = []
    for i, folder in enumerate(folders):
        with folder.store(readonly=True) as s:
            losses = s.series("train/loss")[1]
            last = last_eval.get(i) or {"step": totals[i], **{m: s.series(m)[1][-1] for m in s.metric_names("eval/")}}
        out.append({**last, "train/loss": losses[-1] if losses else None, "steps": totals[i],
                    "train/tokens": totals[i] * tokens_per_step, "train/flops": totals[i] * accounting[i][1],
                    "wall_s": wall, "run_dir": str(folder.path)})
    return out
