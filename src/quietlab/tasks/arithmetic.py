"""Binary arithmetic: addition, multiplication and majority of majorities.

Every number is written least-significant bit first, one token per bit. Examples travel between
``_draw``, the split and ``_build`` as packed uint64 words (64 bits to a word), never as Python
integers; ``_build`` unpacks them into bit matrices and runs the schoolbook algorithms (ripple carry,
shift-and-add), one bit position at a time and vectorised over the batch, with the batch on the fast
(last) axis so that every step touches one contiguous row.

Position convention of the answer features, the paper's: "answer token r" is the position holding
result bit r. There the residual stream should hold what the next token, result bit r+1, needs (the
carry c_{r+1} into it, as in the paper) and the operand bits a_r, b_r of the bit just written. The
``next_*_bit`` controls are the next token itself, at every position that predicts a result bit
(``=`` for bit 0).
"""

from __future__ import annotations

import numpy as np

from . import register
from .base import TOKEN_DTYPE, Batch, FeatureRecorder, Knob, Task

_BIT_VOCAB = [".", "0", "1"]  # token of bit v is v + 1


def _random_words(rng: np.random.Generator, n: int, n_bits: int) -> np.ndarray:
    """(n, ceil(n_bits/64)) uint64: n random numbers of n_bits bits, 64 bits to a word, low word first.

    Examples travel between _draw, the split and _build in this packed form: one row per distinct
    example string, cheap to hash and to filter."""
    n_words = -(-n_bits // 64)
    words = rng.integers(0, 1 << 64, size=(n, n_words), dtype=np.uint64)
    top = n_bits - 64 * (n_words - 1)
    if top < 64:
        words[:, -1] &= np.uint64((1 << top) - 1)
    return words


def _unpack(words: np.ndarray, n_bits: int) -> np.ndarray:
    """(n, n_words) uint64 -> (n, n_bits) uint8 bits, LSB first."""
    return np.unpackbits(words.astype("<u8", copy=False).view(np.uint8), axis=1, count=n_bits, bitorder="little")


def _pack(bits: np.ndarray) -> np.ndarray:
    """(n, n_bits) bits, LSB first -> (n, ceil(n_bits/64)) uint64 words (the inverse of _unpack)."""
    n, m = bits.shape
    packed = np.zeros((n, -(-m // 64) * 8), dtype=np.uint8)
    packed[:, : -(-m // 8)] = np.packbits(bits, axis=1, bitorder="little")
    return packed.view("<u8")


def _parse_bits(text: str, n_bits: int, what: str) -> np.ndarray:
    if len(text) != n_bits or set(text) - {"0", "1"}:
        raise ValueError(f"{what} must be {n_bits} binary digits, got {text!r}")
    return _pack((np.frombuffer(text.encode(), dtype=np.uint8) - ord("0")).reshape(1, n_bits))


def _fixed_loss_mask(n: int, seq_len: int, first: int, last: int) -> np.ndarray:
    """True at positions first..last (inclusive) of every row."""
    row = np.zeros(seq_len, dtype=bool)
    row[first : last + 1] = True
    return np.broadcast_to(row, (n, seq_len)).copy()


class _TwoOperandTask(Task):
    """Shared by addition and multiplication: ``a OP b = result``, operands of ``n_bits`` bits."""

    op: str
    result_bits: int

    def _setup(self) -> None:
        n = self.n_bits
        self.vocab = _BIT_VOCAB + [self.op, "="]
        self.result_bits = self._result_bits(n)
        self.eq = 2 * n + 1  # position of '='; the token predicting result bit j sits at eq + j
        self.seq_len = 2 * n + 2 + self.result_bits + 1  # a, op, b, '=', result, EOS '.'

    def _draw(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        # a and b as (n, 1) uint64 words (n_bits <= 64)
        return {"a": _random_words(rng, n, self.n_bits), "b": _random_words(rng, n, self.n_bits)}

    def _identity(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        # the unordered pair {a, b}: a OP b and b OP a land on the same side of the split
        a, b = inputs["a"][:, 0], inputs["b"][:, 0]
        return np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1).view(np.int64)

    def _operand_bits(self, inputs: dict[str, np.ndarray]):
        """The operands as bits, (n, n_bits) for the tokens and (n_bits, n) for the bit-serial loops."""
        a, b = _unpack(inputs["a"], self.n_bits), _unpack(inputs["b"], self.n_bits)
        return a, b, np.ascontiguousarray(a.T), np.ascontiguousarray(b.T)

    def _parse(self, prompt: str) -> dict[str, np.ndarray]:
        left, sep, right = prompt.partition(self.op)
        if not sep:
            raise ValueError(f"{self.name}: prompt {prompt!r} has no {self.op!r}")
        return {"a": _parse_bits(left, self.n_bits, "a"), "b": _parse_bits(right, self.n_bits, "b")}

    def _tokens(self, a: np.ndarray, b: np.ndarray, result_t: np.ndarray) -> np.ndarray:
        """Token matrix from operand bits (n, n_bits) and result bits laid out (result_bits, n)."""
        n, nb = a.shape
        tokens = np.zeros((n, self.seq_len), dtype=TOKEN_DTYPE)
        tokens[:, :nb] = a + 1
        tokens[:, nb] = self.vocab.index(self.op)
        tokens[:, nb + 1 : 2 * nb + 1] = b + 1
        tokens[:, self.eq] = self.vocab.index("=")
        tokens[:, self.eq + 1 : self.eq + 1 + self.result_bits] = result_t.T + 1
        return tokens


@register
class Addition(_TwoOperandTask):
    """Binary addition ``a+b=s`` (LSB first), s written with n_bits + 1 bits.

    Positions (n = n_bits): a_i at i, ``+`` at n, b_i at n+1+i, ``=`` at 2n+1, s_r at 2n+2+r
    ("answer token r"), EOS at 3n+3.
    """

    name = "addition"
    op = "+"
    description = "binary addition a+b=s, LSB first; s has n_bits+1 bits"
    knobs = (Knob("n_bits", 16, 2, 64, "bits per operand (the paper uses 16)"),)
    feature_docs = {
        "carry": "binary: at answer token r (position 2n+2+r, holding s_r; r=0..n-1), the carry c_{r+1} "
        "out of bit r into bit r+1 (quiet in the paper)",
        "first_operand": "binary: at answer token r (r=0..n-1), bit a_r of the first operand (quiet in the paper)",
        "second_operand": "binary: at answer token r (r=0..n-1), bit b_r of the second operand",
        "next_sum_bit": "binary: at '=' and at answer tokens r=0..n-1, the next token s_{r+1} (s_0 at '='); "
        "a loud control",
    }

    @staticmethod
    def _result_bits(n_bits: int) -> int:
        return n_bits + 1

    def _build(self, inputs: dict[str, np.ndarray]) -> Batch:
        a, b, A, B = self._operand_bits(inputs)  # A, B: (bit, example)
        n, nb = a.shape
        rec = FeatureRecorder(n, self.seq_len)
        for feat, doc in self.feature_docs.items():
            rec.declare(feat, "binary", description=doc)
        s = np.empty((nb + 1, n), dtype=np.uint8)
        carry = np.zeros(n, dtype=np.uint8)  # c_0 = 0
        for j in range(nb):  # ripple carry, one bit position at a time
            token = self.eq + 1 + j  # answer token j, which holds s_j
            half = A[j] ^ B[j]
            s[j] = half ^ carry
            rec.push("next_sum_bit", token - 1, s[j])
            rec.push("first_operand", token, A[j])
            rec.push("second_operand", token, B[j])
            carry = (A[j] & B[j]) | (carry & half)  # c_{j+1}, which the next token s_{j+1} needs
            rec.push("carry", token, carry)
        s[nb] = carry
        rec.push("next_sum_bit", self.eq + nb, carry)
        tokens = self._tokens(a, b, s)
        loss_mask = _fixed_loss_mask(n, self.seq_len, self.eq, self.seq_len - 2)
        return Batch(tokens, loss_mask, rec.features())


@register
class Multiplication(_TwoOperandTask):
    """Binary multiplication ``a*b=p`` (LSB first), p written with 2·n_bits bits.

    Positions (n = n_bits): a_i at i, ``*`` at n, b_i at n+1+i, ``=`` at 2n+1, p_r at 2n+2+r
    ("answer token r"), EOS at 4n+2.

    The product is computed by shift-and-add: S_0 = 0, S_{k+1} = S_k + ((b_k·a) << k), each
    addition a ripple-carry pass; ``partial_carry`` records the carries of those passes.
    """

    name = "multiplication"
    op = "*"
    description = "binary multiplication a*b=p, LSB first; p has 2*n_bits bits"
    knobs = (Knob("n_bits", 16, 2, 64, "bits per operand (the paper uses 16)"),)
    feature_docs = {
        "partial_carry": "multilabel (n_bits columns): at answer token r (position 2n+2+r, holding p_r; "
        "r=0..2n-2), column k is the carry into bit r+1 when adding the k-th shifted partial product "
        "(b_k*a)<<k to the running sum of the partial products 0..k-1 (quiet in the paper)",
        "column_carry": "categorical (n_bits classes): at answer token r (r=0..2n-2), the carry into column "
        "r+1 of schoolbook column addition, floor(sum_{i+k<=r} a_i b_k 2^(i+k) / 2^(r+1))",
        "first_operand": "binary: at answer token r (r=0..n-1), bit a_r of the first operand (quiet in the paper)",
        "second_operand": "binary: at answer token r (r=0..n-1), bit b_r of the second operand",
        "next_product_bit": "binary: at '=' and at answer tokens r=0..2n-2, the next token p_{r+1} (p_0 at '='); "
        "a loud control",
    }

    @staticmethod
    def _result_bits(n_bits: int) -> int:
        return 2 * n_bits

    def _build(self, inputs: dict[str, np.ndarray]) -> Batch:
        a, b, A, B = self._operand_bits(inputs)  # A, B: (bit, example)
        n, nb = a.shape
        width = 2 * nb
        docs = self.feature_docs
        rec = FeatureRecorder(n, self.seq_len)
        rec.declare("partial_carry", "multilabel", k=nb, description=docs["partial_carry"])
        rec.declare("column_carry", "categorical", n_classes=nb, description=docs["column_carry"])
        for feat in ("first_operand", "second_operand", "next_product_bit"):
            rec.declare(feat, "binary", description=docs[feat])
        for r in range(nb):  # answer token r sits at eq + 1 + r
            rec.push("first_operand", self.eq + 1 + r, A[r])
            rec.push("second_operand", self.eq + 1 + r, B[r])

        # shift-and-add: carries[j, k] = carry into bit j while adding partial product k
        running = np.zeros((width, n), dtype=np.uint8)
        carries = np.zeros((width + 1, nb, n), dtype=np.uint8)
        for k in range(nb):
            partial = A & B[k]  # (b_k * a), to be added at offset k
            carry = carries[k, k]  # zeros: no carry into the lowest bit of the addition
            for j in range(k, k + nb + 1):  # S_k and the addend are 0 above bit k+n-1
                x = partial[j - k] if j - k < nb else 0
                s = running[j]
                half = s ^ x
                carry, running[j] = (s & x) | (carry & half), half ^ carry  # s is a view: read it first
                carries[j + 1, k] = carry
        for j in range(1, width):  # the carries into bit j, at answer token j-1
            rec.push("partial_carry", self.eq + j, carries[j].T)

        # schoolbook columns: column j sums a_i*b_k over i+k=j, then carries ripple upwards
        counts = np.zeros((width, n), dtype=np.int16)
        for k in range(nb):
            counts[k : k + nb] += A & B[k]
        col_carry = np.zeros(n, dtype=np.int16)
        for j in range(width):
            if j:
                rec.push("column_carry", self.eq + j, col_carry)
            rec.push("next_product_bit", self.eq + j, running[j])
            col_carry = (counts[j] + col_carry) >> 1

        tokens = self._tokens(a, b, running)
        loss_mask = _fixed_loss_mask(n, self.seq_len, self.eq, self.seq_len - 2)
        return Batch(tokens, loss_mask, rec.features())


@register
class MajorityOfMajorities(Task):
    """``bits=m``: the bits split into n_groups consecutive groups of equal, odd size; m is the
    majority of the groups' majority bits.

    Sizes: the paper uses 32 bits, but 32 cannot be split into an odd number of odd-sized groups (so
    that neither vote can tie), so the default is n_bits=35, n_groups=5: five groups of seven, the
    nearest size to the paper's with both levels of the vote non-trivial and balanced.
    n_groups=1 gives the plain majority.

    Positions (n = n_bits, g = group size): bit i at i (group i // g), ``=`` at n, the answer at n+1,
    EOS at n+2.
    """

    name = "majority_of_majorities"
    description = "majority of the majorities of n_groups equal, odd-sized groups of bits"
    knobs = (
        Knob("n_bits", 35, 1, 255, "number of input bits; n_groups x an odd group size"),
        Knob("n_groups", 5, 1, 255, "number of groups (odd)"),
    )
    feature_docs = {
        "group_count": "categorical (group size + 1 classes): at input bit i, the number of ones in "
        "i's group up to and including bit i",
        "majorities_so_far": "categorical (n_groups + 1 classes): at input bit i and at '=', the number of "
        "groups completed so far (up to and including bit i) whose majority is 1",
        "group_majority": "multilabel (n_groups columns): at the last bit of the input and at '=', "
        "the majority bit of every group",
    }

    def _setup(self) -> None:
        n, g = self.n_bits, self.n_groups
        if g % 2 == 0:
            raise ValueError(f"{self.name}: n_groups must be odd, so that the vote of the groups cannot tie; got {g}")
        if n % g or (n // g) % 2 == 0:
            options = [g * size for size in range(1, 256, 2) if g * size <= 255]
            shown = ", ".join(map(str, options[:6])) + (", ..." if len(options) > 6 else "")
            raise ValueError(
                f"{self.name}: n_bits must be n_groups times an odd group size, so that no group's vote ties; "
                f"for n_groups={g} that is one of {shown} (got n_bits={n})"
            )
        self.group_size = n // g
        self.vocab = _BIT_VOCAB + ["="]
        self.seq_len = n + 3

    def _draw(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"bits": _random_words(rng, n, self.n_bits)}  # packed, 64 bits to a word

    def _identity(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return inputs["bits"].view(np.int64)

    def _parse(self, prompt: str) -> dict[str, np.ndarray]:
        return {"bits": _parse_bits(prompt, self.n_bits, "the input")}

    def _build(self, inputs: dict[str, np.ndarray]) -> Batch:
        bits = _unpack(inputs["bits"], self.n_bits)
        n, nb = bits.shape
        G, g = self.n_groups, self.group_size
        docs = self.feature_docs
        rec = FeatureRecorder(n, self.seq_len)
        rec.declare("group_count", "categorical", n_classes=g + 1, description=docs["group_count"])
        rec.declare("majorities_so_far", "categorical", n_classes=G + 1, description=docs["majorities_so_far"])
        rec.declare("group_majority", "multilabel", k=G, description=docs["group_majority"])
        X = np.ascontiguousarray(bits.T)  # (bit, example)
        majorities = np.zeros((G, n), dtype=np.uint8)
        votes = np.zeros(n, dtype=np.int16)
        for grp in range(G):
            count = np.zeros(n, dtype=np.int16)
            for i in range(grp * g, (grp + 1) * g):  # read the group bit by bit
                count += X[i]
                rec.push("group_count", i, count)
                if i == (grp + 1) * g - 1:  # the group is complete: its majority votes
                    majorities[grp] = 2 * count > g
                    votes += majorities[grp]
                rec.push("majorities_so_far", i, votes)
        rec.push("majorities_so_far", nb, votes)
        rec.push("group_majority", nb - 1, majorities.T)
        rec.push("group_majority", nb, majorities.T)
        answer = (2 * votes > G).astype(np.int64)

        tokens = np.zeros((n, self.seq_len), dtype=TOKEN_DTYPE)
        tokens[:, :nb] = bits + 1
        tokens[:, nb] = self.vocab.index("=")
        tokens[:, nb + 1] = answer + 1
        loss_mask = _fixed_loss_mask(n, self.seq_len, nb, nb + 1)
        return Batch(tokens, loss_mask, rec.features())
