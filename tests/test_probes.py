"""Batched linear probes against scikit-learn (the oracle) and against planted ground truth."""

import warnings

import numpy as np
import pytest
import torch

from quietlab.monitor.probes import fit_features, fit_probes, split_probe_set, wilson_interval
from quietlab.runs import RunStore
from quietlab.tasks.base import Feature
from quietlab.train.threads import set_cpu_threads

sklearn = pytest.importorskip("sklearn")
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import LogisticRegression, Ridge  # noqa: E402
from sklearn.metrics import log_loss, r2_score  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

L2 = 1e-3
N, T, D = 500, 3, 10


pytestmark = pytest.mark.usefixtures("one_thread")


H = ["hook_embed", "blocks.0.hook_resid_post"]  # the layers of the synthetic activations


def correlated_acts(rng, layers=2, n=N, t=T, d=D):
    """Anisotropic, shifted activations, like a residual stream's (a few large, correlated directions)."""
    mix = rng.standard_normal((d, d)) * np.exp(-np.arange(d) / 3)[None]
    return {l: torch.tensor(rng.standard_normal((n, t, d)) @ mix.T * 4 + rng.standard_normal(d) * 3,
                            dtype=torch.float32) for l in H[:layers]}


def sk_logistic(Xtr, ytr, Xte, n_train):
    scaler = StandardScaler().fit(Xtr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression(C=1.0 / (L2 * n_train), max_iter=1000, tol=1e-6).fit(scaler.transform(Xtr), ytr)
    return model, scaler


def logits_of(result, layer, t, X):
    w, b = result.probe(layer, t)
    return np.einsum("...d,nd->...n", w.double().numpy(), X.astype(np.float64)) + b.double().numpy()[..., None]


@pytest.mark.parametrize("kind,k,n_classes", [("binary", 1, 2), ("multilabel", 3, 2), ("categorical", 2, 4)])
def test_classification_probes_match_sklearn(kind, k, n_classes):
    rng = np.random.default_rng(1)
    acts = correlated_acts(rng)
    X0 = acts[H[0]].numpy()
    planted = rng.standard_normal((T, D, k * n_classes)) / 2
    z = np.einsum("ntd,tdk->ntk", (X0 - X0.mean((0, 1))) / X0.std((0, 1)), planted)
    z = z + rng.standard_normal((N, T, k * n_classes))
    if kind == "categorical":
        values = z.reshape(N, T, k, n_classes).argmax(-1).astype(np.int16)
    else:
        values = (z[..., :k] > 0).astype(np.uint8)
    feature = Feature(values, np.ones((N, T), bool), kind, n_classes)
    tr, te = split_probe_set(N, 0.3, seed=0)
    res = fit_probes(acts, feature, tr, te, l2=L2, max_iter=300, tol=1e-4)
    assert res.pairs == [(l, t) for l in H for t in range(T)]  # in depth order
    for layer in H:
        X = acts[layer].numpy()
        for t in range(T):
            accs, losses = [], []
            ours = logits_of(res, layer, t, X[te, t])
            for j in range(k):
                model, scaler = sk_logistic(X[tr, t], values[tr, t, j], X[te, t], len(tr))
                Xs = scaler.transform(X[te, t])
                accs.append(model.score(Xs, values[te, t, j]))
                proba = model.predict_proba(Xs)
                losses.append(log_loss(values[te, t, j], proba, labels=model.classes_))
                # the probe itself, in activation space, agrees with sklearn's decision function
                if kind == "categorical":
                    mine = torch.log_softmax(torch.tensor(ours[j]).T, -1).exp().numpy()[:, model.classes_]
                    np.testing.assert_allclose(mine, proba, atol=0.03)
                else:
                    mine = 1 / (1 + np.exp(-ours[j]))
                    np.testing.assert_allclose(mine, proba[:, 1], atol=0.03)
            got = res.get(layer, t)
            assert abs(got["acc"] - np.mean(accs)) <= 0.02, (layer, t, got, accs)
            assert abs(got["logloss"] - np.mean(losses)) <= 0.01 * max(1.0, np.mean(losses)), (got, losses)
            assert got["n_test"] == len(te)
            assert got["acc_lo"] <= got["acc"] <= got["acc_hi"]
            np.testing.assert_allclose(res.per_output[res.index(layer, t)], accs, atol=0.02)


def test_classes_unseen_on_train_are_left_out_and_the_seen_ones_match_sklearn():
    # 7 classes, of which each (position, variable) sees its own 3 to 5: the solver fits the seen classes
    # only (padded to the most seen), scikit-learn, which knows only the classes in y, is the oracle (from
    # 3 classes on: with 2 it fits one binary model, whose penalty is not the softmax's)
    rng = np.random.default_rng(3)
    acts = correlated_acts(rng)
    X0 = acts[H[0]].numpy()
    Xs0 = (X0 - X0.mean((0, 1))) / X0.std((0, 1))
    k, n_classes = 2, 7
    values = np.zeros((N, T, k), np.int16)
    for t in range(T):
        for j in range(k):
            classes = np.sort(rng.choice(n_classes, size=3 + (t + 2 * j) % 3, replace=False))
            z = Xs0[:, t] @ rng.standard_normal((D, len(classes))) + rng.standard_normal((N, len(classes)))
            values[:, t, j] = classes[z.argmax(-1)]
    feature = Feature(values, np.ones((N, T), bool), "categorical", n_classes)
    tr, te = split_probe_set(N, 0.3, seed=0)
    res = fit_probes(acts, feature, tr, te, l2=L2, max_iter=300, tol=1e-4)
    for layer in H:
        X = acts[layer].numpy()
        for t in range(T):
            ours = logits_of(res, layer, t, X[te, t])  # (k, C, n)
            w, _ = res.probe(layer, t)
            for j in range(k):
                present = np.unique(values[tr, t, j])
                unseen = np.setdiff1d(np.arange(n_classes), present)
                assert torch.all(w[j, unseen] == 0)
                model, scaler = sk_logistic(X[tr, t], values[tr, t, j], X[te, t], len(tr))
                proba = model.predict_proba(scaler.transform(X[te, t]))
                mine = torch.log_softmax(torch.tensor(ours[j]).T, -1).exp().numpy()
                assert mine[:, unseen].max(initial=0) < 1e-4
                np.testing.assert_allclose(mine[:, model.classes_], proba, atol=0.03)


@pytest.mark.parametrize("kind,k,n_classes", [("binary", 1, 2), ("categorical", 2, 4)])
def test_a_warm_start_reaches_the_probes_of_a_cold_one(kind, k, n_classes):
    """Started from earlier probes (a perturbed copy, or ones blown up a hundredfold, as probes of
    separable data can be), the fit ends where the cold fit does, and from good probes sooner."""
    import dataclasses

    rng = np.random.default_rng(7)
    acts = correlated_acts(rng)
    X0 = acts[H[0]].numpy()
    z = np.einsum("ntd,dk->ntk", (X0 - X0.mean((0, 1))) / X0.std((0, 1)), rng.standard_normal((D, k * n_classes)))
    z = z + 0.5 * rng.standard_normal(z.shape)
    values = (z.reshape(N, T, k, n_classes).argmax(-1).astype(np.int16) if kind == "categorical"
              else (z > 0).astype(np.uint8))
    feature = Feature(values, np.ones((N, T), bool), kind, n_classes)
    tr, te = split_probe_set(N, 0.3, seed=0)
    kw = dict(l2=L2, max_iter=300, tol=1e-4)
    cold = fit_probes(acts, feature, tr, te, **kw)
    nearby = dataclasses.replace(cold, weight=cold.weight * 1.05, bias=cold.bias * 1.05)
    far = dataclasses.replace(cold, weight=cold.weight * 100, bias=cold.bias * 100)
    for start in (nearby, far):
        warm = fit_probes(acts, feature, tr, te, init={"x": start}, name="x", **kw)
        assert warm.pairs == cold.pairs
        np.testing.assert_allclose(warm.metrics["acc"], cold.metrics["acc"], atol=0.01)
        np.testing.assert_allclose(warm.metrics["logloss"], cold.metrics["logloss"], rtol=0.01, atol=1e-3)
    assert fit_probes(acts, feature, tr, te, init={"x": nearby}, name="x", **kw).n_iter < cold.n_iter


def test_ridge_probes_match_sklearn():
    rng = np.random.default_rng(2)
    acts = correlated_acts(rng)
    X = acts[H[1]].numpy()
    values = np.einsum("ntd,dk->ntk", X, rng.standard_normal((D, 2))) / 10 + rng.standard_normal((N, T, 2))
    values = values.astype(np.float32)
    feature = Feature(values, np.ones((N, T), bool), "scalar")
    tr, te = split_probe_set(N, 0.3, seed=1)
    res = fit_probes(acts, feature, tr, te, l2=L2)
    for t in range(T):
        scaler = StandardScaler().fit(X[tr, t])
        model = Ridge(alpha=L2 * len(tr)).fit(scaler.transform(X[tr, t]), values[tr, t])
        expected = model.predict(scaler.transform(X[te, t]))
        np.testing.assert_allclose(logits_of(res, H[1], t, X[te, t]).T, expected, rtol=1e-3, atol=1e-3)
        got = res.get(H[1], t)
        assert got["r2"] == pytest.approx(r2_score(values[te, t], expected), abs=1e-3)
        assert got["mse"] == pytest.approx(np.mean((values[te, t] - expected) ** 2), rel=1e-3)
        assert got["r2_lo"] < got["r2"] < got["r2_hi"]


def test_planted_direction_is_recovered_and_random_labels_read_chance():
    rng = np.random.default_rng(3)
    n, d = 2000, 32
    acts = {H[0]: torch.tensor(rng.standard_normal((n, 2, d)), dtype=torch.float32),
            H[1]: torch.tensor(rng.standard_normal((n, 2, d)) * 5 + 7, dtype=torch.float32)}
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    values = np.zeros((n, 2, 1), np.uint8)
    values[:, 0, 0] = acts[H[1]][:, 0].numpy() @ u > 7 * u.sum()  # planted at layer 1, position 0
    values[:, 1, 0] = rng.integers(0, 2, n)  # position 1: labels unrelated to anything
    tr, te = split_probe_set(n, 0.25, seed=0)
    res = fit_probes(acts, Feature(values, np.ones((n, 2), bool), "binary"), tr, te)
    planted = res.get(H[1], 0)
    assert planted["acc"] > 0.95 and planted["acc_lo"] > 0.9
    w, _ = res.probe(H[1], 0)
    assert abs(float(w[0].double().numpy() @ u) / float(w[0].norm())) > 0.95  # it found the planted direction
    for layer, t in [(H[0], 0), (H[0], 1), (H[1], 1)]:  # no signal there: chance, and the interval says so
        got = res.get(layer, t)
        assert abs(got["acc"] - 0.5) < 0.07, (layer, t, got)
        assert got["acc_lo"] < 0.5 + 0.02 and got["acc_hi"] > 0.5 - 0.02


def test_undefined_and_constant_pairs_are_skipped_and_features_fit_together_as_alone():
    rng = np.random.default_rng(4)
    acts = correlated_acts(rng, t=4)
    mask = np.zeros((N, 4), bool)
    mask[:, 1:] = True  # position 0: undefined
    mask[: N // 2, 3] = False  # position 3: defined on half the examples
    X = acts[H[0]].numpy()
    a = np.zeros((N, 4, 1), np.uint8)
    a[:, 1:3, 0] = X[:, 1:3, 0] > X[:, 1:3, 0].mean()
    a[:, 3, 0] = X[:, 3, 1] > np.median(X[:, 3, 1])
    b = a.copy()
    b[:, 2] = 1  # b is constant at position 2
    feats = {"a": Feature(a, mask, "binary"), "b": Feature(b, mask, "binary")}
    tr, te = split_probe_set(N, 0.3, seed=0)
    both = fit_features(acts, feats, tr, te)
    assert sorted({t for _, t in both["a"].pairs}) == [1, 2, 3]
    assert sorted({t for _, t in both["b"].pairs}) == [1, 3]
    assert {(t, why) for _, t, why in both["b"].skipped} == {(2, "constant")}
    assert both["a"].get(H[0], 3)["n_test"] == mask[te, 3].sum()
    alone = fit_probes(acts, feats["b"], tr, te)
    np.testing.assert_allclose(alone.metrics["acc"], both["b"].metrics["acc"], atol=1e-3)
    np.testing.assert_allclose(alone.weight.numpy(), both["b"].weight.numpy(), rtol=1e-2, atol=1e-3)
    # the half-defined position was fitted and scored on its defined examples only
    tr_def = tr[mask[tr, 3]]
    model, scaler = sk_logistic(X[tr_def, 3], a[tr_def, 3, 0], None, len(tr_def))
    te_def = te[mask[te, 3]]
    expected = model.score(scaler.transform(X[te_def, 3]), a[te_def, 3, 0])
    assert both["a"].get(H[0], 3)["acc"] == pytest.approx(expected, abs=0.02)


def test_wilson_interval_matches_the_textbook_value():
    lo, hi = wilson_interval(np.array([0.8]), np.array([100]))
    assert lo[0] == pytest.approx(0.7112, abs=1e-4) and hi[0] == pytest.approx(0.8666, abs=1e-4)


def test_rows_go_into_the_store(tmp_path):
    rng = np.random.default_rng(5)
    acts = correlated_acts(rng)
    values = (acts[H[0]].numpy()[..., :1] > 0).astype(np.uint8)
    res = fit_probes(acts, Feature(values, np.ones((N, T), bool), "binary"), *split_probe_set(N), name="sign")
    with RunStore(tmp_path / "m.sqlite") as store:
        store.log_probes(res.rows(7))
        rows = store.probes("sign", "acc")
    assert len(rows) == 2 * T and {r[0] for r in rows} == {7}
    assert {(r[2], r[3]) for r in rows} == set(res.pairs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_gpu_gives_the_cpu_probes():
    rng = np.random.default_rng(6)
    acts = correlated_acts(rng)
    values = (acts[H[1]].numpy()[..., :1] > 0).astype(np.uint8)
    f = Feature(values, np.ones((N, T), bool), "binary")
    tr, te = split_probe_set(N)
    cpu = fit_probes(acts, f, tr, te)
    gpu = fit_probes({l: a.cuda() for l, a in acts.items()}, f, tr, te)
    np.testing.assert_allclose(cpu.metrics["acc"], gpu.metrics["acc"], atol=0.01)


def probabilities(result, layer, t, X):
    """Each output's probability (sigmoid) or each class's (softmax) at the rows of X, from the stored probe."""
    z = torch.tensor(logits_of(result, layer, t, X))
    return torch.softmax(z, dim=-2).numpy() if result.kind == "categorical" else torch.sigmoid(z).numpy()


def test_batched_and_unbatched_fits_agree():
    """Every feature, layer and position in one batch (features of a solver family sharing a problem where
    their masks agree, pairs with fewer defined examples padded) gives the probes that each (feature,
    layer, position) gets when fitted alone: probabilities within 2e-3, the same test accuracy."""
    rng = np.random.default_rng(8)
    acts = correlated_acts(rng, t=4)
    X0 = acts[H[0]].numpy()
    z = np.einsum("ntd,dk->ntk", (X0 - X0.mean((0, 1))) / X0.std((0, 1)), rng.standard_normal((D, 6)))
    z = z + 1.5 * rng.standard_normal(z.shape)  # noisy labels: no probe separates them, every fit converges
    mask = np.ones((N, 4), bool)
    mask[: N // 3, 2] = False  # position 2 defined on two thirds of the examples, position 3 on half
    mask[N // 2 :, 3] = False
    feats = {"a": Feature((z[..., :1] > 0).astype(np.uint8), mask, "binary"),
             "b": Feature((z[..., 1:3] > 0).astype(np.uint8), mask, "multilabel"),
             "c": Feature(z[..., 3:6].argmax(-1)[..., None].astype(np.int16), mask, "categorical", 3)}
    tr, te = split_probe_set(N, 0.3, seed=0)
    kw = dict(l2=L2, tol=1e-6, max_iter=500)
    together = fit_features(acts, feats, tr, te, **kw)
    for name, f in feats.items():
        assert together[name].pairs == [(l, t) for l in H for t in range(4)]
        for layer, t in together[name].pairs:
            alone = fit_probes(acts, f, tr, te, layers=[layer], positions=[t], **kw)
            rows = te[mask[te, t]]
            X = acts[layer][rows, t].numpy()
            np.testing.assert_allclose(probabilities(together[name], layer, t, X), probabilities(alone, layer, t, X),
                                       atol=2e-3)
            # the same test accuracy: within a fraction of one example (float32 sums)
            assert together[name].get(layer, t)["acc"] == pytest.approx(alone.get(layer, t)["acc"], abs=0.1 / len(rows))


@pytest.mark.parametrize("kind,k,n_classes", [("binary", 3, 2), ("categorical", 2, 4)])
def test_the_solver_takes_the_same_steps_with_and_without_compacting(kind, k, n_classes):
    """Dropping finished pairs from the batch (as on a CPU) or keeping the batch whole (as on a GPU) gives
    the same probes; here on pairs that converge at very different speeds (easy and hard labels)."""
    from quietlab.monitor.lbfgs import fit_logistic

    rng = np.random.default_rng(9)
    P, n, d = 6, 300, 8
    X = torch.tensor(rng.standard_normal((P, n, d)), dtype=torch.float32)
    noise = np.array([0.1, 0.1, 0.5, 1.0, 3.0, 10.0])[:, None, None]  # from nearly separable to noise
    z = np.einsum("pnd,dk->pnk", X.numpy(), rng.standard_normal((d, k * n_classes))) + \
        noise * rng.standard_normal((P, n, k * n_classes))
    y = (z.reshape(P, n, k, n_classes).argmax(-1) if kind == "categorical" else z[..., :k] > 0).astype(np.int64)
    X1 = torch.cat([X, torch.ones(P, n, 1)], 2)
    w = torch.full((P, n), 1.0 / n)
    gram = X.transpose(1, 2) @ X / n
    fits = [fit_logistic(X1.clone(), w, torch.tensor(y), kind, n_classes, gram, L2, 300, 1e-5, compact=compact)
            for compact in (True, False)]
    np.testing.assert_allclose(fits[0][0].numpy(), fits[1][0].numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(fits[0][1].numpy(), fits[1][1].numpy(), rtol=1e-3, atol=1e-4)


def test_one_batch_per_solver_family_gives_the_probes_of_one_batch_per_problem(monkeypatch):
    """On a GPU the problems of a solver family (features whose masks agree at a position) are one batch,
    their outputs side by side; on a CPU each problem is its own. Both give the same probes; here with
    masks that agree at some positions and not at others, as BFS's queue and adjacency do."""
    import quietlab.monitor.probes as probes

    rng = np.random.default_rng(10)
    acts = correlated_acts(rng, t=4)
    X0 = acts[H[1]].numpy()
    z = np.einsum("ntd,dk->ntk", (X0 - X0.mean((0, 1))) / X0.std((0, 1)), rng.standard_normal((D, 9)))
    z = z + 1.5 * rng.standard_normal(z.shape)
    everywhere, later = np.ones((N, 4), bool), np.ones((N, 4), bool)
    later[: N // 2, 1:3] = False  # agrees with everywhere at positions 0 and 3 only
    later[:, 0] = False
    feats = {"a": Feature((z[..., :2] > 0).astype(np.uint8), everywhere, "multilabel"),
             "b": Feature((z[..., 2:3] > 0).astype(np.uint8), later, "binary"),
             "c": Feature(z[..., 3:6].argmax(-1)[..., None].astype(np.int16), everywhere, "categorical", 3),
             "d": Feature(z[..., 6:9].argmax(-1)[..., None].astype(np.int16), later, "categorical", 3)}
    tr, te = split_probe_set(N, 0.3, seed=0)
    kw = dict(l2=L2, tol=1e-6, max_iter=500)
    apart = fit_features(acts, feats, tr, te, **kw)
    monkeypatch.setattr(probes, "one_batch_per_family", lambda device: True)
    together = fit_features(acts, feats, tr, te, **kw)
    for name in feats:
        assert together[name].pairs == apart[name].pairs
        assert together[name].skipped == apart[name].skipped
        for layer, t in apart[name].pairs:
            X = acts[layer][te[feats[name].mask[te, t]], t].numpy()
            np.testing.assert_allclose(probabilities(together[name], layer, t, X), probabilities(apart[name], layer, t, X),
                                       atol=2e-3)


def test_chunks_fitted_side_by_side_give_the_probes_of_one_after_another(monkeypatch):
    """On a CPU with two threads the chunks of pairs are fitted side by side, one thread each: the probes and
    metrics equal, bit for bit, those of the same chunks fitted one after another on one thread, on every
    call; the thread count is restored afterwards. The chunks of every solver family share one queue, the
    dearest (softmax) first."""
    import threading

    import quietlab.monitor.probes as probes

    rng = np.random.default_rng(11)
    acts = correlated_acts(rng, t=4)
    X0 = acts[H[1]].numpy()
    z = np.einsum("ntd,dk->ntk", (X0 - X0.mean((0, 1))) / X0.std((0, 1)), rng.standard_normal((D, 5)))
    z = z + 1.5 * rng.standard_normal(z.shape)
    mask = np.ones((N, 4), bool)
    feats = {"a": Feature((z[..., :2] > 0).astype(np.uint8), mask, "multilabel"),
             "c": Feature(z[..., 2:5].argmax(-1)[..., None].astype(np.int16), mask, "categorical", 3)}
    tr, te = split_probe_set(N, 0.3, seed=0)
    kw = dict(l2=L2, max_chunk_bytes=60_000)  # one pair a chunk: eight chunks a solver family
    fitted_on = []
    fit_chunk = probes._fit_chunk
    families = []
    monkeypatch.setattr(probes, "_fit_chunk", lambda *a, **k: fitted_on.append(threading.get_ident())
                        or families.append(a[6]) or fit_chunk(*a, **k))
    set_cpu_threads(1)
    alone = fit_features(acts, feats, tr, te, **kw)
    assert len(fitted_on) == 16 and len(set(fitted_on)) == 1
    assert families == ["softmax"] * 8 + ["sigmoid"] * 8
    set_cpu_threads(2)
    for _ in range(2):
        fitted_on.clear()
        side_by_side = fit_features(acts, feats, tr, te, **kw)
        assert len(fitted_on) == 16 and len(set(fitted_on)) == 2 and threading.get_ident() not in fitted_on
        assert torch.get_num_threads() == 2
        for name in feats:
            assert side_by_side[name].pairs == alone[name].pairs
            assert torch.equal(side_by_side[name].weight, alone[name].weight)
            assert torch.equal(side_by_side[name].bias, alone[name].bias)
            for m, v in alone[name].metrics.items():
                np.testing.assert_array_equal(side_by_side[name].metrics[m], v)
