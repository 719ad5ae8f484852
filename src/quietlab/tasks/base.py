"""The task contract: Task, Batch, Feature, and the recorder tasks use to label hidden steps.

A task draws raw inputs, runs its algorithm over the whole batch at once, and while it runs records
each intermediate result at the token position whose residual stream should hold it, the way CLRS's
samplers push hints (``rec.push("carry", pos, value)``).

Token layout of every example: ``input = answer .`` followed by ``.`` padding up to ``seq_len``;
``.`` is token 0 in every vocabulary and doubles as end-of-sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

FEATURE_KINDS = ("binary", "categorical", "multilabel", "scalar")
PAD = "."
SPLITS = ("train", "test")
TOKEN_DTYPE = np.uint8  # character-level vocabularies are small; consumers cast to long at the torch boundary


@dataclass(frozen=True)
class Feature:
    """One per-token label. ``values[i, t]`` is what the residual stream at position t should encode.

    binary:      k == 1, values in {0, 1}
    multilabel:  k labels, each in {0, 1} (e.g. queue membership of every node)
    categorical: k variables, each a class id in [0, n_classes)
    scalar:      k real numbers
    """

    values: np.ndarray  # (n, seq_len, k)
    mask: np.ndarray  # (n, seq_len) bool: where the label is defined
    kind: str
    n_classes: int = 2
    description: str = ""

    def __post_init__(self):
        if self.kind not in FEATURE_KINDS:
            raise ValueError(f"feature kind {self.kind!r} is not one of {', '.join(FEATURE_KINDS)}")
        if self.values.ndim != 3 or self.values.shape[:2] != self.mask.shape:
            raise ValueError(f"feature values {self.values.shape} do not match mask {self.mask.shape}")

    @property
    def k(self) -> int:
        return self.values.shape[2]

    def take(self, idx) -> "Feature":
        return Feature(self.values[idx], self.mask[idx], self.kind, self.n_classes, self.description)


@dataclass(frozen=True)
class Batch:
    tokens: np.ndarray  # TOKEN_DTYPE (n, seq_len)
    loss_mask: np.ndarray  # bool (n, seq_len): True where the NEXT token is part of the answer (EOS included)
    features: dict[str, Feature] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def answer_start(self) -> np.ndarray:
        """Index of the first answer token in each row (the prompt is ``tokens[i, :answer_start[i]]``)."""
        return self.loss_mask.argmax(axis=1) + 1

    def take(self, idx) -> "Batch":
        return Batch(self.tokens[idx], self.loss_mask[idx], {k: f.take(idx) for k, f in self.features.items()})

    @staticmethod
    def concat(batches: list["Batch"]) -> "Batch":
        first = batches[0]
        feats = {
            name: Feature(
                np.concatenate([b.features[name].values for b in batches]),
                np.concatenate([b.features[name].mask for b in batches]),
                f.kind,
                f.n_classes,
                f.description,
            )
            for name, f in first.features.items()
        }
        return Batch(
            np.concatenate([b.tokens for b in batches]),
            np.concatenate([b.loss_mask for b in batches]),
            feats,
        )


class FeatureRecorder:
    """Collects per-token labels while a vectorised algorithm runs over a batch.

    >>> rec = FeatureRecorder(n, seq_len)
    >>> rec.declare("carry", "binary", description="carry into the next bit")
    >>> rec.push("carry", pos, carry)          # pos: int or (n,) ints; value: (n,) or (n, k)
    """

    _DTYPES = {"binary": np.uint8, "multilabel": np.uint8, "categorical": np.int16, "scalar": np.float32}

    def __init__(self, n: int, seq_len: int):
        self.n, self.seq_len = n, seq_len
        # position-major buffers, (seq_len, n, k) and (seq_len, n): a push at one position writes one
        # contiguous block, and a probe's values[:, t] reads one (2-3x faster generation than
        # row-major storage); features() hands out their (n, seq_len, ...) transposes
        self._values: dict[str, np.ndarray] = {}
        self._masks: dict[str, np.ndarray] = {}
        self._blocks: dict[str, np.ndarray] = {}  # each (position, row)'s k values as one void item
        self._meta: dict[str, tuple[str, int, str]] = {}
        self._mask_of: dict[str, str] = {}  # feature -> the feature whose mask it shares (share_mask)
        self._rows = np.arange(n)

    def declare(self, name: str, kind: str, k: int = 1, n_classes: int = 2, description: str = "", dtype=None) -> None:
        self.declare_together({name: description}, kind, k, n_classes, dtype)

    def declare_together(self, descriptions: dict[str, str], kind: str, k: int = 1, n_classes: int = 2,
                         dtype=None) -> None:
        """Features of one kind and k (``{name: description}``) kept side by side in one buffer, each a
        view of its k columns. Features pushed at the same scattered (row, position) pairs then fill one
        memory block there instead of several far apart: fewer cache lines to fetch. ``dtype``: instead
        of the kind's default (a scalar feature of small integers fits int16: half the memory of float32)."""
        if kind not in FEATURE_KINDS:
            raise ValueError(f"feature kind {kind!r} is not one of {', '.join(FEATURE_KINDS)}")
        width = len(descriptions) * k
        if dtype is None:  # categorical labels below 128 fit int8: half the memory (and page faults) of int16
            dtype = np.int8 if kind == "categorical" and n_classes <= 127 else self._DTYPES[kind]
        buffer = np.zeros((self.seq_len, self.n, width), dtype=dtype)
        by_block = buffer.reshape(self.seq_len * self.n, width)  # row position * n + row: one (position, row)
        block = np.dtype((np.void, k * buffer.itemsize))
        for i, (name, description) in enumerate(descriptions.items()):
            self._values[name] = buffer[:, :, i * k : (i + 1) * k]
            self._blocks[name] = by_block[:, i * k : (i + 1) * k].view(block)[:, 0]
            self._masks[name] = np.zeros((self.seq_len, self.n), dtype=bool)
            self._meta[name] = (kind, n_classes, description)

    def share_mask(self, *names: str) -> None:
        """Features pushed at exactly the same (row, position) pairs: only the first one's mask is
        written while pushing (scattered writes cost a cache miss each), and features() gives them all
        that one array, read-only (one allocation instead of several: fresh pages cost a fault each)."""
        for name in names[1:]:
            del self._masks[name]
            self._mask_of[name] = names[0]

    def push(self, name: str, pos, value, where=None, rows=None) -> None:
        """Record ``value`` at position ``pos`` of every row (or of the rows where ``where`` is True).

        ``rows``: record only these rows, with ``pos``, ``value`` and ``where`` given for them alone."""
        value = np.asarray(value)
        if rows is None and isinstance(pos, (int, np.integer)):
            self._push_position(name, pos, value, where)
        else:
            self._push_scattered(name, pos, value, where, rows)

    def _push_position(self, name: str, pos: int, value: np.ndarray, where) -> None:
        """One position for every row: plain slicing of one contiguous block, no scatter."""
        target = self._values[name][pos]  # (n, k)
        mask = self._masks[name][pos] if name in self._masks else None  # None: shares another's mask
        if value.ndim == 1:
            value = value[:, None]
        if where is None:
            target[...] = value
            if mask is not None:
                mask[...] = True
            return
        where = np.asarray(where, dtype=bool)
        if value.dtype.kind in "biu" and mask is not None and not mask.any():
            # nothing recorded at pos yet, so the other rows hold zeros: a product, much faster than a
            # masked copy
            np.multiply(value, where[:, None], out=target, casting="unsafe")
            mask[...] = where
        else:
            np.copyto(target, value, casting="unsafe", where=where[:, None])
            if mask is not None:
                mask |= where

    def _push_scattered(self, name: str, pos, value: np.ndarray, where, rows) -> None:
        """Positions that differ from row to row: each row's k values are written as one memory block."""
        values, blocks = self._values[name], self._blocks[name]
        k = values.shape[2]
        rows = self._rows if rows is None else np.asarray(rows)
        if value.ndim <= 1:
            value = value.reshape(-1, 1) if value.ndim == 1 else value
        value = np.broadcast_to(value, (len(rows), k))
        pos = np.broadcast_to(np.asarray(pos), (len(rows),))
        if where is not None:
            where = np.asarray(where, dtype=bool)
            rows, pos, value = rows[where], pos[where], value[where]
        index = pos * self.n + rows  # of the (position, row) block
        blocks[index] = np.ascontiguousarray(value, dtype=values.dtype).view(blocks.dtype).reshape(-1)
        if name in self._masks:
            self._masks[name].reshape(-1)[index] = True

    def window(self, name: str, positions: slice) -> tuple[np.ndarray, np.ndarray]:
        """The (positions, n, k) values and (positions, n) mask of ``name`` at a slice of positions,
        views to write several positions' labels in one operation (and set the mask where written);
        a feature that shares another's mask (``share_mask``) gets that one."""
        mask = self._masks[self._mask_of.get(name, name)]
        return self._values[name][positions], mask[positions]

    def features(self) -> dict[str, Feature]:
        masks = {name: mask.T for name, mask in self._masks.items()}
        for leader in set(self._mask_of.values()):
            masks[leader].flags.writeable = False  # shared: a write through one feature would change the others
        for name, leader in self._mask_of.items():
            masks[name] = masks[leader]
        return {
            name: Feature(self._values[name].transpose(1, 0, 2), masks[name], kind, n_classes, desc)
            for name, (kind, n_classes, desc) in self._meta.items()
        }


@dataclass(frozen=True)
class Knob:
    """A size option of a task: ``get_task(name, **{knob.name: value})``."""

    name: str
    default: float
    low: float
    high: float
    help: str
    integer: bool = True

    def check(self, task: str, value):
        if self.integer:
            ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
        if not ok or not (self.low <= value <= self.high):
            kind = "an integer" if self.integer else "a number"
            raise ValueError(f"{task}: {self.name} must be {kind} in {self.allowed}, got {value!r}")
        return int(value) if self.integer else float(value)

    @property
    def allowed(self) -> str:
        return f"{self.low:g}..{self.high:g}"


_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _splitmix(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def hash_rows(columns: np.ndarray, seed: int) -> np.ndarray:
    """A 64-bit hash of each row of an integer matrix, a pure function of (row, seed)."""
    columns = np.ascontiguousarray(columns).astype(np.int64, copy=False).view(np.uint64)
    with np.errstate(over="ignore"):
        h = np.full(len(columns), np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15), dtype=np.uint64)
        for j in range(columns.shape[1]):
            h = _splitmix(h ^ columns[:, j])
    return h


class Task:
    """Base class. A subclass sets ``name``, ``knobs``, ``feature_docs`` and implements

    - ``_setup()``: compute ``self.vocab`` (``.`` first) and ``self.seq_len`` from the validated sizes;
    - ``_draw(n, rng) -> dict[str, ndarray]``: raw inputs, first axis n, in canonical form (one
      dict row per distinct example string);
    - ``_build(inputs) -> Batch``: tokens, loss mask and features, vectorised over the batch;
    - ``_parse(prompt) -> dict[str, ndarray]``: the inputs (n=1) of a prompt string ``input=``'s input.
    Optionally ``_identity(inputs)``: an integer matrix naming each example up to symmetry (e.g. a+b
    and b+a), so that both land on the same side of the split.
    """

    name: ClassVar[str]
    preset: ClassVar[str] = "quietlab"  # the task family: "quietlab" or "paper" (tasks/__init__.py)
    knobs: ClassVar[tuple[Knob, ...]] = ()
    feature_docs: ClassVar[dict[str, str]] = {}
    description: ClassVar[str] = ""
    heldout_fraction: ClassVar[float] = 0.25

    vocab: list[str]
    seq_len: int

    def __init__(self, split_seed: int = 0, **sizes):
        allowed = {k.name: k for k in self.knobs}
        for key in sizes:
            if key not in allowed:
                options = ", ".join(f"{k.name} ({k.allowed})" for k in self.knobs) or "none"
                raise ValueError(f"{self.name}: unknown size option {key!r}; allowed: {options}")
        self.sizes = {k.name: k.check(self.name, sizes.get(k.name, k.default)) for k in self.knobs}
        for key, value in self.sizes.items():
            setattr(self, key, value)
        self.split_seed = int(split_seed)
        self._setup()
        if self.vocab[0] != PAD:
            raise AssertionError(f"{self.name}: vocab must start with {PAD!r}")
        self._index = {ch: i for i, ch in enumerate(self.vocab)}

    # --- to implement -------------------------------------------------------------------------
    def _setup(self) -> None:
        raise NotImplementedError

    def _draw(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _build(self, inputs: dict[str, np.ndarray]) -> Batch:
        raise NotImplementedError

    def _parse(self, prompt: str) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _identity(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        n = len(next(iter(inputs.values())))
        return np.concatenate([np.asarray(v).reshape(n, -1).astype(np.int64) for _, v in sorted(inputs.items())], axis=1)

    # --- the contract -------------------------------------------------------------------------
    def sample(self, n: int, seed: int = 0, split: str = "train") -> Batch:
        """``n`` examples from one side of the split; the same (n, seed, split) gives the same batch."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = np.random.default_rng([int(seed), SPLITS.index(split), 0x9E37])
        want_test = split == "test"
        frac = self.heldout_fraction if want_test else 1 - self.heldout_fraction
        chunks, have = [], 0
        for _ in range(10_000):
            if have >= n:
                break
            m = max(16, int((n - have) / frac * 1.1) + 8)
            inputs = self._draw(m, rng)
            keep = np.flatnonzero(self.in_heldout(inputs) == want_test)[: n - have]  # the first ones only
            if len(keep):
                chunks.append({k: v.take(keep, axis=0) for k, v in inputs.items()})
                have += len(keep)
        else:
            raise RuntimeError(f"{self.name}: could not draw {n} examples from the {split} side")
        if len(chunks) > 1:
            inputs = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        else:
            inputs = chunks[0] if chunks else self._draw(0, rng)
        return self._build(inputs)

    def in_heldout(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """True for examples on the held-out side; a pure function of the example and ``split_seed``."""
        h = hash_rows(self._identity(inputs), self.split_seed)
        # the top 53 bits as a fraction of 2^53 are < heldout_fraction exactly when they are < this
        bound = np.uint64(math.ceil(self.heldout_fraction * (1 << 53)))
        return (h >> np.uint64(11)) < bound

    def encode(self, text: str) -> np.ndarray:
        if len(text) > self.seq_len:
            raise ValueError(f"{self.name}: text of length {len(text)} exceeds seq_len {self.seq_len}")
        bad = sorted(set(text) - set(self._index))
        if bad:
            raise ValueError(f"{self.name}: characters {''.join(bad)!r} are not in the vocabulary {''.join(self.vocab)!r}")
        row = np.zeros(self.seq_len, dtype=np.int64)
        row[: len(text)] = [self._index[c] for c in text]
        return row

    def decode(self, tokens_row) -> str:
        return "".join(self.vocab[int(t)] for t in tokens_row).rstrip(PAD)

    def is_correct(self, tokens_row) -> bool:
        """Whether the answer in a (generated) row is the one the task's own solver gives."""
        text = "".join(self.vocab[int(t)] if 0 <= int(t) < len(self.vocab) else "?" for t in tokens_row)
        if "=" not in text:
            return False
        prompt, _, rest = text.partition("=")
        answer = rest.split(PAD, 1)[0]
        try:
            inputs = self._parse(prompt)
        except (ValueError, IndexError, KeyError):
            return False
        expected = self.decode(self._build(inputs).tokens[0]).partition("=")[2]
        return answer == expected

    def describe(self) -> dict:
        """What `quietlab tasks` shows: sizes, seq_len, vocabulary and features."""
        return {
            "name": self.name,
            "preset": self.preset,
            "description": self.description,
            "sizes": {k.name: {"value": self.sizes[k.name], "allowed": k.allowed, "help": k.help} for k in self.knobs},
            "seq_len": self.seq_len,
            "vocab": "".join(self.vocab),
            "features": dict(self.feature_docs),
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        return f"{type(self).__name__}({args})"
