"""The quiet-feature study's two ablations under `--preset paper`, over seeds: the carry on 16-bit addition
and the queue on 11-node BFS, with every feature of both tasks called quiet or loud by the study's metric
and by ours.

For each task, the seeds are trained together (``train_packed``: on a GPU one CUDA graph per step, the
forward compiled inside it) with the
paper preset: the study's tasks, model (PyTorch's default init, RMSNorm eps 1e-5, interleaved RoPE, SwiGLU
int(8d/3) rounded up to even), AdamW with weight decay on every parameter, fp32 (no TF32), its
learning-rate schedule. Then, for each run:

- exact match on 1,000 held-out examples with the paper's prompt (the model emits ``=``) and with ``=``
  given, at the last step, and whether training had stopped improving (the rule below);
- the ablation of the task's quiet feature at the last checkpoint by the study's protocol
  (``ablate_paper``): drop in accuracy (relative and in points) with its 95% interval, and 32 random
  controls;
- probes of every feature of the task by the study's protocol on checkpoints spread over the run
  (``probe_run``): quiet or loud by the study's metric (test log-loss of the layer chosen by probe-train
  loss, against a separately initialised random model) and by ours (probe accuracy against the run's own
  initialisation, with a margin and a 95% interval), both against the loss transition found in the
  run's training loss. These come last, so the headline figures are in the JSON however long the probes
  take: every run probes --probe-checkpoints of its checkpoints (``probe_checkpoints``: up to half of them
  inside the plateau before the transition its training loss shows, the rest spread over the run; checkpoints
  are written 12 per decade so that a plateau holds several). Which checkpoints are probed follows from the
  run's losses alone, never from how fast the machine is; each run's JSON names them.

Repeatability: torch's deterministic algorithms are on (``--no-deterministic`` turns them off); on an H200 two
runs of the BFS pack from scratch then give the same per-step losses bit for bit, where without them they part
within the first 13 steps (benchmarks/gpu_repeatability.py, 2026-12-04); a step costs 1.07x the
non-deterministic one (benchmarks/pack_step_profile.py; 1.22x before the model took its embedding's gradient
as a matrix product under them).

Training rule ("until exact match stops improving"): a fixed step cap with the paper's schedule (warm-up,
cosine to 0.1·lr over the cap), exact match evaluated every cap/40 steps; a run counts as converged when
the best exact match of the last quarter of its evaluations is no more than 0.5 points above the best
before it. A run that is still improving at the cap is reported as such.

Sizes (the study's grid: d_model a power of two, 4 or 16 layers, lr 1e-1 ... 1e-4, batch 8 or 64; which
size the study ablated is not in its code, PAPER_PROTOCOL §4-5): 4 layers, d_model 128, lr 1e-3, batch 64;
addition 16 bits, 6,000 steps; BFS 11 nodes, 72,000 steps (at 12,000, 24,000 and 36,000 most seeds
were still improving; at 48,000, four of nine seed-runs over three sessions had stopped, from seeds 0, 1
and 6: README;
72,000 steps is about 880 s of H200 training for the three, packed: two calls, as below). Each option
can be changed.

    python benchmarks/paper_ablation.py --out results/paper_ablation           # on a GPU: the full run
    python benchmarks/paper_ablation.py --out /tmp/tiny --tiny                  # on a CPU: every stage, tiny
    python benchmarks/paper_ablation.py --out OUT --run-dir RUNS --stop-after-s 540   # exit 3 ...
    python benchmarks/paper_ablation.py --out OUT --run-dir RUNS --resume                # ... then finish

On a lent GPU machine RUNS must outlive the call: a folder outside the repository (/tmp/runs), since the
repository's copy there is replaced at each call (a folder that .git/info/exclude ignores did not survive).

Writes OUT/paper_ablation.json (everything measured), OUT/paper_ablation.log (readable), and per run
OUT/TASK-sSEED.{config.json, metrics.sqlite.gz}; checkpoints stay in --run-dir.
A lent machine sends back files of at most 16 MiB: the three 72,000-step BFS runs' metrics.sqlite.gz
together are more (the tenth session lost its JSON in one archive of all of OUT); bring the JSON and log back
as they are and the metrics on their own, split if need be (split -b 15M).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch

#: the task of each ablation, its size and its quiet feature (PAPERS.md: carry −75.1%, queue −43.6%)
TASKS = {"addition": ({"n_bits": 16}, "carry", 75.1), "bfs": ({"n_nodes": 11}, "queue", 43.6)}
TINY_SIZES = {"addition": {"n_bits": 4}, "bfs": {"n_nodes": 5}}


def main() -> None:
    args = parser().parse_args()
    if args.deterministic:
        make_deterministic()
    run(args)


def make_deterministic() -> None:
    """torch's deterministic algorithms (ops without one warn: whether a run repeats is measured, by
    benchmarks/gpu_repeatability.py) and cuBLAS's fixed workspace; before CUDA starts, since cuBLAS reads
    the variable when it is initialised."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for the JSON, the log and each run's metrics")
    ap.add_argument("--run-dir", default=None, help="where the run folders (checkpoints) go (default OUT/runs-full)")
    ap.add_argument("--tasks", default="addition,bfs")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--addition-steps", type=int, default=6000)
    ap.add_argument("--bfs-steps", type=int, default=72000)
    ap.add_argument("--controls", type=int, default=32)
    ap.add_argument("--probe-checkpoints", type=int, default=8,
                    help="checkpoints probed per run for quiet/loud (spread over the run's checkpoints)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--resume", action="store_true",
                    help="continue the runs in --run-dir where an interrupted call (Ctrl-C, timeout -s INT) left "
                         "them (exact resume: the same result as one uninterrupted call; train_s is then this call's)")
    ap.add_argument("--stop-after-s", type=float, default=None,
                    help="stop training after this many seconds with a checkpoint (exit status 3), to be finished "
                         "by the same command with --resume: a run longer than one call allows, in two calls")
    ap.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                    help="torch's deterministic algorithms (and CUBLAS_WORKSPACE_CONFIG=:4096:8), on by default: on an "
                         "H200 the same seed then trains the same run bit for bit, for 1.07x a step "
                         "(benchmarks/gpu_repeatability.py, pack_step_profile.py; without them the pack's losses "
                         "part at step 3 to 13)")
    ap.add_argument("--tiny", action="store_true", help="tiny tasks, model and probe sets: every stage on a CPU in seconds")
    return ap


def settings(args) -> dict:
    """Per task: TrainConfig keywords, the ablated feature, the paper's drop and the probe-set split."""
    tiny = args.tiny
    out = {}
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        if task not in TASKS:
            raise SystemExit(f"--tasks: {task!r} is not one of {', '.join(TASKS)}")
        sizes, feature, paper_drop = TASKS[task]
        steps = 20 if tiny else getattr(args, f"{task}_steps")
        cfg = dict(task=task, task_sizes=TINY_SIZES[task] if tiny else sizes, preset="paper",
                   d_model=16 if tiny else args.d_model, n_layers=2 if tiny else args.layers, n_heads=4,
                   lr=1e-2 if tiny else args.lr, batch_size=16 if tiny else args.batch_size, steps=steps,
                   eval_every=max(1, steps // 40), eval_per_decade=0, eval_examples=100 if tiny else 1000,
                   checkpoint_every=max(1, steps // 10), checkpoint_per_decade=12, device=args.device,
                   compile=not tiny and torch.cuda.is_available())
        out[task] = {"cfg": cfg, "feature": feature, "paper_drop_pct": paper_drop,
                     "split": (120, 30) if tiny else None, "controls": 2 if tiny else args.controls,
                     "probe_checkpoints": 3 if tiny else args.probe_checkpoints}
    return out


def converged(steps: list[int], em: list[float]) -> dict:
    """The training rule's verdict from the exact-match curve (see the module docstring)."""
    n = len(em)
    if n < 4:
        return {"converged": None, "last_improvement_step": None, "note": "too few evaluations to tell"}
    cut = n - max(1, n // 4)
    best_before, best_last = max(em[:cut]), max(em[cut:])
    best = -1.0
    last_improvement = steps[0]
    for s, v in zip(steps, em):
        if v > best + 0.005:
            best, last_improvement = v, s
    return {"converged": bool(best_last <= best_before + 0.005), "last_improvement_step": int(last_improvement),
            "best_exact_match": float(max(em)), "best_before_last_quarter": float(best_before),
            "best_in_last_quarter": float(best_last)}


def run(args) -> None:
    from quietlab.interventions.ablation import ablate_paper
    from quietlab.monitor.features import main_transition, run_transitions
    from quietlab.monitor.monitor import probe_run
    from quietlab.runs import RunFolder
    from quietlab.train.checkpoint import list_checkpoints, load_run
    from quietlab.train.loop import TrainConfig, TrainingInterrupted
    from quietlab.train.packed import train_packed

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_root = Path(args.run_dir) if args.run_dir else out / "runs-full"
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    t_start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() and args.device in ("auto", "cuda") else \
        (args.device if args.device != "auto" else "cpu")
    summary = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
               "torch": torch.__version__, "seeds": seeds, "tiny": args.tiny, "training_rule": TRAINING_RULE,
               "deterministic": args.deterministic,
               "tasks": {}}
    lines: list[str] = []

    def log(text: str) -> None:
        stamp = f"[{time.perf_counter() - t_start:7.1f} s] "
        print(stamp + text, flush=True)
        lines.append(stamp + text)

    def save() -> None:
        summary["wall_s"] = time.perf_counter() - t_start
        (out / "paper_ablation.json").write_text(json.dumps(summary, indent=1, default=_plain))
        (out / "paper_ablation.log").write_text("\n".join(lines) + "\n" + "\n".join(table(summary)) + "\n")

    if args.stop_after_s:
        # the interrupt that Ctrl-C gives, to this process alone: training stops at the next step with a
        # checkpoint (exact resume: where it stops changes nothing that is measured)
        timer = threading.Timer(args.stop_after_s, os.kill, (os.getpid(), signal.SIGINT))
        timer.daemon = True
        timer.start()
    specs = settings(args)
    runs = []  # (task, seed, run_dir, result dict), in the order they are probed
    for task, spec in specs.items():  # first the headline figures: training, exact match, the ablation
        cfgs = [TrainConfig(**spec["cfg"], seed=s) for s in seeds]
        dirs = [run_root / f"{task}-s{s}" for s in seeds]
        for d in dirs:
            if d.exists() and not args.resume:
                shutil.rmtree(d)
        resumed_from = ""
        if args.resume:
            if not any(d.exists() for d in dirs):  # training from scratch would be a silent waste of a call
                raise SystemExit(f"--resume: no run folder {task}-sSEED under {run_root}; pass the --run-dir of "
                                 f"the interrupted call (on a lent machine, one outside the repository, e.g. /tmp/runs)")
            last = [max((s for s, _ in RunFolder(d).checkpoints()), default=0) if d.exists() else 0 for d in dirs]
            resumed_from = f" (resuming; last checkpoints at steps {', '.join(map(str, last))})"
        t0 = time.perf_counter()
        log(f"{task}: training {len(seeds)} seeds packed, {spec['cfg']['steps']} steps each{resumed_from}")
        try:
            # packs hold themselves to kernels right under vmap
            finals = train_packed(cfgs, dirs, progress=False, resume=args.resume)
        except TrainingInterrupted as stop:
            log(f"{task}: {stop}; run this command again with --resume to finish")
            save()
            raise SystemExit(3)
        train_s = time.perf_counter() - t0
        task_out = {"config": {k: v for k, v in spec["cfg"].items() if k not in ("device",)},
                    "feature": spec["feature"], "paper_drop_pct": spec["paper_drop_pct"], "train_s": train_s,
                    "resumed": args.resume,
                    "packed": len(seeds), "runs": {}}
        summary["tasks"][task] = task_out
        log(f"{task}: trained {len(seeds)} seeds packed in {train_s:.1f} s ({spec['cfg']['steps']} steps each)")
        for seed, run_dir, final in zip(seeds, dirs, finals):
            with RunFolder(run_dir).store(readonly=True) as store:
                steps, em = store.series("eval/exact_match")
                em_eq = store.series("eval/exact_match_given_eq")[1]
                ctx = RunFolder(run_dir).read_config()["resolved"].get("ctx")
            r = {"final": {k: final[k] for k in ("eval/exact_match", "eval/exact_match_given_eq", "eval/loss",
                                                 "train/loss", "train/flops") if k in final},
                 "ctx": ctx, "exact_match_curve": list(zip(steps, em, em_eq)), **converged(steps, em)}
            task_out["runs"][str(seed)] = r
            runs.append((task, seed, run_dir, r))
            log(f"  seed {seed}: exact match {final['eval/exact_match']:.1%} (model emits '='), "
                f"{final.get('eval/exact_match_given_eq', float('nan')):.1%} with '=' given; "
                f"converged {r['converged']} (last improvement at step {r['last_improvement_step']})")
            t1 = time.perf_counter()  # the ablation at the last checkpoint, by the study's protocol
            model, task_obj, cfg, step = load_run(run_dir, device=device)
            a = ablate_paper(model, task_obj, spec["feature"], probe_seed=cfg.seed, n_controls=spec["controls"],
                             seed=cfg.seed, paper_split=spec["split"])
            with RunFolder(run_dir).store() as store:
                store.put("ablation", f"{spec['feature']}/boundary", {**a.to_dict(), "step": step}, step=step)
            r["ablation"] = {**a.to_dict(), "seconds": time.perf_counter() - t1}
            log(f"  seed {seed}: ablating {spec['feature']}: {a.baseline_acc:.1%} -> {a.ablated_acc:.1%}, drop "
                f"{a.drop_pct:.1f}% [{a.drop_ci[0]:.1f}, {a.drop_ci[1]:.1f}] ({a.drop_points:.1f} points "
                f"[{a.drop_points_ci[0]:.1f}, {a.drop_points_ci[1]:.1f}]); {a.n_controls} random controls "
                f"{a.control_acc:.1%} [{a.control_acc_ci[0]:.1%}, {a.control_acc_ci[1]:.1%}], drop "
                f"{a.control_drop_pct:.1f}%; with '=' given {a.baseline_acc_given_eq:.1%} -> {a.ablated_acc_given_eq:.1%} "
                f"(controls {a.control_acc_given_eq:.1%}) ({time.perf_counter() - t1:.1f} s)")
            del model
            keep_metrics(out, task, seed, run_dir)
            save()
        task_out["drop_pct_per_seed"] = [task_out["runs"][str(s)]["ablation"]["drop_pct"] for s in seeds]
        task_out["control_drop_pct_per_seed"] = [task_out["runs"][str(s)]["ablation"]["control_drop_pct"] for s in seeds]
        save()

    # then quiet or loud: the study's probes on a fixed number of checkpoints, several inside the plateau
    for task, seed, run_dir, r in runs:
        spec = specs[task]
        with RunFolder(run_dir).store(readonly=True) as store:
            r["loss_transitions"], r["loss_transitions_curve"] = run_transitions(store)
        transition = main_transition(r["loss_transitions"])  # what run_transition gives
        probed = probe_checkpoints(list_checkpoints(run_dir), transition, spec["probe_checkpoints"])
        t2 = time.perf_counter()
        p = probe_run(run_dir, steps=probed, device=device, paper_split=spec["split"])
        r["probe_steps"], r["probe_s"] = probed, time.perf_counter() - t2
        r["transition"], r["transition_curve"] = p["main"], p["curve"]
        r["features"] = {name: {"ours": _ours(p["features"].get(name, {})),
                                "paper": _paper(p["paper_features"].get(name, {}))}
                         for name in p["feature_order"]}
        t = p["main"]
        log(f"{task} seed {seed}: probed {len(probed)} checkpoints in {r['probe_s']:.1f} s; transition "
            + (f"in {p['curve']} from step {t['onset']:.0f} to {t['end']:.0f}" if t else "none found"))
        for name, f in r["features"].items():
            log(f"    {name}: paper {f['paper'].get('class')} (log-loss before the drop "
                f"{_f(f['paper'].get('loss_before_transition'))}, final {_f(f['paper'].get('loss_final'))}, random "
                f"model {_f(f['paper'].get('baseline_loss'))}); ours {f['ours'].get('class')} (accuracy before "
                f"{_f(f['ours'].get('before'))}, final {_f(f['ours'].get('final'))}, random init "
                f"{_f(f['ours'].get('baseline'))})")
        keep_metrics(out, task, seed, run_dir)
        save()
    for line in table(summary):
        log(line)
    save()


def probe_checkpoints(checkpoints: list[int], transition, n: int) -> list[int]:
    """``n`` of a run's checkpoint steps to probe: up to half of them inside the plateau before the loss
    ``transition`` (``features.run_transition``'s dict, or None; where a quiet feature is told from a loud
    one, and where one checkpoint alone would decide the call), the rest spread over the whole run, the
    first and last always. Inside means before the step from which a feature first decodable there would
    count as loud (``features.guarded_start``: the onset moved back by half the drop's width), where the
    plateau has checkpoints before it; else up to the onset."""
    from quietlab.monitor.features import guarded_start
    from quietlab.train.schedule import thin

    inside = []
    if transition is not None:
        start = guarded_start(transition)
        inside = [c for c in checkpoints if transition["plateau_start"] <= c < start] or \
            [c for c in checkpoints if transition["plateau_start"] <= c <= transition["onset"]]
        inside = thin(inside, max(2, n // 2))[: n // 2]
    spread = [c for c in checkpoints if c not in inside]
    chosen = set(inside) | set(thin(spread, max(2, n - len(inside))))
    return sorted(chosen)


def keep_metrics(out: Path, task: str, seed: int, run_dir: Path) -> None:
    """The run's config.json and gzipped metrics.sqlite (curves, probe rows, ablation, classes) as
    OUT/TASK-sSEED.config.json and OUT/TASK-sSEED.metrics.sqlite.gz: flat, because a lent machine returns
    files at most two folders deep."""
    shutil.copy(run_dir / "config.json", out / f"{task}-s{seed}.config.json")
    with open(run_dir / "metrics.sqlite", "rb") as src, gzip.open(out / f"{task}-s{seed}.metrics.sqlite.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)


TRAINING_RULE = ("fixed step cap with the paper's schedule over it; exact match on 1,000 held-out examples every "
                 "cap/40 steps; converged when the best exact match of the last quarter of the evaluations is at most "
                 "0.5 points above the best before it")


def _ours(fc: dict) -> dict:
    m = fc.get("metric", "acc")
    return {"class": fc.get("class"), "metric": m, "decodable_step": fc.get("decodable_step"),
            "best_layer": fc.get("best_layer"), "before": fc.get(f"{m}_before_transition"),
            "final": fc.get(f"{m}_final"), "baseline": fc.get(f"baseline_{m}"), "note": fc.get("note")}


def _paper(pc: dict) -> dict:
    return {k: pc.get(k) for k in ("class", "metric", "decodable_step", "loss_before_transition", "loss_final",
                                   "baseline_loss", "score_before_transition", "score_final", "baseline_score",
                                   "final_layers", "steps", "losses", "note")}


def table(summary: dict) -> list[str]:
    """The readable summary: per task and seed, exact match, the ablation and the classes."""
    out = ["", f"device {summary['device']}, seeds {summary['seeds']}"]
    for task, t in summary["tasks"].items():
        out.append(f"{task} ({t['feature']}; the paper's drop {t['paper_drop_pct']}%): "
                   f"d_model {t['config']['d_model']} x {t['config']['n_layers']}, lr {t['config']['lr']}, "
                   f"batch {t['config']['batch_size']}, {t['config']['steps']} steps")
        out.append("  seed | exact (emits =) | exact (= given) | converged | ablated | drop % [95% CI] | "
                   "drop points | controls | control drop %")
        for seed, r in t["runs"].items():
            a = r.get("ablation")
            row = (f"  {seed:>4} | {r['final'].get('eval/exact_match', float('nan')):15.1%} | "
                   f"{r['final'].get('eval/exact_match_given_eq', float('nan')):15.1%} | {str(r.get('converged')):9} | ")
            if a:
                row += (f"{a['ablated_acc']:7.1%} | {a['drop_pct']:5.1f} [{a['drop_ci'][0]:.1f}, {a['drop_ci'][1]:.1f}] | "
                        f"{a['drop_points']:11.1f} | {a['control_acc']:8.1%} | {a['control_drop_pct']:.1f}")
            out.append(row)
        names = sorted({n for r in t["runs"].values() for n in r.get("features", {})})
        for name in names:
            cells = [f"{s}: paper {r['features'][name]['paper'].get('class')} / ours {r['features'][name]['ours'].get('class')}"
                     for s, r in t["runs"].items() if name in r.get("features", {})]
            out.append(f"  {name}: " + "; ".join(cells))
    return out


def _f(x) -> str:
    return "—" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.3f}"


def _plain(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON: {type(x).__name__}")


if __name__ == "__main__":
    main()
