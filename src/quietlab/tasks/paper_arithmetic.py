"""The paper preset's binary tasks (PAPER_PROTOCOL §0-1): addition, multiplication (written with
``+``) and majority of majorities (64 bits, 4 groups of 16, ties counted as 0).

The algorithms and layouts are quietlab's (tasks/arithmetic.py), whose tokens already match the
paper's strings; what differs is the loss mask (``=`` is a target), where the operand bits are
labelled (the paper puts a_r at t0+r, t0 = the position of ``=``), the tie rules and majority's
sampler. The vocabulary is the paper's binary one, ``0 1 + = <EOS>``, with ``<EOS>`` written ``.``
and numbered 0 (the paper numbers it 4; a renaming of tokens).
"""

from __future__ import annotations

import numpy as np

from . import register
from .arithmetic import _BIT_VOCAB, Addition, MajorityOfMajorities, Multiplication, _pack
from .base import Batch, Feature, Knob
from .paper_format import shift_feature, target_equals

_OPERAND_DOCS = {
    "first_operand": "binary: at t0+r (t0 = the position of '='; r=0..n-1), bit a_r of the first operand "
    "(the paper's position; quiet in the paper)",
    "second_operand": "binary: at t0+r (r=0..n-1), bit b_r of the second operand",
}


def _with_paper_operands(task, batch: Batch, extra: dict[str, Feature] | None = None) -> Batch:
    features = dict(batch.features)
    for name, doc in _OPERAND_DOCS.items():  # quietlab labels a_r at t0+1+r
        features[name] = shift_feature(features[name], -1, doc)
    features.update(extra or {})
    return target_equals(batch, features)


@register
class PaperAddition(Addition):
    """``a+b=s`` as the paper writes it: 16-bit operands and the 17-bit sum, all LSB first; ``=``
    at t0 = 2n+1, s_r at t0+1+r; 52 tokens at n=16."""

    preset = "paper"
    feature_docs = {**Addition.feature_docs, **_OPERAND_DOCS}

    def _build(self, inputs: dict[str, np.ndarray]) -> Batch:
        return _with_paper_operands(self, super()._build(inputs))


@register
class PaperMultiplication(Multiplication):
    """``a+b=p``: the paper writes the product with ``+`` (PAPER_PROTOCOL §0); p has 2n bits, LSB
    first; 67 tokens at n=16."""

    preset = "paper"
    op = "+"
    description = "binary multiplication written a+b=p (the paper's format), LSB first; p has 2*n_bits bits"
    feature_docs = {
        **Multiplication.feature_docs,
        **_OPERAND_DOCS,
        "carry_16": "binary: at t0+n+r (holding p_{n-1+r}; r=0..n-1), the carry out of column n-1+r when the "
        "last partial product (b_{n-1}·a) << (n-1) is added to the sum of the others (all 0 when "
        "b_{n-1} = 0); the paper's carry_16 at n=16 (quiet in the paper)",
    }

    def _build(self, inputs: dict[str, np.ndarray]) -> Batch:
        batch = super()._build(inputs)
        nb = self.n_bits
        partial = batch.features["partial_carry"]  # column k at answer token r: the carry into bit r+1
        mask = partial.mask.copy()
        mask[:, : self.eq + nb] = False  # answer tokens n-1 .. 2n-2: carries out of columns n-1 .. 2n-2
        carry_16 = Feature(partial.values[:, :, nb - 1 : nb], mask, "binary",
                           description=self.feature_docs["carry_16"])
        return _with_paper_operands(self, batch, {"carry_16": carry_16})


@register
class PaperMajorityOfMajorities(MajorityOfMajorities):
    """``bits=m`` over 64 bits in 4 consecutive groups of 16: a group votes 1 iff more than half its
    bits are 1 (8 of 16 is 0), m = 1 iff more than half the groups vote 1 (2 of 4 is 0).

    The paper's sampler (``sample_bitstrings`` for 64 bits): a pool of distinct integers in
    [0, 2^63 - 1) and their int64 negations, each written byte little-endian, bit big-endian, so bit
    56 is the sign. One example here is one draw from that pool's marginal: a uniform integer,
    negated with probability 1/2 (the pool's pairing of x with -x is not kept).
    """

    preset = "paper"
    description = "majority of the majorities of n_groups groups of a 64-bit string; ties count as 0"
    knobs = (
        Knob("n_bits", 64, 64, 64, "number of input bits (the paper's sampler writes one int64: 64)"),
        Knob("n_groups", 4, 1, 64, "number of equal consecutive groups, dividing 64 (the paper uses 4)"),
    )

    def _setup(self) -> None:
        n, g = self.n_bits, self.n_groups
        if n % g:
            divisors = ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)
            raise ValueError(f"{self.name}: n_groups must divide n_bits={n}: one of {divisors} (got {g})")
        self.group_size = n // g
        self.vocab = _BIT_VOCAB + ["+", "="]  # the paper's binary vocabulary, '+' unused here
        self.seq_len = n + 3

    def _draw(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        value = rng.integers(0, (1 << 63) - 1, size=n, dtype=np.int64)
        value = np.where(rng.integers(0, 2, size=n, dtype=np.int8) == 1, -value, value)
        bits = np.unpackbits(value.astype("<i8").view(np.uint8).reshape(n, 8), axis=1, bitorder="big")
        return {"bits": _pack(bits)}

    def _build(self, inputs: dict[str, np.ndarray]) -> Batch:
        return target_equals(super()._build(inputs))
