"""The HTML report and the summary sentences, on synthetic run folders whose every number is set here.

The oracle for the sentences is the data written below (constants and the synthetic curves), not the
report's own code; the browser test opens the real file in Debian's Chromium with the network cut off.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from quietlab.models import TransformerConfig
from quietlab.report import compare, headline, summarize, write_report
from quietlab.report.rundata import feature_curve, load_run
from quietlab.runs import RunFolder
from quietlab.train import TrainConfig

CHROMIUM = Path("/usr/bin/chromium")

# --- the synthetic run ------------------------------------------------------------------------
LAST = 4000
PLATEAU_START, ONSET, END = 300, 2900, 3100
LEVEL_BEFORE, LEVEL_AFTER = 0.69, 0.05
CARRY_DECODABLE, BIT_DECODABLE = 1100, 2950
LAYERS, POSITIONS, HEADS = (0, 1, 2), tuple(range(10, 18)), (0, 1)
HOOKS = ("hook_embed", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post")  # layer k: HOOKS[k]
ABLATION = {"feature": "carry", "method": "boundary", "layer": HOOKS[2], "n_examples": 512, "baseline_acc": 0.99,
            "ablated_acc": 0.12, "drop_pct": 87.9, "drop_ci": [84.0, 91.5], "control_acc": 0.98,
            "control_drop_pct": 1.0, "control_drop_ci": [0.2, 2.1], "n_controls": 32,
            "baseline_loss": 0.05, "ablated_loss": 1.9, "control_loss": 0.06, "edit_size": 2.5,
            "control_edit_size": 2.49}


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def loss_at(s, onset, end):
    """2.0 falling to the plateau by PLATEAU_START, flat, then a drop between onset and end."""
    early = LEVEL_BEFORE + (2.0 - LEVEL_BEFORE) * max(0.0, 1 - s / PLATEAU_START)
    drop = sigmoid((s - (onset + end) / 2) / ((end - onset) / 8))
    return early + (LEVEL_AFTER - LEVEL_BEFORE) * drop


def write_training_config(folder: RunFolder, task: str, sizes: dict, *, seed=0, steps=LAST, variant="softmax",
                           d_model=32, n_layers=2, n_heads=2, vocab_size=5, seq_len=26) -> None:
    """config.json in the layout training writes (train/loop.py): every TrainConfig setting, the model's
    TransformerConfig and the resolved run length."""
    train = TrainConfig(task=task, task_sizes=sizes, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                        attention=variant, steps=steps, seed=seed)
    model = TransformerConfig(vocab_size=vocab_size, seq_len=seq_len, d_model=d_model, n_layers=n_layers,
                              n_heads=n_heads, attention=variant)
    folder.write_config({**train.to_dict(), "model_config": model.to_dict(), "resolved": {"steps": steps}})


def make_run(path: Path, *, variant="softmax", shift=0, with_monitor=True, seed=0) -> Path:
    """A run folder: config.json and a store filled like training + monitor + probe + ablate would."""
    onset, end = ONSET - shift, END - shift
    folder = RunFolder(path)
    write_training_config(folder, "addition", {"n_bits": 8}, seed=seed, variant=variant)
    rng = np.random.default_rng(seed)
    with folder.store() as st:
        for s in range(0, LAST + 1, 50):
            st.log(s, {"train/loss": loss_at(s, onset, end) + 0.01 * rng.standard_normal(),
                       "train/lr": 1e-3, "train/tokens": 64 * 26 * s, "train/flops": 6 * 64 * 26 * s * 2.5e4})
        for s in range(0, LAST + 1, 100):
            up = sigmoid((s - (onset + end) / 2) / ((end - onset) / 8))
            m = {"eval/loss": loss_at(s, onset, end), "eval/exact_match": round(0.99 * up, 4),
                 "eval/token_acc": 0.5 + 0.49 * up}
            m.update({f"eval/pos_acc/{i}": 0.5 + 0.49 * sigmoid((s - onset - 20 * i) / 40) for i in range(9)})
            if with_monitor:
                for l in range(2):
                    for h in HEADS:
                        m[f"attn/entropy/blocks.{l}.attn.hook_pattern/H{h}"] = 0.97 - 0.4 * up - 0.05 * h
                        for k, g in (("q", 1e-5), ("k", 1e-5), ("v", 1e-3)):
                            m[f"grad/{k}/blocks.{l}.attn/H{h}"] = g * (1 + 100 * up) * (1 + h)
            st.log(s, m)
        if not with_monitor:
            return path
        rows = []
        for s in range(0, LAST + 1, 200):
            for layer in LAYERS:
                hook = HOOKS[layer]
                for p in POSITIONS:
                    carry = 0.51 + 0.48 * sigmoid((s - CARRY_DECODABLE - 400) / 150) * (layer / 2) + 0.001 * (p - 10)
                    bit = 0.50 + 0.45 * sigmoid((s - BIT_DECODABLE - 100) / 50) * (layer / 2)
                    rows += [(s, "carry", hook, p, "acc", carry), (s, "carry", hook, p, "logloss", 1 - carry),
                             (s, "carry", hook, p, "acc_lo", carry - 0.02), (s, "carry", hook, p, "acc_hi", carry + 0.02),
                             (s, "a_bit", hook, p, "acc", bit),
                             (s, "noise", hook, p, "acc", 0.5 + 0.001 * layer),
                             (s, "running_sum", hook, p, "r2", 0.9 * sigmoid((s - 2000) / 200) * layer / 2)]
        st.log_probes(rows)
        for name in ("eval/loss", "train/loss"):
            st.put("transition", name, [{"plateau_start": PLATEAU_START, "onset": onset, "end": end,
                                         "level_before": LEVEL_BEFORE, "level_after": LEVEL_AFTER}])
        st.put("event", f"{PLATEAU_START}:plateau", {"step": PLATEAU_START, "kind": "plateau",
                                                     "text": f"plateau since step {PLATEAU_START}"}, step=PLATEAU_START)
        st.put("event", f"{onset}:transition", {"step": onset, "kind": "transition",
                                                "text": f"transition at step {onset}"}, step=onset)
        st.put("feature_class", "carry", {"feature": "carry", "class": "quiet", "best_layer": HOOKS[2],
                                          "decodable_step": CARRY_DECODABLE - shift // 4, "acc_before_transition": 0.62,
                                          "acc_final": 0.99, "baseline_acc": 0.51})
        st.put("feature_class", "a_bit", {"feature": "a_bit", "class": "loud", "best_layer": HOOKS[2],
                                          "decodable_step": BIT_DECODABLE - shift, "acc_before_transition": 0.5,
                                          "acc_final": 0.95, "baseline_acc": 0.5})
        st.put("feature_class", "noise", {"feature": "noise", "class": "absent", "best_layer": HOOKS[2],
                                          "decodable_step": None, "acc_before_transition": 0.5, "acc_final": 0.502,
                                          "baseline_acc": 0.502})
        st.put("ablation", "carry/boundary", ABLATION)
        st.put("ablation", "a_bit/boundary", {**ABLATION, "feature": "a_bit", "ablated_acc": 0.6, "drop_pct": 39.4,
                                              "drop_ci": [35.0, 44.0]})
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {
        "a": make_run(root / "run_a"),
        "b": make_run(root / "run_b", variant="normsoftmax", shift=2000, seed=1),
        "bare": make_run(root / "bare_run", with_monitor=False),
        "empty": make_run_config_only(root / "empty_run"),
    }


def make_run_config_only(path: Path) -> Path:
    write_training_config(RunFolder(path), "bfs", {"n_nodes": 11}, seed=3)
    return path


@pytest.fixture(scope="module")
def reports(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    return {
        "single": write_report([runs["a"]], out / "single.html"),
        "multi": write_report([runs["a"], runs["b"]], out / "multi.html"),
        "bare": write_report([runs["bare"]], out / "bare.html"),
        "empty": write_report([runs["empty"]], out / "empty.html"),
        "ragged": write_report([make_ragged_run(out / "ragged")], out / "ragged.html"),
    }


# --- the file ---------------------------------------------------------------------------------
EXTERNAL = re.compile(r"<(?:script|link|img|iframe|source|embed)\b[^>]*\b(?:src|href)\s*=\s*[\"']?\s*(?:https?:)?//", re.I)


def test_report_is_one_self_contained_file(reports):
    for path in reports.values():
        text = path.read_text(encoding="utf-8")
        assert text.startswith("<!DOCTYPE html>")
        assert not EXTERNAL.search(text), "the report loads something from the network"
        assert not re.search(r"<script\b[^>]*\bsrc\s*=", text, re.I), "every script must be inline"
        if 'class="plotly-graph-div"' in text:
            assert "plotly.js v" in text[:2_000_000], "plotly.js is inlined"
        assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")], "atomic write left a temp file"


def test_report_shows_each_part(reports, runs):
    text = reports["single"].read_text(encoding="utf-8")
    n_plots = text.count('class="plotly-graph-div"')
    # loss, per-position accuracy, features, one heat map per probed feature (4), ablations, attention
    assert n_plots == 2 + 1 + 4 + 1 + 1
    for needle in ("Loss and accuracy", "Features", "Ablations", "Attention", "plateau since step 300",
                   "transition at step 2900", "n_bits"):
        assert needle in text
    multi = reports["multi"].read_text(encoding="utf-8")
    assert "Runs compared" in multi and "run_a (softmax)" in multi and "run_b (normsoftmax)" in multi


def test_report_says_plainly_what_is_absent(reports):
    bare = reports["bare"].read_text(encoding="utf-8")
    assert "No probes were recorded" in bare
    assert "No ablations were run" in bare
    assert "No attention statistics" in bare
    assert "Transition detection has not run" in bare
    empty = reports["empty"].read_text(encoding="utf-8")
    assert "no metrics.sqlite" in empty and 'class="plotly-graph-div"' not in empty


# --- the sentences ----------------------------------------------------------------------------
def test_summary_sentences_carry_the_numbers(runs):
    sentences = summarize(runs["a"])
    text = " ".join(sentences)
    assert f"flat from step {PLATEAU_START:,} to {ONSET:,}" in text
    assert f"dropped to {LEVEL_AFTER:g} by step {END:,}" in text
    assert f"`carry` (quiet) decodable from step {CARRY_DECODABLE:,}, {ONSET - CARRY_DECODABLE:,} steps before the drop" in text
    assert "1,800 steps before the drop" in text  # the same, spelled out
    assert ("Ablating `carry` (boundary, block 1 output `blocks.1.hook_resid_post`, 512 examples): "
            "exact match 99% → 12%") in text
    assert "random directions: 98%" in text and "95% CI 84–92%" in text
    assert "mean ‖Δx‖ 2.5, random directions 2.49." in text
    assert "`noise` never became decodable" in text
    # the final exact match is the last logged value of the synthetic curve
    em = RunFolder(runs["a"]).store().series("eval/exact_match")[1][-1]
    assert f"Final exact-match accuracy {round(100 * em)}% at step {LAST:,}" in text
    assert f"trained {LAST:,} steps" in text
    assert sentences[0].startswith("`addition` (n_bits=8); d_model 32 × 2 layers, 2 heads; softmax attention; seed 0:")
    # a feature probed but not classified gets the probe's own numbers
    rs = [s for s in sentences if s.startswith("`running_sum`")]
    assert rs and "R² 0.90" in rs[0] and "R² 0.00 at random init" in rs[0]
    assert headline(runs["a"]) == ("Loss flat from step 300 to 2,900; `carry` decodable from step 1,100 "
                                   "(1,800 steps before the drop); ablating it: accuracy 99% → 12% (random directions: 98%).")


def test_a_fitted_floor_below_zero_is_replaced_by_the_measured_loss(tmp_path):
    """The detector's logistic can put a loss's floor below 0 when the loss ends near 0; the summary then
    says what the curve measured at the drop's end instead of a negative loss."""
    run = make_run(tmp_path / "run")
    with RunFolder(run).store() as st:
        st.put("transition", "eval/loss", [{"plateau_start": PLATEAU_START, "onset": ONSET, "end": END,
                                           "level_before": LEVEL_BEFORE, "level_after": -2e-5}])
        steps, values = st.series("eval/loss")
    measured = values[min(range(len(steps)), key=lambda j: abs(steps[j] - END))]
    assert measured > 0
    text = " ".join(summarize(run))
    assert f"dropped to {measured:.3g} by step {END:,}" in text and "-2e-05" not in text


def two_stage_run(path):
    """A run whose loss falls onto its plateau in two stages: an early small transition (1.0 -> 0.7, onset
    step 100) before the main one."""
    run = make_run(path)
    with RunFolder(run).store() as st:
        st.put("transition", "eval/loss", [{"plateau_start": 20, "onset": 100, "end": 200, "level_before": 1.0,
                                           "level_after": 0.7},
                                          {"plateau_start": PLATEAU_START, "onset": ONSET, "end": END,
                                           "level_before": LEVEL_BEFORE, "level_after": LEVEL_AFTER}])
    return run


def test_the_headline_names_the_plateau_its_quiet_feature_was_quiet_on(tmp_path):
    """With an early small transition (a two-stage fall onto the plateau) before the main one, the
    headline's "loss flat" is the main plateau, the one its feature's lead is counted to."""
    run = two_stage_run(tmp_path / "run")
    assert headline(run).startswith(f"Loss flat from step {PLATEAU_START:,} to {ONSET:,}; `carry` decodable from step "
                                    f"{CARRY_DECODABLE:,} ({ONSET - CARRY_DECODABLE:,} steps before the drop)")


def test_compare_names_the_main_drop_of_a_run_with_an_early_small_one(tmp_path):
    """A two-stage fall onto the plateau (a small early transition, 1.0 -> 0.7) before the main one: the
    comparison's "Drop begins" is the main transition's onset (the largest factor), not the first one's."""
    run = two_stage_run(tmp_path / "run")
    assert LEVEL_BEFORE / LEVEL_AFTER > 1.0 / 0.7
    (begins,) = [s for s in compare([run, run]) if s.startswith("Drop begins")]
    assert f"at step {ONSET:,}" in begins and "at step 100;" not in begins and not begins.endswith("at step 100.")


def test_summary_of_a_run_without_monitor_names_what_is_missing(runs):
    text = " ".join(summarize(runs["bare"]))
    assert "Transition detection has not run" in text and "No probes were recorded" in text
    assert "No ablations were run" in text and "No attention statistics" in text
    assert headline(runs["bare"]) is None
    assert "nothing logged yet" in " ".join(summarize(runs["empty"]))


def test_compare_sentences(runs):
    text = " ".join(compare([runs["a"], runs["b"]]))
    assert f"`run_a (softmax)` at step {ONSET:,}" in text
    assert f"`run_b (normsoftmax)` at step {ONSET - 2000:,}" in text
    # steps to 95% of the best final exact match, from the synthetic curves themselves
    target = 0.95 * 0.99 * float(np.round(sigmoid((LAST - (ONSET + END) / 2) / 25), 4))
    for run, shift in ((runs["a"], 0), (runs["b"], 2000)):
        first = next(s for s in range(0, LAST + 1, 100)
                     if round(0.99 * sigmoid((s - (ONSET - shift + END - shift) / 2) / 25), 4) >= target)
        assert f"{first:,}" in text


def test_feature_curve_is_best_layer_mean_over_positions(runs):
    c = feature_curve(load_run(runs["a"]), "carry")
    assert c.layer == HOOKS[2] and c.metric == "acc" and c.cls == "quiet"
    s = 2000
    expected = np.mean([0.51 + 0.48 * sigmoid((s - CARRY_DECODABLE - 400) / 150) + 0.001 * (p - 10) for p in POSITIONS])
    assert math.isclose(c.values[c.steps.index(s)], expected, rel_tol=1e-9)
    assert math.isclose(c.baseline, np.mean([0.51 + 0.48 * sigmoid((-CARRY_DECODABLE - 400) / 150) + 0.001 * (p - 10)
                                              for p in POSITIONS]), rel_tol=1e-9)
    assert c.lo is not None and math.isclose(c.hi[0] - c.lo[0], 0.04, rel_tol=1e-6)


# --- the command ------------------------------------------------------------------------------
def test_cli_report(runs, tmp_path):
    from typer.testing import CliRunner

    from quietlab.cli import app

    run = shutil.copytree(runs["a"], tmp_path / "run")
    res = CliRunner().invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == str(run / "report.html") and (run / "report.html").exists()
    out = tmp_path / "both.html"
    res = CliRunner().invoke(app, ["report", str(run), str(runs["b"]), "--out", str(out)])
    assert res.exit_code == 0 and out.exists()
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and "not a run folder" in res.output


# --- the real page, in a browser with no network ----------------------------------------------
CHECK_PLOTS = """() => {
  const divs = Array.from(document.querySelectorAll('.plotly-graph-div'));
  return divs.map(gd => {
    const data = gd.data || [];
    const empty = data.filter(t => {
      const a = t.type === 'heatmap' ? t.z : (t.y || t.x);
      return !a || a.length === 0;
    }).map(t => t.name || t.type);
    // marks drawn in each subplot: lines, markers, heat-map images, bars
    const perSubplot = Object.keys(gd._fullLayout._plots).map(k => gd.querySelectorAll(
      [`.scatterlayer path.js-line`, `.scatterlayer path.point`, `.heatmaplayer image`, `.barlayer path`]
        .map(sel => `.subplot.${k} ${sel}`).join(', ')).length);
    const drawn = perSubplot.length ? Math.min(...perSubplot) : 0;
    return {id: gd.id, plotted: gd.classList.contains('js-plotly-plot'), traces: data.length, empty, drawn,
            svgPaths: gd.querySelectorAll('svg path').length};
  });
}"""


# press every "log" and "each head" button, and move every slider to its first step (the random init)
PRESS_EVERYTHING = """async () => {
  const buttons = Array.from(document.querySelectorAll('g.updatemenu-button'))
    .filter(b => /(: log|each head)$/.test(b.textContent.trim()));
  for (const b of buttons) b.dispatchEvent(new MouseEvent('click', {bubbles: true}));
  for (const gd of document.querySelectorAll('.js-plotly-plot')) {
    const sliders = gd.layout.sliders || [];
    if (sliders.length) await Plotly.update(gd, ...sliders[0].steps[0].args);
  }
  await new Promise(r => requestAnimationFrame(() => setTimeout(r, 100)));
  return buttons.length;
}"""
AXIS_STATE = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => ({
  id: gd.id, xtype: gd._fullLayout.xaxis.type, visible: gd.data.filter(t => t.visible !== false).length,
  title: gd._fullLayout.title.text}))"""


def test_report_opens_offline_in_chromium(reports, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (test extra) is not installed")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            # the multi-run report holds every section of both runs; the ragged one half-written results
            for key in ("multi", "ragged", "empty"):
                ctx = browser.new_context(viewport={"width": 1280, "height": 900})
                page = ctx.new_page()
                attempted, errors = [], []
                page.on("request", lambda r: None if r.url.startswith(("file:", "data:", "blob:", "about:"))
                        else attempted.append(r.url))
                ctx.route(re.compile(r"^(https?|wss?)://"), lambda route: (attempted.append(route.request.url), route.abort()))
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.goto(reports[key].resolve().as_uri(), wait_until="load")
                page.wait_for_function(
                    "() => Array.from(document.querySelectorAll('.plotly-graph-div')).every(d => d._fullLayout)",
                    timeout=30_000)
                plots = page.evaluate(CHECK_PLOTS)
                if key == "empty":
                    assert plots == []
                elif key == "ragged":
                    assert plots and all(p["plotted"] and p["traces"] > 0 for p in plots), plots
                else:
                    assert len(plots) >= 8
                    for p in plots:
                        assert p["plotted"] and p["traces"] > 0 and not p["empty"], p
                        assert p["drawn"] > 0 and p["svgPaths"] > 0, p
                    before = page.evaluate(AXIS_STATE)
                    assert page.evaluate(PRESS_EVERYTHING) >= 10
                    state = {p["id"]: p for p in page.evaluate(AXIS_STATE)}
                    for p in before:  # step axes went log, per-head traces showed, sliders moved to step 0
                        if p["xtype"] == "linear":
                            assert state[p["id"]]["xtype"] == "log", p
                        if "attention" in p["id"] and "cmp" not in p["id"]:
                            assert state[p["id"]]["visible"] > p["visible"], p
                        if "heat" in p["id"]:
                            assert "step 0 (random init)" in state[p["id"]]["title"], state[p["id"]]
                    after = page.evaluate(CHECK_PLOTS)
                    assert len(after) == len(plots) and all(p["drawn"] > 0 for p in after), after
                assert page.locator("h2", has_text="Summary").count() == 1
                assert attempted == [], f"the report tried the network: {attempted}"
                assert errors == [], f"JavaScript errors: {errors}"
                ctx.close()
        finally:
            browser.close()


def make_ragged_run(path: Path) -> Path:
    """Half-written results: missing fields, None values, a probe only at step 0, odd config values."""
    write_training_config(RunFolder(path), "bfs", {"n_nodes": 7}, variant="heat", n_layers=1)
    with RunFolder(path).store() as st:
        st.log(0, {"train/loss": 2.3, "eval/exact_match": None, "attn/entropy/blocks.0.attn.hook_pattern": 0.99})
        st.log(10, {"train/loss": 2.2, "eval/exact_match": 0.0, "attn/entropy/blocks.0.attn.hook_pattern": 0.98,
                    "grad/q/blocks.0.attn/H3": 1e-6})
        st.log_probes([(0, "queue", HOOKS[1], 4, "acc", 0.5), (0, "queue", HOOKS[1], 5, "acc", 0.52),
                       (0, "adj", HOOKS[0], 1, "mse", 3.0)])
        st.put("transition", "train/loss", [{"onset": 5}, {"plateau_start": None, "onset": None}])
        st.put("event", "5:transition", {"step": 5, "kind": "transition"})
        st.put("feature_class", "queue", {"class": "quiet"})
        st.put("ablation", "queue/mean", {"feature": "queue", "method": "mean", "ablated_acc": 0.1, "drop_ci": [1, None]})
    return path


def test_ragged_run_still_reports(tmp_path):
    run = make_ragged_run(tmp_path / "ragged")
    sentences = summarize(run)
    text = " ".join(sentences)
    assert "`bfs` (n_nodes=7)" in text and "heat" in text
    assert "Loss flat until step 5." in text and "`queue` (quiet): no decodable step recorded." in text
    assert "Ablating `queue` (mean): exact match ? → 10%." in text
    assert headline(run) == "Loss flat until step 5."
    html = write_report([run], tmp_path / "r.html").read_text(encoding="utf-8")
    assert "queue" in html and "No ablations" not in html
