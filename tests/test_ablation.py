"""Ablations on a small trained addition model: the carry matters, a feature the model never saw does not."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from quietlab.cli import app
from quietlab.interventions.ablation import ablate, bootstrap_drop, relative_drop
from quietlab.tasks.base import Batch, Feature
from quietlab.train.checkpoint import load_run
from quietlab.train.decode import exact_match, greedy_decode
from quietlab.train.threads import set_cpu_threads


@pytest.fixture(scope="module")
def model_and_task(trained_addition):
    set_cpu_threads(1)
    model, task, _, _ = load_run(trained_addition[0])
    return model, task


def with_random_feature(batch: Batch, seed: int) -> Batch:
    """The batch plus a feature of coin flips at the carry's positions: nothing the model could use."""
    carry = batch.features["carry"]
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 2, size=carry.values.shape).astype(np.uint8)
    return Batch(batch.tokens, batch.loss_mask, {**batch.features, "coin": Feature(values, carry.mask, "binary")})


def test_relative_drop_and_bootstrap_against_hand_counts():
    base = np.array([1, 1, 1, 1, 0] * 20, dtype=float)  # 80%
    other = np.array([1, 0, 0, 0, 0] * 20, dtype=float)  # 20%
    assert relative_drop(base, other) == pytest.approx(75.0)
    lo, hi = bootstrap_drop(base, other, np.random.default_rng(0))
    assert lo < 75.0 < hi and hi - lo < 40


def test_baseline_accuracy_is_the_models_own_exact_match(model_and_task):
    model, task = model_and_task
    eval_batch = task.sample(300, seed=5, split="test")
    result = ablate(model, task, "carry", method="mean", layer="blocks.0.hook_resid_post", n_probe=600, eval_batch=eval_batch, n_controls=2)
    tokens = torch.as_tensor(eval_batch.tokens).long()
    out = greedy_decode(model, tokens, torch.as_tensor(eval_batch.answer_start))
    direct = exact_match(out, tokens, torch.as_tensor(eval_batch.loss_mask)).float().mean().item()
    # and against the task's own solver, row by row
    solver = np.mean([task.is_correct(row) for row in out.numpy()])
    assert result.baseline_acc == pytest.approx(direct) == pytest.approx(solver)
    assert result.baseline_acc >= 0.99


def test_erasing_the_carry_breaks_the_model_more_than_random_subspaces_moved_as_far(model_and_task):
    model, task = model_and_task
    result = ablate(model, task, "carry", method="erase", layer="blocks.1.hook_resid_post", n_probe=1000, n_eval=300, n_controls=8)
    assert result.drop_pct >= 20.0, result
    # LEACE moves the activations far (its whitening leans on high-variance directions): random
    # subspaces moved as far cost accuracy too, but clearly less
    assert result.drop_ci[0] > result.control_drop_ci[1], result


@pytest.mark.parametrize("method", ["boundary", "mean", "erase", "resample"])
def test_ablating_a_feature_the_model_does_not_use_stays_within_the_control_interval(model_and_task, method):
    model, task = model_and_task
    probe_batch = with_random_feature(task.sample(800, seed=11, split="test"), seed=1)
    eval_batch = with_random_feature(task.sample(300, seed=12, split="test"), seed=2)
    result = ablate(model, task, "coin", method=method, layer="blocks.0.hook_resid_post", probe_batch=probe_batch, eval_batch=eval_batch,
                    n_controls=8)
    assert result.probe_acc < 0.6  # coin flips are not decodable
    # the coin's ablation is one more draw from the controls' distribution: within three of their
    # standard deviations of their mean drop (a used feature, like carry above, lies far outside)
    base = result.baseline_acc
    drops = 100.0 * (base - np.array(result.control_accs)) / base
    assert abs(result.drop_pct - drops.mean()) <= 3 * drops.std() + 1.0, (result.drop_pct, drops)


def test_ablate_cli_stores_the_result_and_prints_json(trained_addition):
    run_dir = trained_addition[0]
    res = CliRunner().invoke(app, ["ablate", str(run_dir), "--feature", "carry", "--method", "erase", "--layer",
                                   "blocks.1.hook_resid_post",
                                   "--examples", "200", "--controls", "2", "--json"])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout)[0]
    assert printed["feature"] == "carry" and printed["n_examples"] == 200 and printed["n_controls"] == 2
    assert printed["layer"] == "blocks.1.hook_resid_post"
    from quietlab.runs import RunFolder

    with RunFolder(run_dir).store() as store:
        assert store.get("ablation", "carry/erase")["ablated_acc"] == pytest.approx(printed["ablated_acc"])


@pytest.mark.parametrize("args, message", [
    (["--feature", "nope"], "no feature 'nope'"),
    (["--feature", "carry", "--method", "zap"], "method must be one of"),
    (["--feature", "carry", "--layer", "2"], "unknown layer '2'; use one of: auto, hook_embed, blocks.0.hook_resid_post"),
    ([], "give --feature NAME or --all"),
    (["--feature", "carry", "--controls", "100000000"], "--controls must be in 0..10,000, got 100000000"),
    (["--feature", "carry", "--examples", "100000000"], "--examples must be in 1..1,000,000, got 100000000"),
    (["--feature", "carry", "--examples", "0"], "--examples must be in 1..1,000,000, got 0"),
])
def test_ablate_cli_bad_input_is_one_line(trained_addition, args, message):
    res = CliRunner().invoke(app, ["ablate", str(trained_addition[0]), "--examples", "20", "--controls", "1", *args])
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("method, layer", [("boundary", "blocks.0.hook_resid_post"), ("mean", "auto"),
                                           ("erase", "blocks.1.hook_resid_post")])
def test_controls_move_the_activations_as_far_as_the_ablation(model_and_task, method, layer):
    model, task = model_and_task
    result = ablate(model, task, "carry", method=method, layer=layer, n_probe=600, n_eval=200, n_controls=3)
    assert result.edit_size > 0.01
    # one tap: matched exactly; several: an earlier tap's edit changes what a later one moves, a little
    tol = 1e-3 if layer != "auto" else 0.1
    assert result.control_edit_size == pytest.approx(result.edit_size, rel=tol)


def test_exact_match_under_edits_from_one_teacher_forced_pass_equals_greedy_decoding(model_and_task):
    """The ablation scores each arm with one teacher-forced pass; greedy decoding under the same edits is
    the oracle, row by row, for edits strong enough to break some answers and not others."""
    from quietlab.interventions.ablation import _Run
    from quietlab.interventions.edits import AffineEdit

    model, task = model_and_task
    batch = task.sample(200, seed=11, split="test")
    tokens = torch.as_tensor(batch.tokens).long()
    T, d = tokens.shape[1], model.config.d_model
    gen = torch.Generator().manual_seed(0)
    outcomes = []
    for scale in (0.0, 2.0, 6.0):
        V = torch.randn(T, 1, d, generator=gen)
        V = V / V.norm(dim=-1, keepdim=True)
        edit = AffineEdit(U=V.transpose(1, 2) * scale, V=V, s=torch.zeros(T, 1),
                          where=torch.rand(tokens.shape, generator=gen) < 0.5)
        edits = {"blocks.1.hook_resid_post": edit}
        correct, _, _ = _Run(model, batch, "cpu")(edits)
        out = greedy_decode(model, tokens, torch.as_tensor(batch.answer_start), edit=edits)
        greedy = exact_match(out, tokens, torch.as_tensor(batch.loss_mask)).numpy()
        np.testing.assert_array_equal(correct, greedy)
        outcomes.append(correct.mean())
    assert outcomes[0] >= 0.99 and min(outcomes) < 0.9  # the oracle was tested on broken answers too


def test_one_pass_scoring_and_measuring_equals_the_two_separate_passes(model_and_task):
    """``_Run.measured`` scores an edit set and measures how far it moves x in one pass: the same exact
    matches, loss and per-position ‖Δx‖ as scoring and measuring in passes of their own."""
    from quietlab.interventions.ablation import _Run
    from quietlab.interventions.edits import AffineEdit

    model, task = model_and_task
    batch = task.sample(100, seed=12, split="test")
    T, d = batch.tokens.shape[1], model.config.d_model
    gen = torch.Generator().manual_seed(1)
    V = torch.randn(T, 1, d, generator=gen)
    V = V / V.norm(dim=-1, keepdim=True)
    edits = {layer: AffineEdit(U=V.transpose(1, 2) * 3.0, V=V, s=torch.zeros(T, 1),
                               where=torch.rand(batch.tokens.shape, generator=gen) < 0.5)
             for layer in ("hook_embed", "blocks.0.hook_resid_post")}
    run = _Run(model, batch, "cpu")
    correct, loss, _, moved = run.measured(edits)
    alone_correct, alone_loss, _ = run(edits)
    np.testing.assert_array_equal(correct, alone_correct)
    assert loss == alone_loss
    later = []  # the sizing pass ends at the deepest edit: no later block runs
    hook = model.blocks[1].register_forward_hook(lambda *_: later.append(1))
    try:
        sized = run.sizes(edits)
    finally:
        hook.remove()
    assert not later
    torch.testing.assert_close(moved, sized, equal_nan=True, rtol=0, atol=0)
    assert torch.isfinite(moved).any() and (moved[torch.isfinite(moved)] > 0).all()
