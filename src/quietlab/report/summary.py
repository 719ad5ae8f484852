"""What a run's data says, in plain sentences.

Every number comes from the run's data (``rundata.py``); no number is written in. ``summarize(run)`` gives
the sentences the HTML report puts at its top and ``quietlab demo`` prints in the terminal;
``headline(run)`` one sentence with the main finding; ``compare(runs)`` sentences across runs. The
``fmt_*`` helpers write numbers the way the sentences and the report's tables do.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..models.hooks import hook_label
from ..monitor.features import LOSS_CURVES, main_transition
from .rundata import (CLASS_ORDER, RunData, feature_curve, finite, head_metrics, load_run, loss_curve_name,
                      main_transitions, num, ordered_ablations, probe_features, steps_to_fraction, transition_for)


def layer_text(layer) -> str:
    """A hook name as "block 1 output `blocks.1.hook_resid_post`"; other text (e.g. "best per position")
    as it is."""
    if layer is None:
        return ""
    label = hook_label(layer)
    return f"{label} `{layer}`" if label != str(layer) else label


def fmt_step(s) -> str:
    return f"{int(round(s)):,}" if finite(s) else "?"


def fmt_pct(x) -> str:
    """An accuracy given as a fraction (0.99), written as a percentage ("99%")."""
    if not finite(x):
        return "?"
    v = 100.0 * x
    if v == 0 or v == 100 or (abs(v) >= 10 and not 99 < v < 100):
        return f"{v:.0f}%"
    return f"{v:.1f}%"


def fmt_points(v) -> str:
    """A number already in percent (a drop of 87.9), written "88%"."""
    if not finite(v):
        return "?"
    return f"{v:.0f}%" if abs(v) >= 10 or v == 0 else f"{v:.1f}%"


def fmt_num(v) -> str:
    if not finite(v):
        return "?"
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.2e}"
    return f"{v:.3g}"


def fmt_score(v, metric: str) -> str:
    return fmt_pct(v) if metric.startswith("acc") else (f"R² {v:.2f}" if finite(v) else "?")


def fmt_big(v) -> str:
    if not finite(v):
        return "?"
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.0f}"


def _run_sentence(rd: RunData) -> str:
    """Task and its sizes, model size and attention, seed; then how long it trained."""
    watched = rd.config.get("watch") if isinstance(rd.config, dict) else None
    if rd.run_config is not None:
        text = rd.run_config.describe()
    elif isinstance(watched, dict):  # a run of quietlab.watch on someone else's model
        taps = ", ".join(f"`{t}`" for t in watched.get("taps", []))
        text = f"`{watched.get('model', 'a model')}` watched by `quietlab.watch` at {taps or 'its taps'}"
    elif rd.config_problem:
        text = f"Run `{rd.name}` ({rd.config_problem})"
    else:
        text = f"Run `{rd.name}`"
    steps = [s for name in ("train/loss", "eval/loss") for s in rd.curve(name)[0]]
    if steps:
        text += f": trained {fmt_step(max(steps))} steps"
        extra = []
        tok = rd.curve("train/tokens")[1]
        if tok:
            extra.append(f"{fmt_big(tok[-1])} tokens")
        flops = rd.curve("train/flops")[1]
        if flops:
            extra.append(f"{flops[-1]:.2e} FLOPs")
        if extra:
            text += " (" + ", ".join(extra) + ")"
    elif not rd.has_store:
        text += ": nothing logged yet (no metrics.sqlite)"
    else:
        text += ": no training metrics logged"
    return text + "."


def _loss_sentences(rd: RunData) -> list[str]:
    curve, transitions = main_transitions(rd)
    name = curve or loss_curve_name(rd)
    steps, values = rd.curve(name) if name else ([], [])
    out = []
    for i, t in enumerate(transitions):
        label = "Loss" if curve in LOSS_CURVES else f"`{curve}`"
        prefix = "" if len(transitions) == 1 else f"Transition {i + 1}: "
        start = t.get("plateau_start")
        flat = f"flat from step {fmt_step(start)} to {fmt_step(t['onset'])}" if finite(start) else f"flat until step {fmt_step(t['onset'])}"
        if finite(t.get("level_before")):
            flat += f" (≈{fmt_num(t['level_before'])})"
        text = f"{prefix}{label} {flat}"
        if finite(t.get("level_after")) or finite(t.get("end")):
            text += ", then dropped"
            after = t.get("level_after")
            if finite(after) and after <= 0 and name in LOSS_CURVES and steps and finite(t.get("end")):
                # the fitted logistic's floor can undershoot a loss that ends near 0: say what was measured
                after = values[min(range(len(steps)), key=lambda j: abs(steps[j] - t["end"]))]
            if finite(after):
                text += f" to {fmt_num(after)}"
            if finite(t.get("end")):
                text += f" by step {fmt_step(t['end'])}"
        out.append(text + ".")
    if not transitions:
        if steps:
            went = f"{name} went from {fmt_num(values[0])} at step {fmt_step(steps[0])} to {fmt_num(values[-1])} at step {fmt_step(steps[-1])}"
            if curve is not None:
                out.append(f"No plateau-then-drop transition was detected in {curve}; {went}.")
            else:
                out.append(f"Transition detection has not run on this run; {went}.")
        plateaus = [e for e in rd.events if e.get("kind") == "plateau" and e.get("text")]
        if plateaus:
            out.append(f"Latest event: {plateaus[-1]['text'].rstrip('.')}.")
    em_steps, em = rd.curve("eval/exact_match")
    if em:
        text = f"Final exact-match accuracy {fmt_pct(em[-1])} at step {fmt_step(em_steps[-1])}"
        best = max(em)
        if best > em[-1] + 0.02:
            text += f" (best {fmt_pct(best)})"
        given = rd.curve("eval/exact_match_given_eq")[1]
        if given:  # the paper preset: the model also had to emit '='
            text += f", the model emitting `=` itself as the paper scores it; {fmt_pct(given[-1])} with `=` given"
        tok = rd.curve("eval/token_acc")[1]
        if tok:
            text += f"; token accuracy {fmt_pct(tok[-1])}"
        out.append(text + ".")
    return out


def _feature_sentence(rd: RunData, feature: str, fc: dict, transitions: list[dict]) -> str:
    cls = fc.get("class")
    metric = "r2" if fc.get("metric") == "r2" else "acc"
    ds = fc.get("decodable_step")
    layer = fc.get("best_layer")
    before, final, base = fc.get("acc_before_transition"), fc.get("acc_final"), fc.get("baseline_acc")
    if metric == "r2":
        before = fc.get("r2_before_transition", before)
        final = fc.get("r2_final", final)
        base = fc.get("baseline_r2", base)
    where = layer_text(layer) if layer is not None else "its best layer"
    if cls != "absent" and not finite(ds):
        return f"`{feature}`" + (f" ({cls})" if cls else "") + ": no decodable step recorded."
    if not finite(ds):
        text = f"`{feature}` never became decodable"
        if finite(final):
            text += f": probe {fmt_score(final, metric)} at the end"
            if finite(base):
                text += f" vs {fmt_score(base, metric)} at random init"
        return text + "."
    text = f"`{feature}`" + (f" ({cls})" if cls else "") + f" decodable from step {fmt_step(ds)}"
    t = transition_for(transitions, ds)
    if t is not None:
        lead = t["onset"] - ds
        if lead > 0:
            text += f", {fmt_step(lead)} steps before the drop"
        elif lead == 0:
            text += ", as the drop begins"
        else:
            text += f", {fmt_step(-lead)} steps after the drop begins"
    details = []
    if finite(before):
        details.append(f"probe {fmt_score(before, metric)} just before the transition")
    if finite(base):
        details.append(f"{fmt_score(base, metric)} at random init")
    if finite(final):
        details.append(f"{fmt_score(final, metric)} at the end ({where})")
    if details:
        text += ": " + ", ".join(details)
    return text + "."


def _probe_only_sentence(rd: RunData, feature: str) -> str | None:
    c = feature_curve(rd, feature)
    if c is None or not c.values:
        return None
    text = f"`{feature}`: probe {fmt_score(c.values[-1], c.metric)} at step {fmt_step(c.steps[-1])} ({layer_text(c.layer)})"
    if c.baseline is not None:
        text += f" vs {fmt_score(c.baseline, c.metric)} at random init"
    return text + "; not classified as quiet or loud (no feature_class result)."


def _paper_feature_sentence(feature: str, pc: dict) -> str:
    """A feature classified by the study's metric (``feature_class_paper``)."""
    metric = "MSE" if pc.get("metric") == "mse" else "log-loss"
    text = f"`{feature}` by the paper's metric ({pc.get('class', '?')})"
    if finite(pc.get("decodable_step")):
        text += f": probe test {metric} below the random model's from step {fmt_step(pc['decodable_step'])}"
    else:
        text += f": probe test {metric} never below the random model's"
    details = []
    if finite(pc.get("loss_before_transition")):
        details.append(f"{fmt_num(pc['loss_before_transition'])} just before the transition")
    if finite(pc.get("loss_final")):
        details.append(f"{fmt_num(pc['loss_final'])} at the end")
    if finite(pc.get("baseline_loss")):
        details.append(f"random model {fmt_num(pc['baseline_loss'])}")
    if details:
        text += " (" + ", ".join(details) + "; geometric mean over positions, layer chosen by probe-train loss)"
    return text + "."


def fmt_ci(ci) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(finite(x) for x in ci):
        return f"95% CI {ci[0]:.0f}–{ci[1]:.0f}%" if max(abs(ci[0]), abs(ci[1])) >= 10 else f"95% CI {ci[0]:.1f}–{ci[1]:.1f}%"
    return ""


def _ablation_sentence(a: dict) -> str:
    feature, method = a.get("feature", "?"), a.get("method")
    where = ", ".join(
        x for x in (method, layer_text(a.get("layer")),
                    f"{a['n_examples']:,} examples" if finite(a.get("n_examples")) else "") if x
    )
    text = f"Ablating `{feature}`" + (f" ({where})" if where else "") + ": exact match "
    text += f"{fmt_pct(a.get('baseline_acc'))} → {fmt_pct(a.get('ablated_acc'))}"
    inner = ", ".join(x for x in (f"drop {fmt_points(a['drop_pct'])}" if finite(a.get("drop_pct")) else "", fmt_ci(a.get("drop_ci"))) if x)
    if inner:
        text += f" ({inner})"
    if finite(a.get("control_acc")):
        n = f"{a['n_controls']} " if finite(a.get("n_controls")) else ""
        text += f"; {n}random directions: {fmt_pct(a['control_acc'])}"
        inner = ", ".join(
            x for x in (f"drop {fmt_points(a['control_drop_pct'])}" if finite(a.get("control_drop_pct")) else "",
                        fmt_ci(a.get("control_drop_ci"))) if x
        )
        if inner:
            text += f" ({inner})"
    if finite(a.get("edit_size")):
        text += f"; mean ‖Δx‖ {fmt_num(a['edit_size'])}"
        if finite(a.get("control_edit_size")):
            text += f", random directions {fmt_num(a['control_edit_size'])}"
    if finite(a.get("baseline_acc_given_eq")):
        text += (f"; with `=` given: {fmt_pct(a['baseline_acc_given_eq'])} → {fmt_pct(a.get('ablated_acc_given_eq'))}"
                 f" (random directions {fmt_pct(a.get('control_acc_given_eq'))})")
    if a.get("protocol") == "paper":
        text += "; the paper's protocol"
    return text + "."


def absent_parts(rd: RunData) -> list[str]:
    """Plain sentences naming what this run does not hold."""
    out = []
    if not rd.has_store:
        return ["Nothing was logged: the run folder has no metrics.sqlite."]
    if not rd.curve("train/loss")[0]:
        out.append("No training loss was logged.")
    if not any(n.startswith("eval/") for n in rd.series):
        out.append("No evaluation metrics (eval/loss, eval/exact_match) were logged.")
    if not rd.transitions:
        out.append("Transition detection has not run (no transition results).")
    if not rd.probes:
        out.append("No probes were recorded (run `quietlab probe RUN`, or train with the monitor).")
    elif not rd.feature_classes:
        out.append("Probed features were not classified as quiet or loud (no feature_class results).")
    if not rd.ablations:
        out.append("No ablations were run (run `quietlab ablate RUN`).")
    if not head_metrics(rd):
        out.append("No attention statistics (attention entropy, Q/K/V gradient norms) were logged.")
    return out


def summarize(run: Path | str | RunData) -> list[str]:
    """Plain-language sentences about one run, every number computed from its store.

    In order: what was trained; the loss plateau and drop; final accuracy; each feature (quiet, loud or
    absent, and how long before the drop it became decodable); each ablation against its random
    control; then what the run does not hold."""
    rd = load_run(run)
    out = [_run_sentence(rd), *_loss_sentences(rd)]
    _, transitions = main_transitions(rd)
    classes = sorted(
        rd.feature_classes.items(),
        key=lambda kv: (CLASS_ORDER.get(kv[1].get("class"), 3), num(kv[1].get("decodable_step"), math.inf), kv[0]),
    )
    out += [_feature_sentence(rd, f, fc, transitions) for f, fc in classes]
    out += [_paper_feature_sentence(f, pc) for f, pc in sorted(rd.feature_classes_paper.items())]
    for f in probe_features(rd):
        if f not in rd.feature_classes and (s := _probe_only_sentence(rd, f)):
            out.append(s)
    out += [_ablation_sentence(a) for a in ordered_ablations(rd)]
    out += absent_parts(rd)
    return out


def headline(run: Path | str | RunData) -> str | None:
    """One sentence with the main finding, e.g. "Loss flat from step 300 to 2,900; `carry` decodable from
    step 1,100 (1,800 steps before the drop); ablating it: accuracy 99% → 12% (random directions: 98%)".
    The feature named is the quiet one whose ablation drops accuracy most, else the earliest quiet one.
    None when the run has no detected transition."""
    rd = load_run(run)
    _, transitions = main_transitions(rd)
    if not transitions:
        return None
    # the quiet feature whose ablation shows it matters most (the causal claim), else the earliest quiet one
    ablated = {a.get("feature"): num(a.get("drop_pct"), -math.inf) for a in rd.ablations.values()}
    quiet = sorted(
        ((f, fc) for f, fc in rd.feature_classes.items() if fc.get("class") == "quiet" and finite(fc.get("decodable_step"))),
        key=lambda kv: (-ablated.get(kv[0], -math.inf), kv[1]["decodable_step"]),
    )
    # the plateau named is the one the feature was quiet on; without one, the main transition's
    t = (transition_for(transitions, quiet[0][1]["decodable_step"]) if quiet
         else main_transition(transitions))
    parts = [
        (f"Loss flat from step {fmt_step(t['plateau_start'])} to {fmt_step(t['onset'])}" if finite(t.get("plateau_start"))
         else f"Loss flat until step {fmt_step(t['onset'])}")
    ]
    if quiet:
        f, fc = quiet[0]
        ds = fc["decodable_step"]
        lead = t["onset"] - ds
        piece = f"`{f}` decodable from step {fmt_step(ds)}"
        if lead > 0:
            piece += f" ({fmt_step(lead)} steps before the drop)"
        parts.append(piece)
        abl = [a for _, a in sorted(rd.ablations.items()) if a.get("feature") == f]
        if abl:
            a = max(abl, key=lambda a: num(a.get("drop_pct"), -math.inf))
            piece = f"ablating it: accuracy {fmt_pct(a.get('baseline_acc'))} → {fmt_pct(a.get('ablated_acc'))}"
            if finite(a.get("control_acc")):
                piece += f" (random directions: {fmt_pct(a['control_acc'])})"
            parts.append(piece)
    elif finite(t.get("end")):
        parts.append(f"dropped by step {fmt_step(t['end'])}")
    return "; ".join(parts) + "."


def compare(runs) -> list[str]:
    """Sentences comparing several runs: when each one's drop began, and the steps each needed to reach
    95% of the best final exact-match accuracy among them (the Eureka paper's speed measure)."""
    rds = [load_run(r) for r in runs]
    out = []
    onsets = []
    for rd in rds:
        _, ts = main_transitions(rd)
        onsets.append(f"`{rd.label}` at step {fmt_step(main_transition(ts)['onset'])}" if ts
                      else f"`{rd.label}` none detected")
    if any(rd.transitions for rd in rds):
        out.append("Drop begins: " + "; ".join(onsets) + ".")
    finals = [rd.curve("eval/exact_match")[1] for rd in rds]
    if sum(bool(f) for f in finals) >= 2:
        best = max(f[-1] for f in finals if f)
        target = 0.95 * best
        pieces = []
        for rd in rds:
            s = steps_to_fraction(rd, "eval/exact_match", target)
            pieces.append(f"`{rd.label}` {fmt_step(s)}" if s is not None else f"`{rd.label}` never")
        out.append(f"Steps to reach 95% of the best final exact match ({fmt_pct(best)} → {fmt_pct(target)}): " + "; ".join(pieces) + ".")
    return out
