"""The Eureka seed study for one GPU: every variant over K seeds through `quietlab eureka`'s recipe
(recipes/eureka.py run_eureka: a ViT variant's seeds packed into one vmapped computation on a GPU, the
CNN's one after another), written so that a run cut short keeps every variant it finished.

Writes into ``--out`` (at most four files, for a device whose returned folder is small):
- ``eureka_seeds.log``   every evaluation line as it comes, then after each variant the per-variant table
                         (success rate, median Eureka step, steps to 95% of the softmax baseline's final
                         accuracy and its ratio to softmax's own, final accuracy per seed) and one line per run;
- ``eureka_seeds.json``  the summary (recipes/eureka.py ``summarize``) plus each run's curves
                         (validation loss, accuracy, decision accuracy, train loss at the evaluations), the
                         configuration, device, torch version and wall times; rewritten after each variant;
- ``report.html``        the verb's report, when plotly is importable (it is not on the lab's GPU image).
The run folders (config.json, metrics.sqlite per run) go to ``--runs`` (default runs/eureka-seeds-TIME).

    python benchmarks/eureka_seeds.py --scale medium --steps 4000 --out OUT          # the lead's GPU run
    python benchmarks/eureka_seeds.py --scale small --seeds 2 --steps 20 --device cpu --out /tmp/x   # CPU smoke test
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from quietlab.recipes.eureka import DEFAULT_VARIANTS, MODEL_VARIANTS, SCALES, SUCCESS, learning_rates, run_eureka  # noqa: E402
from quietlab.runs import RunFolder, write_atomic  # noqa: E402

CURVES = ("eval/loss", "eval/acc", "eval/decision_acc", "train/loss")
PAPER_CLAIMS = ("the paper (Hoffmann et al., ICML 2024): the fixes reach 95% of the softmax baseline's accuracy in about "
                "20% of its training steps and succeed in more seeds; the CNN shows no plateau")


def run_curves(run_dir: str, eval_steps: set[int] | None = None) -> dict:
    """A run's curves from its store; the train loss only at the evaluation steps (it is logged every step)."""
    with RunFolder(run_dir).store() as store:
        out = {}
        for name in CURVES:
            steps, values = store.series(name)
            if name == "train/loss" and eval_steps is not None:
                kept = [i for i, s in enumerate(steps) if s in eval_steps]
                steps, values = [steps[i] for i in kept], [values[i] for i in kept]
            out[name] = {"steps": list(steps), "values": list(values)}
    return out


def table_lines(summary: dict) -> list[str]:
    def fmt(x, spec=",.0f"):
        return "-" if x is None else format(x, spec)

    base = summary["variants"].get("softmax", {}).get("median_steps_to_95")
    lines = [f"success: {summary['success_criterion']}; steps to 95%: first evaluation at 95% of the softmax "
             f"baseline's median final accuracy ({fmt(summary['baseline_final_acc'], '.3f')})",
             f"{'variant':<12} {'success':>8} {'Eureka step':>12} {'first dec>=75%':>15} {'steps to 95%':>13} "
             f"{'reached':>8} {'vs softmax':>11} {'final acc':>10}  final acc per seed"]
    for name, d in summary["variants"].items():
        ratio = None if base in (None, 0) or d["median_steps_to_95"] is None else d["median_steps_to_95"] / base
        lines.append(f"{name:<12} {d['successes']:>3}/{d['seeds']:<4} {fmt(d['median_eureka_step']):>12} "
                     f"{fmt(d['median_first_decision_step']):>15} {fmt(d['median_steps_to_95']):>13} "
                     f"{d['reached_95']:>3}/{d['seeds']:<4} {fmt(ratio, '.2f'):>11} {d['final_acc_median']:>10.3f}  "
                     + " ".join(f"{a:.3f}" for a in d["final_acc"]))
    for r in summary["runs"]:
        lines.append(f"  {r['variant']} seed {r['seed']}: final acc {r['final_acc']:.3f}, decision {r['final_decision_acc']:.3f}, "
                     f"success {'yes' if r['success'] else 'no'}, Eureka step {fmt(r['eureka_step'])}, first decision "
                     f">= {SUCCESS:.0%} at {fmt(r['first_decision_step'])}, 95% at {fmt(r['steps_to_95'])}, "
                     f"wall {r['wall_s']:.1f} s")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder for eureka_seeds.log, eureka_seeds.json (and report.html)")
    ap.add_argument("--runs", default=None, help="folder for the run folders (default runs/eureka-seeds-TIME)")
    ap.add_argument("--scale", default="medium", choices=sorted(SCALES), help="the recipe's scale (default medium)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds per variant, 0..K-1 (default 5)")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma list of {', '.join(MODEL_VARIANTS)}")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: the scale's)")
    ap.add_argument("--eval-every", type=int, default=None, help="steps between evaluations (default: the scale's)")
    ap.add_argument("--probe-evals", type=int, default=None, help="evaluations with CLS probes (default: the scale's)")
    ap.add_argument("--data", default=None, help="folder with mnist/ and fashion-mnist/ IDX files (paper scale)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads of this process (default: torch's)")
    ap.add_argument("--workers", type=int, default=None, help="CPU only: runs at once, one process of one thread each (default: one per core)")
    ap.add_argument("--lr", action="append", default=[], metavar="VARIANT=RATE",
                    help="a variant's peak learning rate instead of the scale's (repeatable), e.g. normsoftmax=1e-4")
    ap.add_argument("--beta", type=float, default=None, help="temperature: the study's multiplier β (default: the scale's)")
    args = ap.parse_args()

    if args.threads:
        from quietlab.train.threads import set_cpu_threads
        set_cpu_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(args.runs or f"runs/eureka-seeds-{time.strftime('%Y%m%d-%H%M%S')}")
    overrides = {"device": args.device, "data_dir": args.data}
    for key, value in (("steps", args.steps), ("eval_every", args.eval_every), ("probe_evals", args.probe_evals),
                       ("workers", args.workers)):
        if value is not None:
            overrides[key] = value
    if args.beta is not None:
        overrides["beta"] = args.beta
    if args.lr:
        try:
            overrides["lr"] = learning_rates(args.lr, SCALES[args.scale].lr)
        except ValueError as exc:
            ap.error(str(exc))
    log_file = (out / "eureka_seeds.log").open("a")
    t0 = time.perf_counter()

    def log(line: str) -> None:
        line = f"[{time.perf_counter() - t0:7.1f} s] {line}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    log(f"eureka seed study: scale {args.scale}, {args.seeds} seeds, variants {args.variants}, overrides "
        f"{ {k: v for k, v in overrides.items() if v is not None} }, device {name}, torch {torch.__version__}")
    log(PAPER_CLAIMS)

    def on_variant(summary: dict) -> None:
        eval_steps = set(range(0, summary["config"]["steps"] + 1, summary["config"]["eval_every"])) | {summary["config"]["steps"]}
        record = {**summary, "device_name": name, "torch_version": torch.__version__, "runs_folder": str(runs),
                  "curves": {f"{r['variant']}-seed{r['seed']}": run_curves(r["run_dir"], eval_steps) for r in summary["runs"]}}
        write_atomic(out / "eureka_seeds.json", json.dumps(record).encode())
        done = list(summary["variants"])
        log(f"after {done[-1]} ({summary['wall_s']:.1f} s so far; data: {summary['data_source']}):")
        for line in table_lines(summary):
            log(line)

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    report = importlib.util.find_spec("plotly") is not None
    try:
        summary = run_eureka(args.scale, args.seeds, variants, runs, overrides, log=log, on_variant=on_variant, report=report)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if report:
        (out / "report.html").write_bytes(Path(summary["report"]).read_bytes())
    else:
        log("plotly is not installed here: no report.html (eureka_seeds.json holds every curve)")
    log(f"done in {summary['wall_s']:.1f} s")


if __name__ == "__main__":
    main()
