"""How the Monitor reads a model's activations: the probe inputs and the taps behind them.

- :class:`TransformerTaps`: quietlab's own Transformer, through its ``capture=`` argument
  (``hook_embed``, ``blocks.{l}.hook_resid_post``, ``blocks.{l}.attn.hook_pattern``).
- :class:`ModuleTaps`: any ``torch.nn.Module``, through forward hooks on modules named as in
  ``named_modules()``. A tap's activation is the module's output (its first element when it returns a
  tuple or a ModelOutput). A TransformerLens ``HookedTransformer``'s hook names are its HookPoint modules'
  names, so they are taps like any other.

Both give ``capture(model, device)`` → {tap: (n, seq, d) activations of the probe inputs},
``attention_patterns(model)`` → {name: (batch, heads, q, k)} of the attention patterns they can see
(for the entropy statistic), ``names(model)`` (the taps) and ``token_only`` (the taps known to read
the token at each position alone: the Monitor's plateau probes skip them).
"""

from __future__ import annotations

import difflib
from typing import Mapping, Sequence

import numpy as np
import torch


class TransformerTaps:
    """quietlab's Transformer: its hook-named taps (default: the residual stream) on fixed probe tokens (n, seq)."""

    def __init__(self, tokens, entropy_tokens, layers: Sequence[str] | None = None):
        self.tokens = tokens
        self.entropy_tokens = entropy_tokens
        self.layers = None if layers is None else list(layers)

    @property
    def n(self) -> int:
        return len(self.tokens)

    def names(self, model) -> list[str]:
        """The taps a probe step fits at."""
        from .probes import residual_taps

        return list(self.layers) if self.layers is not None else residual_taps(model)

    @property
    def token_only(self) -> set[str]:
        """Taps whose activation at a position is a function of the token there alone (the embedding):
        what a probe can read there is the same at every step of training (see ``Monitor``)."""
        from ..models.hooks import EMBED

        return {EMBED}

    def capture(self, model, device=None) -> dict[str, torch.Tensor]:
        from .probes import capture_layers

        return capture_layers(model, self.tokens, device=device, layers=self.layers)

    @torch.no_grad()
    def attention_patterns(self, model) -> dict[str, torch.Tensor]:
        from ..models.hooks import block_of

        names = [n for n in model.tap_names() if n.endswith(".attn.hook_pattern") and block_of(n) is not None]
        if not names:
            return {}
        was_training = model.training
        model.eval()
        try:
            _, acts = model(self.entropy_tokens, capture=names)
        finally:
            model.train(was_training)
        return acts


class ModuleTaps:
    """Forward hooks on named submodules of any model, run on fixed probe inputs.

    ``inputs``: a LongTensor (n, seq) of token ids (passed as the model's first argument) or a dict of
    keyword arguments whose tensors have n rows (sliced into batches; other values passed as they are).
    ``patterns``: module names whose outputs are attention patterns (batch, heads, q, k), for the
    entropy statistic (default: every module named ``*.hook_pattern``, as in TransformerLens).
    """

    def __init__(self, model: torch.nn.Module, taps: Sequence[str], inputs, batch_size: int = 256,
                 entropy_examples: int = 64, patterns: Sequence[str] | None = None):
        modules = dict(model.named_modules())
        if isinstance(taps, str):
            taps = [taps]
        taps = list(dict.fromkeys(taps))
        if not taps:
            raise ValueError("give at least one tap (a module name from model.named_modules())")
        for name in taps:
            if name not in modules or name == "":
                near = difflib.get_close_matches(str(name), [m for m in modules if m], n=3, cutoff=0.5)
                hint = f"; did you mean {', '.join(map(repr, near))}?" if near else \
                    f"; module names look like {', '.join(repr(m) for m in list(modules)[1:4])}"
                raise ValueError(f"tap {name!r} is not a module of {type(model).__name__}{hint}")
        self.taps = taps
        self.modules = modules
        self.inputs = _check_inputs(inputs)
        self.n = _rows(self.inputs)
        self.batch_size = int(batch_size)
        self.patterns = [m for m in modules if m.endswith("hook_pattern")] if patterns is None else list(patterns)
        self.entropy_inputs = _slice(self.inputs, 0, min(self.n, int(entropy_examples)))

    def names(self, model) -> list[str]:
        """The taps a probe step fits at."""
        return list(self.taps)

    #: what any module's output depends on is unknown here: no tap is taken as token-only
    token_only: set[str] = set()

    def capture(self, model, device=None) -> dict[str, torch.Tensor]:
        """{tap: (n, seq, d) float32} on ``device`` (default: the model's), in eval mode, no grad."""
        p = next(model.parameters())
        device = torch.device(device) if device is not None else p.device
        chunks: dict[str, list[torch.Tensor]] = {t: [] for t in self.taps}
        for s in range(0, self.n, self.batch_size):
            acts = self._run(model, _slice(self.inputs, s, min(self.n, s + self.batch_size)), self.taps, p.device)
            for t in self.taps:
                a = acts[t]
                if a.ndim != 3:
                    raise ValueError(f"tap {t!r} gives activations of shape {tuple(a.shape)}; "
                                     "a tap must give (batch, seq, d)")
                chunks[t].append(a.to(device=device, dtype=torch.float32))
        return {t: torch.cat(c) for t, c in chunks.items()}

    def attention_patterns(self, model) -> dict[str, torch.Tensor]:
        if not self.patterns:
            return {}
        p = next(model.parameters())
        acts = self._run(model, self.entropy_inputs, self.patterns, p.device)
        return {n: a for n, a in acts.items() if a.ndim == 4}

    @torch.no_grad()
    def _run(self, model, inputs, names, device) -> dict[str, torch.Tensor]:
        got: dict[str, torch.Tensor] = {}

        def keep(name):
            def hook(module, args, output):
                got[name] = first_tensor(output, name)
            return hook

        handles = [self.modules[n].register_forward_hook(keep(n)) for n in names]
        was_training = model.training
        model.eval()
        try:
            if isinstance(inputs, Mapping):
                model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()})
            else:
                model(inputs.to(device))
        finally:
            model.train(was_training)
            for h in handles:
                h.remove()
        missing = [n for n in names if n not in got]
        if missing:
            raise ValueError(f"tap(s) {', '.join(map(repr, missing))} did not run in the model's forward pass")
        return got


def first_tensor(output, name: str = "") -> torch.Tensor:
    """A module's output, or its first element when it returns a tuple/list or a ModelOutput-like mapping."""
    while not isinstance(output, torch.Tensor):
        if isinstance(output, (tuple, list)) and output:
            output = output[0]
        elif isinstance(output, Mapping) and output:
            output = next(iter(output.values()))
        else:
            raise ValueError(f"tap {name!r} returns {type(output).__name__}, not a tensor (or a tuple starting with one)")
    return output.detach()


def _check_inputs(inputs):
    if isinstance(inputs, np.ndarray):
        inputs = torch.as_tensor(inputs)
    if isinstance(inputs, torch.Tensor):
        if inputs.ndim != 2 or inputs.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"inputs must be a LongTensor (n, seq) of token ids or a dict of model kwargs, "
                             f"got a {inputs.dtype} tensor of shape {tuple(inputs.shape)}")
        return inputs.long()
    if isinstance(inputs, Mapping):
        rows = {k: v.shape[0] for k, v in inputs.items() if isinstance(v, torch.Tensor) and v.ndim > 0}
        if not rows:
            raise ValueError("inputs is a dict with no tensor in it; give the model's keyword arguments, "
                             "e.g. {'input_ids': ids, 'attention_mask': mask}")
        if len(set(rows.values())) > 1:
            raise ValueError(f"the tensors of inputs have different numbers of rows: {rows}")
        return dict(inputs)
    raise ValueError(f"inputs must be a LongTensor (n, seq) or a dict of model kwargs, got {type(inputs).__name__}")


def _rows(inputs) -> int:
    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0]
    return next(v.shape[0] for v in inputs.values() if isinstance(v, torch.Tensor) and v.ndim > 0)


def _slice(inputs, start: int, stop: int):
    if isinstance(inputs, torch.Tensor):
        return inputs[start:stop]
    n = _rows(inputs)
    return {k: v[start:stop] if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == n else v
            for k, v in inputs.items()}
