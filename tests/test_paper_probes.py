"""The quiet-feature study's probe protocol (PAPER_PROTOCOL §4) against scikit-learn, the study's own
probes: LogisticRegression(C=100) on raw activations, MultiOutputClassifier with constant columns dropped,
LinearRegression for scalar labels, the layer chosen per position by probe-train log-loss; and the
protocol run end to end on a checkpointed run of the paper preset."""

import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from quietlab.cli import app
from quietlab.monitor.features import classify_run
from quietlab.monitor.paper_probes import (PAPER_FIT, baseline_model, chosen_layers, classify_paper, paper_probe_set,
                                           paper_score)
from quietlab.monitor.probes import fit_features, split_probe_set
from quietlab.runs import RunFolder
from quietlab.tasks.base import Feature
from quietlab.train import train
from quietlab.train.checkpoint import load_run
from quietlab.train.threads import set_cpu_threads
from run_fixtures import tiny_config

pytest.importorskip("sklearn")
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.linear_model import LinearRegression, LogisticRegression  # noqa: E402
from sklearn.metrics import log_loss  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

N, T, D = 400, 3, 8
LAYERS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def raw_acts(rng):
    """Anisotropic, shifted activations (a residual stream's scale, never standardised)."""
    mix = rng.standard_normal((D, D)) * np.exp(-np.arange(D) / 3)[None]
    return {l: torch.tensor(rng.standard_normal((N, T, D)) @ mix.T * 3 + rng.standard_normal(D) * 2,
                            dtype=torch.float32) for l in LAYERS}


def noisy_labels(rng, acts, k, n_classes=2):
    """Labels a linear function of layer 0 plus noise (so C = 100 has a finite, well-defined optimum)."""
    X = acts[LAYERS[0]].numpy()
    columns = k * n_classes if n_classes > 2 else k
    z = np.einsum("ntd,dk->ntk", (X - X.mean((0, 1))) / X.std((0, 1)), rng.standard_normal((D, columns)))
    z += 1.5 * rng.standard_normal(z.shape)
    if n_classes > 2:
        return z.reshape(N, T, k, n_classes).argmax(-1).astype(np.int16)
    return (z > 0).astype(np.uint8)


def sk_fit(model, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(X.astype(np.float64), y)


def ours(result, layer, t, X):
    w, b = result.probe(layer, t)
    return np.einsum("...d,nd->...n", w.double().numpy(), X.astype(np.float64)) + b.double().numpy()[..., None]


@pytest.mark.parametrize("kind, n_classes", [("binary", 2), ("categorical", 4)])
def test_logistic_probes_are_sklearns_C100_on_raw_activations(kind, n_classes):
    rng = np.random.default_rng(3)
    acts = raw_acts(rng)
    feature = Feature(noisy_labels(rng, acts, 1, n_classes), np.ones((N, T), bool), kind, n_classes)
    tr, te = split_probe_set(N, 0.25, seed=1)
    res = fit_features(acts, {"f": feature}, tr, te, **PAPER_FIT)["f"]
    for layer in LAYERS:
        X = acts[layer].numpy()
        for t in range(T):
            y = feature.values[:, t, 0]
            sk = sk_fit(LogisticRegression(C=100, max_iter=1000, tol=1e-8), X[tr, t], y[tr])
            logits = ours(res, layer, t, X[:, t])[0]
            if kind == "categorical":
                mine = torch.softmax(torch.tensor(logits).T, -1).numpy()[:, sk.classes_]
            else:
                mine = 1 / (1 + np.exp(-logits))
                mine = np.stack([1 - mine, mine], 1)
            want = sk.predict_proba(X[:, t].astype(np.float64))
            np.testing.assert_allclose(mine, want, atol=0.01)
            got = res.get(layer, t)
            assert got["logloss"] == pytest.approx(log_loss(y[te], want[te], labels=sk.classes_), abs=3e-3)
            assert got["train_logloss"] == pytest.approx(log_loss(y[tr], want[tr], labels=sk.classes_), abs=3e-3)
            assert got["acc"] == pytest.approx(np.mean(sk.classes_[want[te].argmax(1)] == y[te]), abs=0.01)


def test_multilabel_probes_drop_columns_constant_on_probe_train():
    """MultiOutputClassifier of LogisticRegression(C=100): a column constant on probe-train has no probe
    and is left out of the mean accuracy and log-loss."""
    rng = np.random.default_rng(4)
    acts = raw_acts(rng)
    values = noisy_labels(rng, acts, 3)
    values[:, 1, 2] = 1  # column 2 constant at position 1
    tr, te = split_probe_set(N, 0.25, seed=2)
    feature = Feature(values, np.ones((N, T), bool), "multilabel")
    res = fit_features(acts, {"q": feature}, tr, te, **PAPER_FIT)["q"]
    X = acts[LAYERS[1]].numpy()[:, 1]
    accs, losses, train_losses = [], [], []
    for j in (0, 1):
        y = values[:, 1, j]
        sk = sk_fit(LogisticRegression(C=100, max_iter=1000, tol=1e-8), X[tr], y[tr])
        p = sk.predict_proba(X.astype(np.float64))
        accs.append(np.mean(sk.predict(X[te].astype(np.float64)) == y[te]))
        losses.append(log_loss(y[te], p[te]))
        train_losses.append(log_loss(y[tr], p[tr]))
    got = res.get(LAYERS[1], 1)
    assert got["acc"] == pytest.approx(np.mean(accs), abs=0.01)
    assert got["logloss"] == pytest.approx(np.mean(losses), abs=3e-3)
    assert got["train_logloss"] == pytest.approx(np.mean(train_losses), abs=3e-3)
    i = res.index(LAYERS[1], 1)
    assert np.isnan(res.per_output[i, 2]) and not np.isnan(res.per_output[i, :2]).any()
    assert float(res.weight[i, 2].abs().max()) == 0.0


@pytest.mark.parametrize("rank", [D, 5])
def test_scalar_probes_are_linear_regression(rank):
    """Unpenalised least squares, also where the activations span fewer than d directions (scikit-learn's
    LinearRegression: the predictions are unique even when the weights are not)."""
    rng = np.random.default_rng(5)
    basis = rng.standard_normal((rank, D)) * 3
    acts = {l: torch.tensor(rng.standard_normal((N, T, rank)) @ basis + 4, dtype=torch.float32) for l in LAYERS}
    X0 = acts[LAYERS[0]].numpy()
    y = X0 @ rng.standard_normal(D) / 4 + rng.standard_normal((N, T))
    feature = Feature(y[..., None].astype(np.float32), np.ones((N, T), bool), "scalar")
    tr, te = split_probe_set(N, 0.25, seed=3)
    res = fit_features(acts, {"s": feature}, tr, te, **PAPER_FIT)["s"]
    for layer in LAYERS:
        X = acts[layer].numpy()
        for t in range(T):
            sk = LinearRegression().fit(X[tr, t].astype(np.float64), y[tr, t])
            want = sk.predict(X[:, t].astype(np.float64))
            np.testing.assert_allclose(ours(res, layer, t, X[:, t])[0], want, atol=2e-3 * np.abs(want).max())
            got = res.get(layer, t)
            assert got["mse"] == pytest.approx(np.mean((want[te] - y[te, t]) ** 2), rel=1e-3)
            assert got["train_mse"] == pytest.approx(np.mean((want[tr] - y[tr, t]) ** 2), rel=1e-3)


def test_each_position_takes_the_layer_with_the_lowest_probe_train_log_loss():
    rng = np.random.default_rng(6)
    acts = raw_acts(rng)
    acts[LAYERS[1]][:, 2] = acts[LAYERS[0]][:, 2] * 0.1 + torch.randn(N, D)  # position 2: block 1 hides it
    feature = Feature(noisy_labels(rng, acts, 1), np.ones((N, T), bool), "binary")
    tr, te = split_probe_set(N, 0.25, seed=4)
    res = fit_features(acts, {"f": feature}, tr, te, **PAPER_FIT)["f"]
    want = {}
    for t in range(T):
        losses = []
        for layer in LAYERS:
            X = acts[layer].numpy()[:, t].astype(np.float64)
            sk = sk_fit(LogisticRegression(C=100, max_iter=1000, tol=1e-8), X[tr], feature.values[tr, t, 0])
            losses.append(log_loss(feature.values[tr, t, 0], sk.predict_proba(X[tr])))
        want[t] = LAYERS[int(np.argmin(losses))]
    assert {t: layer for t, (layer, _) in chosen_layers(res).items()} == want
    assert want[2] == LAYERS[0]
    # the stored rows of a probe step (what `quietlab probe` classifies from) give the same choice
    score = paper_score(res)
    assert score["layers"] == [want[t] for t in range(T)] and score["positions"] == list(range(T))
    test_losses = [res.get(want[t], t)["logloss"] for t in range(T)]
    assert score["loss"] == pytest.approx(np.exp(np.mean(np.log(test_losses))))


def test_classify_paper_places_the_first_persistent_drop_below_the_baseline():
    transition = {"onset": 1000.0, "end": 2000.0, "width": 0.0}
    baseline = {"metric": "logloss", "loss": 0.5, "score": 0.7}

    def scores(losses):
        return {s: {"loss": v, "score": 0.0, "positions": [], "layers": []} for s, v in zip((0, 10, 100, 500, 1500, 3000), losses)}

    assert classify_paper(scores([0.7, 0.6, 0.4, 0.3, 0.1, 0.0]), baseline, transition)["class"] == "quiet"
    out = classify_paper(scores([0.7, 0.4, 0.6, 0.6, 0.1, 0.0]), baseline, transition)  # one lucky step: not yet
    assert out["class"] == "loud" and out["decodable_step"] == 1500 and out["loss_before_transition"] == 0.6
    assert classify_paper(scores([0.7] * 6), baseline, transition)["class"] == "absent"


def test_the_baseline_is_a_separately_seeded_random_model():
    cfg = tiny_config(preset="paper", n_heads=4)
    model_cfg = cfg.model_config(cfg.build_task())
    a, b = baseline_model(model_cfg, 0), baseline_model(model_cfg, 0)
    torch.manual_seed(0)
    from quietlab.models.transformer import Transformer

    run_init = Transformer(model_cfg)
    assert torch.equal(a.embed.weight, b.embed.weight) and not torch.equal(a.embed.weight, run_init.embed.weight)
    assert not torch.equal(a.embed.weight, baseline_model(model_cfg, 1).embed.weight)


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    set_cpu_threads(1)
    run = tmp_path_factory.mktemp("paper") / "run"
    train(tiny_config(preset="paper", n_heads=4), run, progress=False)
    return run


def test_probe_runs_the_paper_protocol_on_a_paper_run(paper_run):
    from quietlab.monitor.monitor import probe_run

    out = probe_run(paper_run, features=["carry"], paper_split=(300, 100))
    assert out["preset"] == "paper" and set(out["paper_features"]) == {"carry"}
    with RunFolder(paper_run).store() as store:
        baseline = store.get("paper_baseline", "carry")
        rows = store.probes("carry", fit="checkpoint")
        assert {r[2] for r in rows} == {"blocks.0.hook_resid_post", "blocks.1.hook_resid_post"}  # no embeddings
        assert "train_logloss" in {r[4] for r in rows}
        assert store.get("feature_class_paper", "carry")["baseline_loss"] == baseline["loss"]
        again = classify_run(store, features=["carry"], write=False)
    # the baseline is the separately initialised model's probes on the same probe set, min over layers
    model, task, cfg, _ = load_run(paper_run, step=0)
    batch, tr, te = paper_probe_set(task, cfg.seed, 300, 100)
    assert baseline["positions"] == sorted({int(t) for t in np.flatnonzero(batch.features["carry"].mask.any(0))})
    assert again["paper_features"]["carry"]["class"] == out["paper_features"]["carry"]["class"]


@pytest.mark.parametrize("args, match", [(["--preset", "quietlab"], "does not match the run's preset paper"),
                                         (["--examples", "100"], "drop --examples"),
                                         (["--preset", "nonesuch"], "--preset must be one of")])
def test_probe_refuses_another_protocol_in_one_line(paper_run, args, match):
    res = CliRunner().invoke(app, ["probe", str(paper_run), "--device", "cpu", *args])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1 and match in res.stderr, res.stderr
