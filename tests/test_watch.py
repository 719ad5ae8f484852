"""quietlab.watch on models quietlab did not build: taps against the modules' own outputs, probes against
scikit-learn on the same activations, the store and report, and the one-line errors before training."""

import json
import sqlite3

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import quietlab
from quietlab.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")

N, SEQ, D = 200, 6, 16


class Tiny(nn.Module):
    """Embedding → GRU (returns a tuple) → linear head; ``pool`` gives a (batch, d) output."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(4, D)
        self.gru = nn.GRU(D, D, batch_first=True)
        self.head = nn.Linear(D, 4)
        self.pool = nn.Identity()

    def forward(self, tokens, scale: float = 1.0):
        x, _ = self.gru(self.embed(tokens) * scale)
        self.pool(x.mean(1))
        return self.head(x)


def data(seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 4, size=(N, SEQ))
    mask = np.ones((N, SEQ), bool)
    features = {
        "is_three": quietlab.Feature((tokens == 3)[..., None].astype(np.uint8), mask, "binary"),  # read off the embedding
        "token": quietlab.Feature(tokens[..., None], mask, "categorical", n_classes=4),
        "noise": quietlab.Feature(rng.integers(0, 2, size=(N, SEQ, 1)).astype(np.uint8), mask, "binary"),
    }
    return torch.as_tensor(tokens), features


def train_watched(out, steps=12, **options):
    torch.manual_seed(0)
    model = Tiny()
    tokens, features = data()
    w = quietlab.watch(model, out, taps=["embed", "gru"], inputs=tokens, features=features, steps=steps,
                       max_overhead=None, **options)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for step in range(1, steps + 1):
        x = torch.randint(0, 4, (32, SEQ), generator=torch.Generator().manual_seed(step))
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        w.step(step, loss=loss.item())
        losses.append(loss.item())
    w.close()
    return model, w, losses


def test_taps_are_the_modules_outputs_and_the_first_element_of_a_tuple():
    from quietlab.monitor.taps import ModuleTaps

    torch.manual_seed(0)
    model = Tiny()
    tokens, _ = data()
    acts = ModuleTaps(model, ["embed", "gru"], tokens, batch_size=64).capture(model)
    with torch.no_grad():
        emb = model.embed(tokens)
        out, _ = model.gru(emb)
    assert torch.allclose(acts["embed"], emb) and torch.allclose(acts["gru"], out, atol=1e-6)
    # a dict of keyword arguments reaches the model as keywords, tensors sliced by rows
    scaled = ModuleTaps(model, ["embed", "gru"], {"tokens": tokens, "scale": 2.0}, batch_size=64).capture(model)
    with torch.no_grad():
        ref, _ = model.gru(model.embed(tokens) * 2.0)
    assert torch.allclose(scaled["gru"], ref, atol=1e-6)
    assert model.training  # left in train mode


def test_watch_writes_a_run_quietlab_reads(tmp_path):
    out = tmp_path / "mine"
    model, w, losses = train_watched(out)
    config = json.loads((out / "config.json").read_text())
    assert config["watch"]["taps"] == ["embed", "gru"] and config["watch"]["features"]["token"] == "categorical"
    db = sqlite3.connect(out / "metrics.sqlite")
    stored = [v for (v,) in db.execute("SELECT value FROM metrics WHERE name='train/loss' ORDER BY step")]
    assert np.allclose(stored, losses)
    steps = [s for (s,) in db.execute("SELECT DISTINCT step FROM probes ORDER BY step")]
    assert steps[0] == 0 and steps[-1] == 12 and len(steps) >= 5  # baseline, log schedule, last step
    layers = {l for (l,) in db.execute("SELECT DISTINCT layer FROM probes")}
    assert layers == {"embed", "gru"}
    classes = {k for (k,) in db.execute("SELECT key FROM results WHERE kind='feature_class'")}
    assert classes == {"is_three", "token", "noise"}
    res = CliRunner().invoke(app, ["report", str(out)])
    assert res.exit_code == 0, res.output
    html = (out / "report.html").read_text()
    assert "`Tiny` watched by `quietlab.watch` at `embed`, `gru`" in html or "Tiny</code> watched by" in html


def test_probe_scores_match_scikit_learn_on_the_same_activations(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from quietlab.monitor.probes import split_probe_set

    out = tmp_path / "mine"
    model, w, _ = train_watched(out, steps=3)
    tokens, features = data()
    with torch.no_grad():
        acts, _ = model.gru(model.embed(tokens))
    train_idx, test_idx = split_probe_set(N, 0.2, seed=0)
    db = sqlite3.connect(out / "metrics.sqlite")
    C = 1 / (1e-3 * len(train_idx))  # the probes' default l2 = 1e-3 on standardised activations
    for name in ("is_three", "token"):
        y = features[name].values[..., 0]
        for pos in (1, 4):
            X = acts[:, pos].numpy().astype(np.float64)
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))
            clf.fit(X[train_idx], y[train_idx, pos])
            ref = clf.score(X[test_idx], y[test_idx, pos])
            (got,) = db.execute("SELECT value FROM probes WHERE step=3 AND feature=? AND layer='gru' AND "
                                "position=? AND metric='acc'", (name, pos)).fetchone()
            assert abs(got - ref) <= 0.05, (name, pos, got, ref)


@pytest.mark.parametrize("change, message", [
    (dict(taps=["embed", "grux"]), "tap 'grux' is not a module of Tiny; did you mean 'gru'"),
    (dict(taps=["pool"]), "tap 'pool' gives activations of shape (4, 16)"),
    (dict(inputs=torch.zeros(N, SEQ)), "inputs must be a LongTensor (n, seq)"),
    (dict(inputs=torch.zeros(N, SEQ + 1, dtype=torch.long)), "has 6 positions but tap 'embed' gives 7"),
    (dict(inputs=torch.zeros(N - 1, SEQ, dtype=torch.long)), "labels 200 examples but the inputs have 199"),
    (dict(inputs=torch.full((N, SEQ), 9)), "the model failed on the probe inputs"),
    (dict(features={"x": quietlab.Feature(np.full((N, SEQ, 1), 2), np.ones((N, SEQ), bool), "binary")}),
     "labels must be 0 or 1"),
    (dict(features={"x": quietlab.Feature(np.full((N, SEQ, 1), 5), np.ones((N, SEQ), bool), "categorical",
                                          n_classes=4)}), "integers in [0, 4)"),
    (dict(features={"x": np.zeros((N, SEQ, 1))}), "must be a quietlab.Feature"),
    (dict(export=["wandb"]), "export must be a list of tensorboard, mlflow, csv"),
])
def test_bad_taps_inputs_and_labels_fail_in_one_line_before_training(tmp_path, change, message):
    tokens, features = data()
    kwargs = {**dict(taps=["embed", "gru"], inputs=tokens, features=features), **change}
    with pytest.raises(ValueError) as err:
        quietlab.watch(Tiny(), tmp_path / "bad", **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "bad" / "config.json").exists()


def test_an_existing_run_is_kept_unless_overwrite(tmp_path):
    train_watched(tmp_path / "mine", steps=2)
    tokens, features = data()
    with pytest.raises(ValueError, match="already holds a run"):
        quietlab.watch(Tiny(), tmp_path / "mine", taps=["gru"], inputs=tokens, features=features)
    w = quietlab.watch(Tiny(), tmp_path / "mine", taps=["gru"], inputs=tokens, features=features, overwrite=True)
    w.close()
    db = sqlite3.connect(tmp_path / "mine" / "metrics.sqlite")
    assert {l for (l,) in db.execute("SELECT DISTINCT layer FROM probes")} == {"gru"}


def test_quietlab_transformer_is_watched_by_its_hook_names(tmp_path):
    from quietlab.models import Transformer, TransformerConfig

    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=4, seq_len=SEQ, d_model=16, n_layers=2, n_heads=2))
    tokens, features = data()
    w = quietlab.watch(model, tmp_path / "q", taps=["hook_embed", "blocks.1.hook_resid_post"], inputs=tokens,
                       features=features)
    w.close()
    with torch.no_grad():
        _, acts = model(tokens, capture=["blocks.1.hook_resid_post"])
    got = w.monitor.taps.capture(model)
    assert torch.allclose(got["blocks.1.hook_resid_post"], acts["blocks.1.hook_resid_post"], atol=1e-6)
    db = sqlite3.connect(tmp_path / "q" / "metrics.sqlite")
    assert db.execute("SELECT count(*) FROM metrics WHERE name LIKE 'attn/entropy/blocks.0.attn.hook_pattern/%'"
                      ).fetchone()[0] == 2


def test_export_verb_errors_are_one_line(tmp_path):
    train_watched(tmp_path / "mine", steps=2)
    runner = CliRunner()
    res = runner.invoke(app, ["export", str(tmp_path / "mine"), "--to", "wandb"])
    assert res.exit_code == 2 and "unknown export format 'wandb'" in res.output
    res = runner.invoke(app, ["export", str(tmp_path / "nothing"), "--to", "csv"])
    assert res.exit_code == 2 and "is not a run folder" in res.output
    res = runner.invoke(app, ["export", str(tmp_path / "mine"), "--to", "csv"])
    assert res.exit_code == 0 and (tmp_path / "mine" / "metrics.csv").exists()
