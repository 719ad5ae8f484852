"""The quiet-feature study's ablation (PAPER_PROTOCOL §5) against a float64 reference written out per
example: x − Σ_v (ŵ_v·x + b̂_v) ŵ_v with unit rows at the chosen layer and position, applied while each
example is decoded greedily one token at a time; controls keep the probe's normalised bias; the verb
refuses what the protocol does not do."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from quietlab.cli import app
from quietlab.interventions.ablation import ablate_paper
from quietlab.interventions.edits import paper_controls, paper_edit
from quietlab.interventions.stored import ablate_run
from quietlab.monitor.paper_probes import chosen_layers, fit_paper_probes, paper_probe_set
from quietlab.runs import RunFolder
from quietlab.train import train
from quietlab.train.checkpoint import load_run
from quietlab.train.threads import set_cpu_threads
from run_fixtures import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

SPLIT = (300, 30)


def step_reference(x: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One activation vector through the study's ablation, row by row in float64."""
    out = x.astype(np.float64).copy()
    for w, c in zip(W.astype(np.float64), b.astype(np.float64)):
        norm = np.sqrt(sum(v * v for v in w))
        if norm == 0:
            continue  # a column constant on probe-train: no probe
        unit = w / norm
        out -= (float(unit @ x.astype(np.float64)) + c / norm) * unit
    return out


def test_the_edit_is_the_sum_of_unit_row_steps():
    rng = np.random.default_rng(0)
    B, T, d = 5, 6, 8
    probes = {1: (rng.standard_normal((3, d)) * 4, rng.standard_normal(3)),
              4: (np.vstack([rng.standard_normal((1, d)), np.zeros((1, d))]), np.array([0.5, 2.0]))}
    where = rng.random((B, T)) < 0.7
    x = torch.tensor(rng.standard_normal((B, T, d)) * 3)
    got = paper_edit(probes, where, d)(x.float(), torch.arange(T)).double().numpy()
    for i in range(B):
        for t in range(T):
            want = step_reference(x[i, t].numpy(), *probes[t]) if where[i, t] and t in probes else x[i, t].numpy()
            np.testing.assert_allclose(got[i, t], want, rtol=1e-5, atol=1e-5)
    # one probe row: exactly onto its decision boundary
    W, b = probes[4][0][:1], probes[4][1][:1]
    moved = paper_edit({0: (W, b)}, np.ones((B, 1), bool), d)(x[:, :1].float(), torch.arange(1)).double().numpy()
    np.testing.assert_allclose(moved[:, 0] @ W[0] + b[0], 0, atol=1e-4)


def test_controls_are_fresh_unit_gaussian_rows_keeping_the_probes_normalised_bias():
    rng = np.random.default_rng(1)
    W = np.vstack([rng.standard_normal((2, 6)) * 5, np.zeros((1, 6))])
    b = np.array([1.5, -3.0, 7.0])
    first, second = paper_controls({2: (W, b)}, 6, rng)[2], paper_controls({2: (W, b)}, 6, rng)[2]
    for R, bias in (first, second):
        assert R.shape == (2, 6)  # the zero row has no control either
        np.testing.assert_allclose(np.linalg.norm(R, axis=1), 1)
        np.testing.assert_allclose(bias, b[:2] / np.linalg.norm(W[:2], axis=1))
    assert not np.allclose(first[0], second[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-bit addition model of the paper preset, trained to about 90% exact match."""
    set_cpu_threads(1)
    run = tmp_path_factory.mktemp("paper-ablation") / "run"
    train(tiny_config(preset="paper", n_heads=4, d_model=32, steps=250, batch_size=32, eval_every=125,
                      checkpoint_every=250), run, progress=False)
    return run


def reference_decode(model, tokens: np.ndarray, start: int, edits: dict[int, tuple[str, np.ndarray, np.ndarray]]):
    """Greedy decoding of one example from ``tokens[:start]``, the prefix recomputed at every step, with
    ``edits`` {position: (layer, W, b)} applied by ``step_reference`` in float64 (the model in float64)."""
    seq = list(tokens[:start])
    while len(seq) < len(tokens):
        def at(layer):
            def fn(x, positions):
                x = x.clone()
                for j, p in enumerate(positions.tolist()):
                    if p in edits and edits[p][0] == layer:
                        x[0, j] = torch.from_numpy(step_reference(x[0, j].numpy(), edits[p][1], edits[p][2]))
                return x
            return fn

        layers = {layer for layer, _, _ in edits.values()}
        with torch.no_grad():
            logits = model(torch.tensor([seq]), edit={layer: at(layer) for layer in layers})
        seq.append(int(logits[0, -1].argmax()))
        if seq[-1] == 0:
            break
    return seq


def test_ablation_and_controls_match_a_float64_reference_per_example(trained):
    """The ablation of ``first_operand`` at block 0 and its two controls (whose directions are redrawn here
    the way ablate_paper draws them: default_rng(seed), position by position), each example decoded from
    the paper's prompt and from one through '='."""
    model, task, cfg, _ = load_run(trained)
    layer, feature, seed = "blocks.0.hook_resid_post", "first_operand", 0
    result = ablate_paper(model, task, feature, probe_seed=cfg.seed, n_controls=2, seed=seed, layer=layer,
                          paper_split=SPLIT)
    batch, tr, te = paper_probe_set(task, cfg.seed, *SPLIT)
    probes = fit_paper_probes(model, batch, [feature], tr, te, layers=[layer])[feature]
    chosen = chosen_layers(probes)
    assert result.layers == {t: layer for t in chosen}
    real = {t: (probes.weight[j].double().numpy(), probes.bias[j].double().numpy()) for t, (_, j) in chosen.items()}
    rng = np.random.default_rng(seed)
    arms = [(result.ablated_acc, result.ablated_acc_given_eq, real)]
    arms += [(acc, None, paper_controls(real, model.config.d_model, rng)) for acc in result.control_accs]
    model64 = model.double()
    for acc, acc_given_eq, per_position in arms:
        right, right_given_eq = [], []
        for i in te:
            row = batch.tokens[i].astype(np.int64)
            mask = batch.features[feature].mask[i]
            edits = {t: (layer, *per_position[t]) for t in per_position if mask[t]}
            eq = int(np.flatnonzero(row == task.vocab.index("="))[0])
            end = eq + int(np.flatnonzero(row[eq:] == 0)[0])  # the first end token
            for start, out in ((eq, right), (eq + 1, right_given_eq)):
                seq = reference_decode(model64, row, start, edits)
                out.append(len(seq) > end and seq[eq : end + 1] == row[eq : end + 1].tolist())
        assert acc == pytest.approx(np.mean(right), abs=1.5 / len(te))  # float32 against float64: a near tie may flip
        if acc_given_eq is not None:
            assert acc_given_eq == pytest.approx(np.mean(right_given_eq), abs=1.5 / len(te))
    assert min(result.control_accs) < result.baseline_acc - 0.1  # the edits bite: the comparison is not vacuous
    assert result.n_examples == len(te) == SPLIT[1] and result.protocol == "paper"
    assert result.drop_points == pytest.approx(100 * (result.baseline_acc - result.ablated_acc))
    assert result.control_acc == pytest.approx(np.mean(result.control_accs))


@pytest.mark.parametrize("args, match", [(["--method", "mean"], "boundary method only"),
                                         (["--examples", "50"], "drop --examples"),
                                         (["--preset", "quietlab"], "does not match the run's preset paper")])
def test_ablate_refuses_what_the_paper_protocol_does_not_do(trained, args, match):
    res = CliRunner().invoke(app, ["ablate", str(trained), "--feature", "carry", "--device", "cpu", *args])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1 and match in res.stderr, res.stderr


def test_ablate_run_stores_the_paper_protocols_result(trained):
    results, step = ablate_run(trained, ["carry"], n_controls=1, paper_split=SPLIT)
    with RunFolder(trained).store() as store:
        saved = store.get("ablation", "carry/boundary")
    assert saved["protocol"] == "paper" and saved["step"] == step and saved["n_examples"] == SPLIT[1]
    assert saved["baseline_acc_given_eq"] == results[0].baseline_acc_given_eq
