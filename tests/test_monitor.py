"""The monitor's hooks, its attention and gradient statistics, the quiet/loud classification, and the
`quietlab probe` verb, each against an independent oracle (planted curves, hand computation, a task's
own held-out test)."""

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from quietlab.models import Transformer, TransformerConfig
from quietlab.monitor import Monitor, attention_entropy, classify_features, probe_set, qkv_grad_stats
from quietlab.monitor.features import CLASSES
from quietlab.monitor.monitor import log_schedule
from quietlab.monitor.transitions import detect_transitions
from quietlab.runs import RunFolder, RunStore
from quietlab.train.threads import set_cpu_threads
from run_fixtures import tiny_config


pytestmark = pytest.mark.usefixtures("one_thread")


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


# --- the classification, on planted probe and loss curves ----------------------------------------
ONSET, END = 4000, 5000  # where the planted loss drops (10%..90% of the fall lie inside)
LOSS_STEPS = sorted({0} | {int(round(10 ** (i / 25))) for i in range(0, 109)})  # 0 .. ~20000, 25 per decade
PROBE_STEPS = sorted({0} | {int(round(10 ** (i / 8))) for i in range(0, 35)})  # 8 per decade


def loss_curve(kind, rng):
    s = np.asarray(LOSS_STEPS, float)
    ramp = 1.6 * np.exp(-s / 20)  # the initial ramp: from 2.3 to the plateau within ~100 steps
    if kind == "transition":
        mid, scale = math.log10(4470), 0.022  # logistic in log10(step): 10% at ~4000, 90% at ~5000
        body = 0.05 + 0.65 * (1 - sigmoid((np.log10(np.maximum(s, 1)) - mid) / scale))
    elif kind == "flat":
        body = np.full_like(s, 0.7)
    else:  # a smooth power law, no plateau at the end
        body = 0.7 * np.maximum(s, 1) ** -0.35
        ramp = 0 * ramp
    return LOSS_STEPS, list(body + ramp + rng.normal(0, 0.004, s.size))


def rising(step, at, best=0.95, width=0.05):
    """A probe accuracy that leaves chance (0.5) around ``at`` on a log axis (never, for at=None)."""
    if at is None:
        return 0.5
    return 0.5 + (best - 0.5) * sigmoid((math.log10(max(step, 1)) - math.log10(at)) / width)


LAYERS = ["hook_embed"] + [f"blocks.{l}.hook_resid_post" for l in range(3)]  # layer k: LAYERS[k]


def probe_rows(curves, rng, metric="acc"):
    """curves: {feature: {layer: fn(step) -> score}}; rows at 3 positions, ±0.02 intervals, tiny noise."""
    rows = []
    for feat, per_layer in curves.items():
        m = "r2" if feat.startswith("scalar") else metric
        for step in PROBE_STEPS:
            for layer in range(4):
                fn = per_layer.get(layer, lambda s: 0.5 if m == "acc" else 0.0)
                layer = LAYERS[layer]
                for pos in range(3):
                    v = fn(step) + rng.normal(0, 0.002)
                    rows += [(step, feat, layer, pos, m, v), (step, feat, layer, pos, f"{m}_lo", v - 0.02),
                             (step, feat, layer, pos, f"{m}_hi", v + 0.02)]
    return rows


def test_planted_quiet_loud_and_absent_features_are_told_apart():
    rng = np.random.default_rng(0)
    steps, losses = loss_curve("transition", rng)
    found = detect_transitions(steps, losses)  # the detector sees the planted drop
    assert len(found) == 1 and 2500 <= found[0].onset <= ONSET + 300 and END - 600 <= found[0].end <= 7000
    blip = lambda s: 0.9 if s == 100 else rising(s, 4500)  # noqa: E731 - one lucky checkpoint, then with the drop
    curves = {
        "quiet_f": {1: lambda s: rising(s, 300, 0.8), 2: lambda s: rising(s, 400)},
        "loud_f": {3: lambda s: rising(s, 4500)},
        "absent_f": {},
        "late_f": {2: lambda s: rising(s, 15000)},
        "blip_f": {1: blip},
        "scalar_quiet": {0: lambda s: rising(s, 1000) - 0.5},
    }
    transitions, classes = classify_features(probe_rows(curves, rng), steps, losses)
    assert len(transitions) == 1
    got = {name: c["class"] for name, c in classes.items()}
    assert got == {"quiet_f": "quiet", "loud_f": "loud", "absent_f": "absent", "late_f": "absent",
                   "blip_f": "loud", "scalar_quiet": "quiet"}
    q = classes["quiet_f"]
    assert q["best_layer"] == "blocks.1.hook_resid_post" and q["metric"] == "acc"
    assert 200 <= q["decodable_step"] <= 500  # planted rise at 300 (layer 1) / 400 (layer 2)
    assert q["acc_before_transition"] == pytest.approx(0.95, abs=0.01)
    assert q["acc_final"] == pytest.approx(0.95, abs=0.01) and q["baseline_acc"] == pytest.approx(0.5, abs=0.01)
    assert 3000 <= classes["loud_f"]["decodable_step"] <= 5000
    assert classes["loud_f"]["acc_before_transition"] < 0.55  # near chance before the drop
    assert classes["absent_f"]["decodable_step"] is None
    assert classes["late_f"]["decodable_step"] >= 10000 and "after" in classes["late_f"]["note"]
    assert classes["scalar_quiet"]["metric"] == "r2" and "r2_final" in classes["scalar_quiet"]


def test_too_sparse_probes_leave_a_feature_unresolved():
    rng = np.random.default_rng(2)
    steps, losses = loss_curve("transition", rng)
    rows = [r for r in probe_rows({"f": {2: lambda s: rising(s, 4500)}}, rng) if r[0] in (0, 1000, 17783)]
    _, classes = classify_features(rows, steps, losses)
    # not decodable at 1000 (before the drop), decodable at 17783 (after it): it may have come with the drop
    assert classes["f"]["class"] == "unresolved" and classes["f"]["decodable_step"] == 17783


def test_runs_without_a_transition():
    rng = np.random.default_rng(1)
    curves = {"early": {2: lambda s: rising(s, 300)}, "late": {2: lambda s: rising(s, 6000)}, "never": {}}
    rows = probe_rows(curves, rng)
    steps, flat = loss_curve("flat", rng)
    transitions, classes = classify_features(rows, steps, flat)
    assert transitions == []
    # the loss never moved after its initial ramp: whatever became decodable was learned quietly
    assert {n: c["class"] for n, c in classes.items()} == {"early": "quiet", "late": "quiet", "never": "absent"}
    steps, smooth = loss_curve("power", rng)
    transitions, classes = classify_features(rows, steps, smooth)
    assert transitions == []
    # the loss was still falling smoothly when `early` appeared: no phase to compare with
    assert classes["early"]["class"] == "unresolved" and classes["never"]["class"] == "absent"
    assert all(c["class"] in CLASSES for c in classes.values())


# --- attention entropy and Q/K/V gradients, by hand -------------------------------------------------
def tiny_model(seed=0):
    torch.manual_seed(seed)
    return Transformer(TransformerConfig(vocab_size=7, seq_len=9, d_model=16, n_layers=2, n_heads=2))


def test_uniform_attention_has_entropy_one_and_a_random_model_matches_a_hand_count():
    model = tiny_model()
    tokens = torch.randint(0, 7, (5, 9))
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.zero_()  # q = k = 0: every query attends uniformly
    got = attention_entropy(model, tokens)
    assert set(got) == {f"attn/entropy/blocks.{l}.attn.hook_pattern/H{h}" for l in range(2) for h in range(2)}
    assert got["attn/entropy/blocks.0.attn.hook_pattern/H0"] == pytest.approx(1.0, abs=1e-5)
    assert got["attn/entropy/blocks.0.attn.hook_pattern/H1"] == pytest.approx(1.0, abs=1e-5)
    # layer 1 is random: recompute from the pattern, query by query, in float64
    _, acts = model(tokens, capture=["blocks.1.attn.hook_pattern"])
    p = acts["blocks.1.attn.hook_pattern"].detach().double().numpy()
    for h in range(2):
        vals = []
        for b in range(5):
            for q in range(1, 9):  # query q sees keys 0..q
                row = p[b, h, q, : q + 1]
                vals.append(-(row * np.log(row)).sum() / math.log(q + 1))
        assert got[f"attn/entropy/blocks.1.attn.hook_pattern/H{h}"] == pytest.approx(np.mean(vals), abs=1e-5)
        assert 0 < got[f"attn/entropy/blocks.1.attn.hook_pattern/H{h}"] <= 1


def test_qkv_gradient_statistics_by_hand():
    model = tiny_model(1)
    tokens = torch.randint(0, 7, (4, 9))
    model(tokens).logsumexp(-1).mean().backward()
    got = qkv_grad_stats(model)
    d, dh = 16, 8
    for l in range(2):
        g = model.blocks[l].attn.qkv.weight.grad.numpy()
        for part, offset in zip("qkv", (0, d, 2 * d)):
            for h in range(2):
                rows = g[offset + h * dh : offset + (h + 1) * dh]
                assert got[f"grad/{part}/blocks.{l}.attn/H{h}"] == pytest.approx(np.abs(rows).mean(), rel=1e-5)


def test_log_schedule():
    assert log_schedule(100, 8)[:9] == [0, 1, 2, 3, 4, 6, 7, 10, 13]
    assert log_schedule(100, 8)[-1] == 100 and log_schedule(50, 8)[-1] == 50


# --- the monitor in a real (tiny) training run, and `quietlab probe` --------------------------------
def tiny_cfg(**kw):
    return tiny_config(**{"steps": 40, "eval_every": 5, "checkpoint_every": 20, **kw})


@pytest.fixture(scope="module")
def monitored_run(tmp_path_factory):
    from quietlab.train import train

    set_cpu_threads(1)
    run = tmp_path_factory.mktemp("runs") / "add4"
    monitor = Monitor(probe_examples=200, per_decade=4, stats_per_decade=4, max_overhead=None)
    train(tiny_cfg(), run, hooks=monitor, progress=False)
    return run, monitor


def test_monitor_writes_probes_statistics_and_classes(monitored_run):
    run, monitor = monitored_run
    from quietlab.tasks import get_task

    task = get_task("addition", n_bits=4)
    features = list(task.sample(1, split="test").features)
    with RunFolder(run).store() as store:
        probe_steps = sorted({r[0] for r in store.probes()})
        eval_steps = store.series("eval/loss")[0]
        # probes at step 0, at each scheduled step (right after its update), and at the end
        assert probe_steps == log_schedule(40, 4) == monitor.probe_steps and probe_steps[-1] == 40
        for f in features:
            rows = store.probes(f, "acc")
            assert rows and all(0 <= r[5] <= 1 for r in rows)
            layers = {r[2] for r in rows}
            assert layers == {"hook_embed", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"}
            mask = task.sample(200, split="test").features[f].mask
            assert {r[3] for r in rows} <= set(np.flatnonzero(mask.any(0)))  # only where the feature is defined
            for m in ("logloss", "acc_lo", "acc_hi", "n_test"):
                assert len(store.probes(f, m)) == len(rows)
        for l in range(2):
            for h in range(2):
                s, v = store.series(f"attn/entropy/blocks.{l}.attn.hook_pattern/H{h}")
                assert s == eval_steps and all(0 < x <= 1 for x in v)
                for part in "qkv":
                    s, v = store.series(f"grad/{part}/blocks.{l}.attn/H{h}")
                    assert s and set(s) <= set(log_schedule(40, 4)) and all(x > 0 for x in v)
        classes = store.results("feature_class")
        assert set(classes) == set(features)
        assert all(c["class"] in CLASSES and c["best_layer"] in layers for c in classes.values())
        assert "eval/loss" in store.results("transition")
    assert monitor.status() == monitor.losses.status


def test_probe_set_is_held_out_and_fixed():
    from quietlab.tasks import get_task

    task = get_task("addition", n_bits=4)
    batch = probe_set(task, 50, seed=3)
    for row in batch.tokens:  # the task's own split test, example by example
        prompt = task.decode(row).partition("=")[0]
        assert task.in_heldout(task._parse(prompt)).all()
    np.testing.assert_array_equal(batch.tokens, probe_set(task, 50, seed=3).tokens)


def test_monitor_does_not_change_training(tmp_path):
    from quietlab.train import train

    plain = train(tiny_cfg(steps=12, eval_every=4, checkpoint_every=12), tmp_path / "a", progress=False)
    watched = train(tiny_cfg(steps=12, eval_every=4, checkpoint_every=12), tmp_path / "b", progress=False,
                    hooks=Monitor(probe_examples=100, max_overhead=None))
    assert plain["eval/loss"] == watched["eval/loss"] and plain["train/loss"] == watched["train/loss"]


def test_a_zero_overhead_budget_keeps_only_the_mandatory_probes(tmp_path):
    from quietlab.train import train

    monitor = Monitor(probe_examples=100, max_overhead=0.0)
    train(tiny_cfg(steps=12, eval_every=4, checkpoint_every=12), tmp_path / "z", progress=False, hooks=monitor)
    with RunFolder(tmp_path / "z").store() as store:
        assert sorted({r[0] for r in store.probes()}) == [0, 12]  # the random-init baseline and the end
    assert monitor.deferred > 0


def test_unknown_feature_is_one_clear_error(tmp_path):
    from quietlab.train import train

    with pytest.raises(ValueError, match="unknown feature.*'nope'.*carry"):
        train(tiny_cfg(steps=4), tmp_path / "x", progress=False, hooks=Monitor(features=["nope"], probe_examples=50))


def test_cli_probe_refits_every_checkpoint(monitored_run):
    from quietlab.cli import app
    from quietlab.train import list_checkpoints

    run, _ = monitored_run
    result = CliRunner().invoke(app, ["probe", str(run), "--features", "carry,first_operand", "--examples", "200",
                                      "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [f["feature"] for f in out["features"]] == ["carry", "first_operand"]
    assert all(f["class"] in CLASSES for f in out["features"])
    assert out["checkpoints"] == list_checkpoints(run) == [0, 20, 40]
    with RunStore(RunFolder(run).path / "metrics.sqlite") as store:
        assert {r[0] for r in store.probes("carry", "acc")} >= {0, 20, 40}
        # the re-fit is kept apart from the monitor's rows, and the classes say which they read
        assert store.fits() == ["online", "checkpoint"] and store.probes(fit="online")
        assert store.get("feature_class", "carry")["probe_fit"] == "checkpoint"
    table = CliRunner().invoke(app, ["probe", str(run), "--features", "carry", "--examples", "200", "--device", "cpu"])
    assert table.exit_code == 0 and "carry" in table.stdout and "decodable" in table.stdout


def test_cli_probe_bad_run_is_one_line(tmp_path):
    from quietlab.cli import app

    for args in (["probe", str(tmp_path / "missing")], ["probe", str(tmp_path)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_a_trained_models_next_token_is_linearly_decodable_at_its_last_layer(trained_addition, tmp_path):
    """Oracle: the model's own readout of the next sum bit is a linear threshold of its last residual
    stream (RMSNorm only rescales), and it is right on every held-out example; so the probe must be too."""
    import shutil

    from quietlab.monitor.monitor import probe_run

    run_dir, final = trained_addition
    assert final["eval/exact_match"] >= 0.99
    run = tmp_path / "copy"
    shutil.copytree(run_dir, run)
    out = probe_run(run, features=["next_sum_bit"], probe_examples=600)
    with RunStore(run / "metrics.sqlite") as store:
        rows = store.probes("next_sum_bit", "acc")
    last = max(r[0] for r in rows)
    top = [r[5] for r in rows if r[0] == last and r[2] == "blocks.1.hook_resid_post"]  # the last block
    assert min(top) >= 0.98
    assert out["features"]["next_sum_bit"]["acc_final"] >= 0.98


def load_bfs11_run() -> dict:
    import gzip
    import json
    from pathlib import Path

    return json.load(gzip.open(Path(__file__).parent / "data" / "bfs11_run.json.gz", "rt"))


def test_the_online_watch_reports_the_real_bfs_transition_while_training(tmp_path):
    """Replays the real bfs-11 run as the training loop hands it over (train/loss flushed before each
    evaluation): its sparse eval/loss shows only a plateau, the per-step train/loss the transition."""
    from quietlab.monitor.monitor import LossWatch

    data = load_bfs11_run()
    train_steps, train_loss = data["train/loss"]
    events, statuses = [], []
    with RunStore(tmp_path / "metrics.sqlite") as store:
        watch = LossWatch(store, events.append)
        i = 0
        for step, loss in zip(*data["eval/loss"]):
            j = i
            while j < len(train_steps) and train_steps[j] <= step:
                j += 1
            watch.feed_train(train_steps[i:j], train_loss[i:j])
            i = j
            watch.update(step, loss)
            statuses.append((step, watch.status))
        watch.finish()
    transitions = [e for e in events if e.kind == "transition"]
    assert len(transitions) == 1 and 1000 <= transitions[0].step <= 3000, events
    first = next(step for step, status in statuses if status.startswith("transition"))
    assert transitions[0].step < first <= 10_000  # reported after its onset, long before the run ends
    assert all(status.startswith("transition") for step, status in statuses if step >= first)  # no flicker
    plateau = next(s for step, s in statuses if s.startswith("plateau"))
    assert int(plateau.split()[-1]) < transitions[0].step


def test_a_real_bfs_run_has_its_plateau_found_and_queue_is_quiet(tmp_path):
    """A real bfs-11 run (tests/data/bfs11_run.json.gz, trained on a GPU with quietlab): the loss sits
    near 1.05 from about step 600 and drops to 0.06 after step 1900. Its probe rows, with the queue
    decodable from step 631 and the adjacency row only once the loss falls, must classify as the
    quiet-features paper found: queue quiet, adjacency loud."""
    from quietlab.monitor.features import classify_run

    data = load_bfs11_run()
    with RunStore(tmp_path / "metrics.sqlite") as store:
        for name in ("train/loss", "eval/loss"):
            for step, value in zip(*data[name]):
                store.log(step, {name: value})
        store.log_probes([tuple(r) for r in data["probes"]])
        out = classify_run(store)
        stored = store.results("transition")
    t = out["main"]
    assert t is not None and 1000 <= t["onset"] <= 3000 and 300 <= t["plateau_start"] <= 1000, out
    assert t["level_before"] > 0.8 and t["level_after"] < 0.15
    assert out["curve"] in stored and stored[out["curve"]]
    classes = {name: c["class"] for name, c in out["features"].items()}
    assert classes["queue"] == "quiet" and classes["visited"] == "quiet" and classes["adjacency"] == "loud", out
    assert out["features"]["queue"]["decodable_step"] < t["onset"]


def test_probe_cost_counts_the_examples_each_position_is_defined_at():
    """The solver's part of a probe step's estimated cost, by hand: max_iter passes of 6·d FLOPs per
    probe-train example defined at a position, per output column and tap, over a training step's FLOPs;
    a feature defined on a quarter of the examples costs a quarter on a CPU (each pair is fitted on its
    defined examples), the same on a GPU (whose passes the count of examples hardly moves)."""
    from quietlab.monitor.monitor import probe_cost
    from quietlab.tasks.base import Feature

    model = Transformer(TransformerConfig(vocab_size=10, seq_len=6, d_model=16, n_layers=2, n_heads=2))
    n, T = 400, 6
    everywhere = np.zeros((n, T), bool)
    everywhere[:, 2:5] = True  # three positions, defined on every example
    quarter = everywhere.copy()
    quarter[n // 4 :] = False
    values = np.zeros((n, T, 3), np.int16)
    shape = dict(n_examples=n, n_train=320, max_iter=50, batch_size=8, seq_len=T)

    def solver_part(mask, device_type):
        feats = {"f": Feature(values, mask, "categorical", 5)}
        return probe_cost(model, feats, **shape, device_type=device_type, slowdown=1.0) - \
            probe_cost(model, feats, **shape, device_type=device_type, slowdown=0.0)

    n_params = sum(p.numel() for p in model.parameters())
    by_hand = 50 * 6 * 16 * (320 * 3 * 3 * 5) * 3 / (6 * n_params * 8 * T)  # 3 columns of 5 classes, 3 taps
    assert solver_part(everywhere, "cpu") == pytest.approx(by_hand)
    assert solver_part(quarter, "cpu") == pytest.approx(by_hand / 4)
    assert solver_part(quarter, "cuda") == pytest.approx(by_hand)

    # a probe of some of a solver family's features: on a CPU it costs those features' pairs; a GPU fits
    # the family as one batch, so it costs what the whole family does; another family is not counted
    feats = {"a": Feature(values, everywhere, "categorical", 5), "b": Feature(values, everywhere, "categorical", 5),
             "c": Feature(values[..., :1].astype(bool), everywhere, "binary")}
    for device_type, want in (("cpu", ["a"]), ("cuda", ["a", "b"])):
        got = probe_cost(model, feats, **shape, device_type=device_type, probed=["a"])
        alone = probe_cost(model, {f: feats[f] for f in want}, **shape, device_type=device_type)
        assert got == pytest.approx(alone), device_type
