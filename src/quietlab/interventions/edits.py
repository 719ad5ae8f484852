"""Interventions on the residual stream along a probe's directions, as model edits.

Every method is an affine map applied at one layer, at each position t where the feature is defined:

    x'  =  x - U_t (V_t x - s_t)

with U_t (d, r), V_t (r, d) and s_t (r,) (or one s per example, for ``resample``):

- ``boundary``  the paper's intervention. For one probe w·x + b with |w| = 1 (b scaled the same) it is
                x - (w·x + b)·w, so the probe then reads exactly its decision boundary. For a probe
                with k outputs W (k, d), b (k,) it is the least-norm change that puts every output on
                its boundary: x - W⁺(W x + b), W⁺ the pseudo-inverse (U = W⁺, V = W, s = -b); for
                k = 1 this is the paper's formula. The study itself, for k outputs, takes one such step
                per row and adds them, x - Σ_v (ŵ_v·x + b̂_v) ŵ_v with ŵ_v = w_v/‖w_v‖, b̂_v = b_v/‖w_v‖
                (``paper_boundary_params``; the paper preset's ablation): not a projection, and for
                rows that are not orthogonal not exactly onto every boundary.
- ``mean``      replace the component in the span of W's rows by its mean over a reference set:
                Q an orthonormal basis of that span, x - Q Qᵀ(x - μ_t).
- ``erase``     LEACE (Belrose et al., 2023): the least-squares-optimal affine eraser after which no
                linear probe recovers the feature better than a constant: with whitening
                A = (Σ_xx^{1/2})⁺ and Q_p an orthonormal basis of the column space of A Σ_xz,
                x - Σ_xx^{1/2} Q_p Q_pᵀ A (x - μ).
- ``resample``  the component in the span of W's rows taken from another example's activation at the
                same position: x - Q Qᵀ x + Q Qᵀ x_other.

Random controls use the same method in random subspaces of the same rank at the same places, scaled
(``AffineEdit.scaled``) so that at each position they move the activations as far on average (mean
‖Δx‖, ``AffineEdit.sizes``) as the feature's edit does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

METHODS = ("boundary", "mean", "erase", "resample")


@dataclass
class AffineEdit:
    """The edit ``x - U_t (V_t x - s_t)`` at the positions of ``where`` (B, T) bool, one layer's tap."""

    U: torch.Tensor  # (T, d, r)
    V: torch.Tensor  # (T, r, d)
    s: torch.Tensor  # (T, r) or (B, T, r)
    where: torch.Tensor  # (B, T) bool: rows and positions the edit applies to

    def __call__(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        U, V, where = self.U[positions], self.V[positions], self.where[:, positions]
        s = self.s[:, positions] if self.s.dim() == 3 else self.s[positions][None]
        if not bool(where.any()):
            return x
        xf = x.float()
        coord = torch.einsum("trd,btd->btr", V, xf) - s  # (B, T', r)
        delta = torch.einsum("tdr,btr->btd", U, coord)
        return torch.where(where[..., None], xf - delta, xf).to(x.dtype)

    def sizes(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Σ ‖Δx‖, count) per position of ``positions`` over the rows the edit applies to: how far it moves x."""
        where = self.where[:, positions]
        moved = (self(x, positions).float() - x.float()).norm(dim=-1) * where
        return moved.sum(0), where.sum(0)

    def scaled(self, factor: torch.Tensor) -> "AffineEdit":
        """The same edit with its move Δx multiplied by ``factor[t]`` at each position t."""
        return AffineEdit(self.U * factor.to(self.U)[:, None, None], self.V, self.s, self.where)

    def to(self, device) -> "AffineEdit":
        return AffineEdit(self.U.to(device), self.V.to(device), self.s.to(device), self.where.to(device))


def _orthonormal_rows(W: np.ndarray, tol: float = 1e-8) -> np.ndarray:
    """An orthonormal basis (d, r) of the span of W's rows."""
    if not np.any(W):
        return np.zeros((W.shape[1], 0))
    u, sv, vt = np.linalg.svd(W, full_matrices=False)
    rank = int((sv > tol * sv.max()).sum())
    return vt[:rank].T


def _stack(per_position: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]], T: int, d: int):
    """Pad each position's (U, V, s) to a common rank r and stack them into (T, ...) tensors."""
    r = max([u.shape[1] for u, _, _ in per_position.values()] + [1])
    U, V, s = np.zeros((T, d, r)), np.zeros((T, r, d)), np.zeros((T, r))
    for t, (u, v, c) in per_position.items():
        k = u.shape[1]
        U[t, :, :k], V[t, :k], s[t, :k] = u, v, c
    return (torch.tensor(U, dtype=torch.float32), torch.tensor(V, dtype=torch.float32),
            torch.tensor(s, dtype=torch.float32))


def boundary_params(W: np.ndarray, b: np.ndarray):
    W, b = np.asarray(W, np.float64), np.asarray(b, np.float64)
    return np.linalg.pinv(W), W, -b


def paper_boundary_params(W: np.ndarray, b: np.ndarray):
    """The study's step x - Σ_v (ŵ_v·x + b̂_v) ŵ_v over the rows v of W with w_v ≠ 0 (a row constant on
    probe-train has no probe and is left out): U = Ŵᵀ, V = Ŵ, s = -b̂."""
    W, b = np.asarray(W, np.float64), np.asarray(b, np.float64)
    norms = np.linalg.norm(W, axis=1)
    keep = norms > 0
    unit = W[keep] / norms[keep, None]
    return unit.T, unit, -b[keep] / norms[keep]


def paper_edit(probes: dict[int, tuple[np.ndarray, np.ndarray]], where: np.ndarray, d: int) -> AffineEdit:
    """The study's ablation (``paper_boundary_params``) with one probe (W (k, d), b (k,)) per position."""
    U, V, s = _stack({t: paper_boundary_params(W, b) for t, (W, b) in probes.items()}, where.shape[1], d)
    return AffineEdit(U, V, s, torch.as_tensor(np.asarray(where, bool)))


def paper_controls(probes: dict[int, tuple[np.ndarray, np.ndarray]], d: int, rng: np.random.Generator):
    """The study's random control of ``probes``: at each position, one fresh unit Gaussian direction per
    probe row (rows with w_v = 0 left out), each keeping its row's normalised bias b̂_v = b_v/‖w_v‖."""
    out = {}
    for t, (W, b) in probes.items():
        _, unit, neg_bias = paper_boundary_params(W, b)
        R = rng.standard_normal(unit.shape)
        out[t] = (R / np.linalg.norm(R, axis=1, keepdims=True), -neg_bias)
    return out


def mean_params(W: np.ndarray, mu: np.ndarray):
    Q = _orthonormal_rows(np.asarray(W, np.float64))
    return Q, Q.T, Q.T @ mu


def leace_params(X: np.ndarray, Z: np.ndarray, tol: float = 1e-8):
    """LEACE eraser for activations X (n, d) and labels Z (n, m) (one-hot or real), in float64."""
    X, Z = np.asarray(X, np.float64), np.asarray(Z, np.float64)
    mu = X.mean(0)
    Xc, Zc = X - mu, Z - Z.mean(0)
    sigma_xx = Xc.T @ Xc / len(X)
    sigma_xz = Xc.T @ Zc / len(X)
    evals, evecs = np.linalg.eigh(sigma_xx)
    keep = evals > tol * max(evals.max(), 1e-30)
    sqrt_sigma = (evecs[:, keep] * np.sqrt(evals[keep])) @ evecs[:, keep].T
    whiten = (evecs[:, keep] / np.sqrt(evals[keep])) @ evecs[:, keep].T
    Qp = _orthonormal_rows((whiten @ sigma_xz).T)  # basis of the column space of A Σ_xz
    U = sqrt_sigma @ Qp
    V = Qp.T @ whiten
    return U, V, V @ mu


def random_directions(rank: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """``rank`` orthonormal random directions as rows (rank, d), uniform on the sphere/Grassmannian."""
    g = rng.standard_normal((d, max(rank, 1)))
    q, _ = np.linalg.qr(g)
    return q[:, :rank].T


def build_edit(method: str, probes: dict[int, tuple[np.ndarray, np.ndarray]], where: np.ndarray, d: int,
               reference: dict[int, np.ndarray] | None = None, reference_labels: dict[int, np.ndarray] | None = None,
               rng: np.random.Generator | None = None, batch_size: int | None = None) -> AffineEdit:
    """The edit for ``method`` with one probe (W (k, d), b (k,)) per position.

    reference[t]: activations (n_ref, d) at position t (mean, erase, resample);
    reference_labels[t]: the feature's labels there (n_ref, m), for erase.
    For ``resample`` every example of the batch (``batch_size``) draws a random reference example.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    T = where.shape[1]
    params = {}
    resampled = {}
    for t, (W, b) in probes.items():
        if method == "boundary":
            params[t] = boundary_params(W, b)
        elif method == "mean":
            params[t] = mean_params(W, reference[t].mean(0))
        elif method == "erase":
            params[t] = leace_params(reference[t], reference_labels[t])
        else:
            Q = _orthonormal_rows(np.asarray(W, np.float64))
            params[t] = (Q, Q.T, np.zeros(Q.shape[1]))
            pick = rng.integers(0, len(reference[t]), size=batch_size)
            resampled[t] = reference[t][pick] @ Q  # (B, r): the other examples' coordinates
    U, V, s = _stack(params, T, d)
    if method == "resample":
        per_row = np.zeros((batch_size, T, U.shape[2]))
        for t, coords in resampled.items():
            per_row[:, t, : coords.shape[1]] = coords
        s = torch.tensor(per_row, dtype=torch.float32)
    return AffineEdit(U, V, s, torch.as_tensor(np.asarray(where, bool)))


def probe_rank(W: np.ndarray) -> int:
    """The number of independent directions a probe reads (the rank of its weight rows)."""
    return _orthonormal_rows(np.asarray(W, np.float64)).shape[1]


def random_probes(ranks: dict[int, int], d: int, rng: np.random.Generator,
                  reference: dict[int, np.ndarray] | None = None):
    """Probes along ``ranks[t]`` random orthonormal unit directions at each position t.

    Their offset puts the boundary through the reference mean (b = -R μ), so that a ``boundary`` control
    moves activations no further on average than a ``mean`` one would.
    """
    out = {}
    for t, rank in ranks.items():
        R = random_directions(rank, d, rng)
        mu = reference[t].mean(0) if reference is not None else np.zeros(d)
        out[t] = (R, -R @ mu)
    return out
