"""The intervention maps against their defining properties, in float64."""

import numpy as np
import torch

from quietlab.interventions.edits import build_edit, leace_params, probe_rank, random_directions, random_probes

rng = np.random.default_rng(0)
D, T, B = 16, 5, 64


def apply(edit, X):
    """X: (B, T, D) numpy -> edited numpy, all positions at once."""
    return edit(torch.tensor(X, dtype=torch.float32), torch.arange(X.shape[1])).double().numpy()


def test_boundary_single_probe_is_the_papers_formula():
    w, b = rng.standard_normal((1, D)), rng.standard_normal(1)
    X = rng.standard_normal((B, T, D))
    where = np.zeros((B, T), bool)
    where[:, 2] = True
    out = apply(build_edit("boundary", {2: (w, b)}, where, D), X)
    unit, ub = w[0] / np.linalg.norm(w), b[0] / np.linalg.norm(w)
    expected = X[:, 2] - np.outer(X[:, 2] @ unit + ub, unit)
    np.testing.assert_allclose(out[:, 2], expected, atol=1e-4)
    np.testing.assert_allclose(out[:, [0, 1, 3, 4]], X[:, [0, 1, 3, 4]], atol=1e-6)  # elsewhere untouched
    np.testing.assert_allclose(out[:, 2] @ w[0] + b[0], 0, atol=1e-4)  # the probe reads its boundary


def test_boundary_multi_output_puts_every_output_on_its_boundary_with_least_change():
    W, b = rng.standard_normal((3, D)), rng.standard_normal(3)
    X = rng.standard_normal((B, 1, D))
    out = apply(build_edit("boundary", {0: (W, b)}, np.ones((B, 1), bool), D), X)[:, 0]
    np.testing.assert_allclose(out @ W.T + b, 0, atol=1e-4)
    # least norm: the change lies in the row space of W
    change = out - X[:, 0]
    Q, _ = np.linalg.qr(W.T)
    np.testing.assert_allclose(change - change @ Q @ Q.T, 0, atol=1e-4)


def test_mean_replaces_the_probe_component_by_the_reference_mean():
    W = rng.standard_normal((2, D))
    ref = rng.standard_normal((500, D)) + 3.0
    X = rng.standard_normal((B, 1, D))
    out = apply(build_edit("mean", {0: (W, np.zeros(2))}, np.ones((B, 1), bool), D, reference={0: ref}), X)[:, 0]
    np.testing.assert_allclose(out @ W.T, np.broadcast_to(ref.mean(0) @ W.T, (B, 2)), atol=1e-3)
    Q, _ = np.linalg.qr(W.T)
    np.testing.assert_allclose((out - X[:, 0]) @ (np.eye(D) - Q @ Q.T), 0, atol=1e-4)


def test_leace_leaves_no_linear_covariance_with_the_labels():
    n = 4000
    labels = rng.integers(0, 3, n)
    Z = np.eye(3)[labels]
    X = rng.standard_normal((n, D)) @ rng.standard_normal((D, D)) + Z @ rng.standard_normal((3, D)) * 2
    U, V, s = leace_params(X, Z)
    erased = X - (X @ V.T - s) @ U.T
    cross = (erased - erased.mean(0)).T @ (Z - Z.mean(0)) / n
    np.testing.assert_allclose(cross, 0, atol=1e-8)
    assert np.linalg.norm(cross_before := (X - X.mean(0)).T @ (Z - Z.mean(0)) / n) > 0.1, cross_before
    # a logistic probe on the erased data is no better than the majority class
    from sklearn.linear_model import LogisticRegression

    acc = LogisticRegression(max_iter=2000).fit(erased[:3000], labels[:3000]).score(erased[3000:], labels[3000:])
    assert acc < np.bincount(labels).max() / n + 0.05


def test_resample_takes_the_component_from_reference_examples():
    W = rng.standard_normal((1, D))
    ref = rng.standard_normal((8, D))
    X = rng.standard_normal((B, 1, D))
    edit = build_edit("resample", {0: (W, np.zeros(1))}, np.ones((B, 1), bool), D, reference={0: ref},
                      rng=np.random.default_rng(1), batch_size=B)
    out = apply(edit, X)[:, 0]
    w = W[0] / np.linalg.norm(W)
    got = out @ w
    assert all(np.isclose(g, ref @ w, atol=1e-4).any() for g in got)  # each value is some reference's
    np.testing.assert_allclose(out - np.outer(got, w), X[:, 0] - np.outer(X[:, 0] @ w, w), atol=1e-4)


def test_random_controls_have_the_same_rank_and_unit_directions():
    W = rng.standard_normal((3, D))
    assert probe_rank(W) == 3 and probe_rank(np.outer([1.0, 2.0], W[0])) == 1
    probes = random_probes({4: probe_rank(W)}, D, np.random.default_rng(2))
    R, _ = probes[4]
    assert R.shape == (3, D)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-10)
    u = random_directions(1, D, np.random.default_rng(3))
    np.testing.assert_allclose(np.linalg.norm(u), 1.0)
