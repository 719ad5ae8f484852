"""What every task of the ``paper`` preset shares: the loss mask that starts one token earlier.

The paper's targets run from ``=`` through the first end token (PAPER_PROTOCOL §0): the model also
learns to predict ``=`` from the last input token, and at evaluation the prompt is everything before
``=``. In quietlab's convention (``loss_mask[t]``: the next token is a target) that is the quietlab
mask plus the position before ``=``; ``Batch.answer_start`` then falls on ``=`` itself.
"""

from __future__ import annotations

import numpy as np

from .base import Batch, Feature


def target_equals(batch: Batch, features: dict[str, Feature] | None = None) -> Batch:
    """``batch`` with the position before each row's ``=`` added to its loss mask (and, if given,
    ``features`` in place of its own)."""
    loss_mask = batch.loss_mask.copy()
    first = loss_mask.argmax(axis=1)  # the position of '=' in each row
    loss_mask[np.arange(len(loss_mask)), first - 1] = True
    return Batch(batch.tokens, loss_mask, batch.features if features is None else features)


def shift_feature(feature: Feature, by: int, description: str) -> Feature:
    """The same labels ``by`` positions later (negative: earlier); labels shifted off the row are dropped."""
    values, mask = np.zeros_like(feature.values), np.zeros_like(feature.mask)
    if by >= 0:
        values[:, by:], mask[:, by:] = feature.values[:, : values.shape[1] - by], feature.mask[:, : mask.shape[1] - by]
    else:
        values[:, :by], mask[:, :by] = feature.values[:, -by:], feature.mask[:, -by:]
    return Feature(values, mask, feature.kind, feature.n_classes, description)
