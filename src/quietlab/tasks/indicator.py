"""The Eureka study's two-step task: a 2×2 image whose label needs an unsupervised intermediate decision.

Tiles [TL, TR; BL, BR]. TL and BR are *indicators*: digit images drawn uniformly from the pooled
classes {1, 2}; TR is the target image at the sample's index, BL a uniformly random target image.
Label: the class of TR when the two indicators show the same digit, else the class of BL. Each
indicator tile is tinted blue (0,0,1) or red (1,0,0), independently 50/50, and every tile's colour
multiplier gets per-channel jitter ε ~ N(0, 0.05²), one draw per tile and channel (pixel × (c + ε);
targets have c = white); the background stays 0 and the colour never affects the label. Pixels are /255
with no normalisation and no augmentation. Everything but TR is redrawn at every access, on the
validation side too (TR = test image #i).

Variants (``variant``):
- ``base``          as above (``spacial_decision_indicator_digit_1_2_fashion``);
- ``no_fixed_pos``  in each row indicator and target swap places w.p. ½; equal → the top row's target,
                    else the bottom row's;
- ``digit_group_4`` indicators from {1, 2, 3, 4}; "equal" means the same group, {1, 2} or {3, 4};
- ``colored_target`` targets tinted with one of 10 colours; equal → TR's class, else TR's colour index.

Features (one value per example, for probes on the CLS token): ``indicators_equal`` (the intermediate
decision), ``indicator_top`` / ``indicator_bottom`` (each indicator's class, an index into the indicator
digits), ``target_top`` / ``target_bottom`` (each target's class); in ``base`` top = TL / TR and
bottom = BR / BL.

The token version of the same rule for the decoder Transformer is ``two_step`` (registered task).
"""

from __future__ import annotations

import numpy as np

from . import register
from .base import TOKEN_DTYPE, Batch, Feature, FeatureRecorder, Knob, Task
from .image_data import ImageSet

VARIANTS = ("base", "no_fixed_pos", "digit_group_4", "colored_target")
BLUE, RED, WHITE = (0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (1.0, 1.0, 1.0)
JITTER = 0.05
# colored_target's ten tints, in the study's order of names; the RGB values are ours (the names only are the spec's)
TARGET_COLORS = np.array([
    (0.6, 0.3, 0.1), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.5, 0.0), (1.0, 0.0, 0.0),  # brown blue yellow orange red
    (0.0, 0.8, 0.0), (0.5, 0.0, 0.5), (0.5, 0.5, 0.5), (1.0, 0.6, 0.8), (0.25, 0.9, 0.8),  # green purple gray pink turquoise
], dtype=np.float32)
FEATURE_DOCS = {
    "indicators_equal": "binary: the intermediate decision, whether the two indicators agree (same digit / group)",
    "indicator_top": "categorical: the class of the top-row indicator (TL in base), index into the indicator digits",
    "indicator_bottom": "categorical: the class of the bottom-row indicator (BR in base)",
    "target_top": "categorical: the class of the top-row target (TR in base)",
    "target_bottom": "categorical: the class of the bottom-row target (BL in base)",
}


class IndicatorImages:
    """Composites of the 2×2 task from an indicator digit collection and a target collection."""

    def __init__(self, digits: ImageSet, targets: ImageSet, variant: str = "base"):
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if digits.size != targets.size:
            raise ValueError(f"indicator tiles are {digits.size}px, target tiles {targets.size}px: they must agree")
        self.variant = variant
        self.tile = digits.size
        self.image_size = 2 * self.tile
        self.indicator_digits = (1, 2, 3, 4) if variant == "digit_group_4" else (1, 2)
        self.n_classes = 10
        self.source = digits.source if digits is targets else f"indicators: {digits.source}; targets: {targets.source}"
        self._ind, self._tgt = {}, {}
        for split in ("train", "test"):
            x, y = getattr(digits, f"{split}_x"), getattr(digits, f"{split}_y")
            keep = np.isin(y, self.indicator_digits)
            if keep.sum() < 2:
                raise ValueError(f"the indicator digits {self.indicator_digits} are missing from {digits.source} ({split})")
            ind_class = np.searchsorted(np.array(self.indicator_digits), y[keep])
            self._ind[split] = (x[keep].astype(np.float32) / 255, ind_class)
            tx, ty = getattr(targets, f"{split}_x"), getattr(targets, f"{split}_y")
            self._tgt[split] = (tx.astype(np.float32) / 255, ty)

    def n_targets(self, split: str) -> int:
        return len(self._tgt[split][1])

    def equal(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The intermediate decision from two indicator classes (indices into ``indicator_digits``)."""
        if self.variant == "digit_group_4":
            return a // 2 == b // 2
        return a == b

    def draw(self, target_index: np.ndarray, rng: np.random.Generator, split: str = "train"):
        """(images (n, 3, H, W) float32, labels (n,) int64, features {name: (n,) int64}) for these TR indices."""
        n = len(target_index)
        ind_x, ind_y = self._ind[split]
        tgt_x, tgt_y = self._tgt[split]
        t = self.tile
        top_i, bot_i = rng.integers(0, len(ind_y), n), rng.integers(0, len(ind_y), n)
        bottom_target = rng.integers(0, len(tgt_y), n)
        top_target = np.asarray(target_index) % len(tgt_y)
        tints = np.where(rng.random((2, n, 1)) < 0.5, np.array(BLUE, np.float32), np.array(RED, np.float32))
        if self.variant == "colored_target":
            colour_index = rng.integers(0, len(TARGET_COLORS), (2, n))
            target_tints = TARGET_COLORS[colour_index]
        else:
            target_tints = np.broadcast_to(np.array(WHITE, np.float32), (2, n, 3))
        jitter = rng.normal(0.0, JITTER, (4, n, 3)).astype(np.float32)
        # slot of each tile within its row: indicator left on top and right at the bottom unless swapped
        swap = rng.random((2, n)) < 0.5 if self.variant == "no_fixed_pos" else np.zeros((2, n), dtype=bool)
        tiles = [  # (row, column of the indicator / target, grey image, colour multiplier)
            (0, swap[0].astype(int), ind_x[top_i], tints[0] + jitter[0]),
            (0, 1 - swap[0].astype(int), tgt_x[top_target], target_tints[0] + jitter[1]),
            (1, 1 - swap[1].astype(int), ind_x[bot_i], tints[1] + jitter[2]),
            (1, swap[1].astype(int), tgt_x[bottom_target], target_tints[1] + jitter[3]),
        ]
        images = np.zeros((n, 3, 2 * t, 2 * t), dtype=np.float32)
        for row, col, grey, colour in tiles:
            coloured = grey[:, None] * colour[:, :, None, None]  # (n, 3, t, t)
            for c in (0, 1):
                on = col == c
                images[on, :, row * t:(row + 1) * t, c * t:(c + 1) * t] = coloured[on]
        equal = self.equal(ind_y[top_i], ind_y[bot_i])
        top_class = tgt_y[top_target]
        otherwise = colour_index[0] if self.variant == "colored_target" else tgt_y[bottom_target]
        labels = np.where(equal, top_class, otherwise).astype(np.int64)
        features = {"indicators_equal": equal.astype(np.int64), "indicator_top": ind_y[top_i],
                    "indicator_bottom": ind_y[bot_i], "target_top": top_class, "target_bottom": tgt_y[bottom_target],
                    "answer_if_unequal": otherwise}  # the last is no feature: the decision accuracy needs it
        return images, labels, features

    def feature_kinds(self) -> dict[str, tuple[str, int]]:
        k = len(self.indicator_digits)
        return {"indicators_equal": ("binary", 2), "indicator_top": ("categorical", k),
                "indicator_bottom": ("categorical", k), "target_top": ("categorical", 10),
                "target_bottom": ("categorical", 10)}

    def as_features(self, values: dict[str, np.ndarray]) -> dict[str, Feature]:
        """The per-example labels as quietlab Features of one position (the CLS token), for fit_features."""
        out = {}
        for name, (kind, n_classes) in self.feature_kinds().items():
            v = np.asarray(values[name])
            out[name] = Feature(v.reshape(-1, 1, 1), np.ones((len(v), 1), dtype=bool), kind, n_classes, FEATURE_DOCS[name])
        return out

    def epoch_batches(self, seed: int, batch_size: int):
        """Endless TR-index batches: a fresh permutation of the train targets per epoch, the last partial batch dropped."""
        n = self.n_targets("train")
        if batch_size > n:
            raise ValueError(f"batch size {batch_size} exceeds the {n} training targets")
        rng = np.random.default_rng([seed, 0xE0])
        while True:
            order = rng.permutation(n)
            for lo in range(0, n - batch_size + 1, batch_size):
                yield order[lo:lo + batch_size]


@register
class TwoStep(Task):
    """Token version of the same two-step rule: ``aXYb=`` → X when a and b agree, else Y.

    Layout (as the image read row by row, TL TR BL BR): indicator a (letters ``ab..``), target X
    (digits), target Y, indicator b, ``=``, the answer digit, ``.``. Indicators are drawn uniformly
    from ``n_indicators`` letters; with ``groups`` = 2 "agree" means the same group (a, b) vs (c, d)
    as in ``digit_group_4``, else the same letter.
    """

    name = "two_step"
    description = "the Eureka study's two-step rule on tokens: aXYb= -> X if the indicators a, b agree, else Y"
    knobs = (
        Knob("n_classes", 10, 2, 10, "target classes (digits 0..n-1)"),
        Knob("n_indicators", 2, 2, 8, "indicator letters a, b, ..."),
        Knob("group_size", 1, 1, 4, "indicators agree when in the same group of this many letters (digit_group_4: 2)"),
    )
    feature_docs = {
        "indicators_equal": "binary: at the second indicator and at '=', whether the indicators agree",
        "indicator_top": "categorical: at the first indicator, its letter",
        "indicator_bottom": "categorical: at the second indicator, its letter",
        "target_top": "categorical: at X, its digit",
        "target_bottom": "categorical: at Y, its digit",
    }

    def _setup(self) -> None:
        if self.n_indicators % self.group_size:
            raise ValueError(f"{self.name}: n_indicators {self.n_indicators} is not a multiple of group_size {self.group_size}")
        self.letters = "abcdefgh"[: self.n_indicators]
        self.vocab = ["."] + list("0123456789"[: self.n_classes]) + list(self.letters) + ["="]
        self.seq_len = 7

    def _draw(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"ind": rng.integers(0, self.n_indicators, (n, 2)), "tgt": rng.integers(0, self.n_classes, (n, 2))}

    def _parse(self, prompt: str) -> dict[str, np.ndarray]:
        if len(prompt) != 4 or prompt[0] not in self.letters or prompt[3] not in self.letters \
                or any(c not in "0123456789"[: self.n_classes] for c in prompt[1:3]):
            raise ValueError(f"{self.name}: the input is a letter, two digits and a letter, got {prompt!r}")
        return {"ind": np.array([[self.letters.index(prompt[0]), self.letters.index(prompt[3])]]),
                "tgt": np.array([[int(prompt[1]), int(prompt[2])]])}

    def _build(self, inputs: dict[str, np.ndarray]) -> Batch:
        ind, tgt = np.asarray(inputs["ind"]), np.asarray(inputs["tgt"])
        n = len(ind)
        equal = ind[:, 0] // self.group_size == ind[:, 1] // self.group_size
        answer = np.where(equal, tgt[:, 0], tgt[:, 1])
        digit0, letter0, eq = 1, 1 + self.n_classes, len(self.vocab) - 1
        tokens = np.zeros((n, self.seq_len), dtype=TOKEN_DTYPE)
        tokens[:, 0], tokens[:, 3] = letter0 + ind[:, 0], letter0 + ind[:, 1]
        tokens[:, 1], tokens[:, 2] = digit0 + tgt[:, 0], digit0 + tgt[:, 1]
        tokens[:, 4], tokens[:, 5] = eq, digit0 + answer
        loss_mask = np.zeros((n, self.seq_len), dtype=bool)
        loss_mask[:, 4:6] = True
        rec = FeatureRecorder(n, self.seq_len)
        for name in self.feature_docs:
            kind = "binary" if name == "indicators_equal" else "categorical"
            classes = 2 if kind == "binary" else (self.n_indicators if name.startswith("indicator_") else self.n_classes)
            rec.declare(name, kind, n_classes=classes, description=self.feature_docs[name])
        rec.push("indicators_equal", 3, equal.astype(np.uint8))
        rec.push("indicators_equal", 4, equal.astype(np.uint8))
        rec.push("indicator_top", 0, ind[:, 0])
        rec.push("indicator_bottom", 3, ind[:, 1])
        rec.push("target_top", 1, tgt[:, 0])
        rec.push("target_bottom", 2, tgt[:, 1])
        return Batch(tokens, loss_mask, rec.features())
