"""Search for the `quietlab eureka --scale small` configuration: each trial trains one variant over seeds
through the recipe itself (recipes/eureka.py train_seeds, the same code the verb runs) with overrides of
the small scale, and logs every evaluation of every seed as it comes, plus a per-run line at the end.

    python benchmarks/eureka_small_search.py --out benchmarks/results/cpu-2026-12-02b/eureka_search \
        --trial 'variant=softmax seeds=0,1,2 patch_size=8 d_model=64 steps=1500' --trial '...'

A trial is space-separated key=value: ``variant``, ``seeds`` (comma list), ``threads`` (torch threads of this
process), ``workers`` (processes of one thread, one seed each; default 1 here) and any EurekaConfig field (ints, floats, ``lr`` = one peak rate for the variant, ``cnn_widths`` = comma list). Writes
OUT/search.log (every line printed) and OUT/search.jsonl (one record per run: its trial, wall time and
the evaluation curves); the run folders go to OUT/runs/TRIAL_INDEX/.

    python benchmarks/eureka_small_search.py --table OUT1/search.jsonl OUT2/search.jsonl

prints the searches' runs as one markdown table, a row per trial with its seeds gathered (trials that differ
only in their seeds share a row): how many learn the decision (final decision accuracy ≥ 75%, the verb's
criterion), the first evaluation at or above it per seed, and the final decision accuracy per seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from quietlab.monitor.probes import wilson_interval
from quietlab.recipes.eureka import SMALL, SUCCESS, EurekaConfig, first_step_at, load_task, train_variants
from quietlab.runs import RunFolder
from quietlab.train.threads import set_cpu_threads

FIELDS = {f.name: f for f in dataclasses.fields(EurekaConfig)}


def parse_trial(text: str) -> tuple[str, list[int], int, dict]:
    variant, seeds, threads, overrides = "softmax", [0], 1, {"workers": 1}
    for item in text.split():
        key, _, value = item.partition("=")
        if key == "variant":
            variant = value
        elif key == "seeds":
            seeds = [int(s) for s in value.split(",")]
        elif key == "threads":
            threads = int(value)
        elif key == "lr":
            overrides["lr"] = float(value)  # resolved into the variant's entry below
        elif key == "cnn_widths":
            overrides[key] = tuple(int(w) for w in value.split(","))
        elif key == "workers":
            overrides[key] = int(value)
        elif key in FIELDS:
            default = getattr(SMALL, key)
            if isinstance(default, bool) or default is None:
                overrides[key] = {"true": True, "false": False, "none": None}[value.lower()]
            else:
                overrides[key] = type(default)(value)
        else:
            raise SystemExit(f"unknown trial key {key!r}; allowed: variant, seeds, threads, lr, {', '.join(FIELDS)}")
    if "lr" in overrides:
        overrides["lr"] = {**SMALL.lr, variant: overrides["lr"]}
    return variant, seeds, threads, overrides


def table(paths: list[str], pool: bool = False, only: list[str] | None = None) -> list[str]:
    """Markdown rows of the runs in search.jsonl files: one per trial spec without its seeds. ``pool``: also
    without ``threads`` and ``workers`` (which change no result), records that lack their rate taken at the
    small scale's rate for their variant, and a 95% Wilson interval on the success rate. ``only``: these
    variants' runs alone."""
    ignored = ("seeds=", "threads=", "workers=") if pool else ("seeds=",)
    rows: dict[str, dict[int, dict]] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            r = json.loads(line)
            if only and r["variant"] not in only:
                continue
            spec = " ".join(item for item in r["spec"].split() if not item.startswith(ignored))
            lr = r.get("lr", SMALL.lr.get(r["variant"]) if pool else None)
            if lr is not None and " lr=" not in f" {spec}":  # the rate the trial ran at
                spec += f" (lr {lr:g})"
            if r["seed"] in rows.get(spec, {}):
                raise SystemExit(f"seed {r['seed']} of {spec!r} appears twice; pass each run once")
            rows.setdefault(spec, {})[r["seed"]] = r
    out = ["| trial (seeds gathered) | learn the decision (≥ 75%) | first evaluation ≥ 75%, per seed | "
           "final decision accuracy per seed |", "| --- | --- | --- | --- |"]
    for spec, runs in rows.items():
        seeds = sorted(runs)
        firsts, finals = [], []
        for seed in seeds:
            curve = runs[seed]["curves"]["eval/decision_acc"]
            first = first_step_at(curve["steps"], curve["values"], SUCCESS)
            firsts.append("—" if first is None else f"{first:,}")
            finals.append(f"{runs[seed]['final_decision_acc']:.3f}")
        won = sum(runs[seed]["final_decision_acc"] >= SUCCESS for seed in seeds)
        rate = f"{won}/{len(seeds)}"
        if pool:
            lo, hi = wilson_interval(np.array([won / len(seeds)]), np.array([len(seeds)]))
            rate += f" [{lo[0]:.2f}, {hi[0]:.2f}]"
        out.append(f"| {spec} (seeds {','.join(map(str, seeds))}) | {rate} | {' · '.join(firsts)} | "
                   f"{' '.join(finals)} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trial", action="append", help="one trial: key=value ... (repeatable)")
    ap.add_argument("--out", help="folder for search.log, search.jsonl and the run folders")
    ap.add_argument("--table", nargs="+", metavar="JSONL", help="print these searches' runs as a markdown table")
    ap.add_argument("--pool", action="store_true",
                    help="with --table: gather runs across threads/workers settings, with a 95%% interval on the rate")
    ap.add_argument("--only", default=None, help="with --table: comma list of the variants to include")
    args = ap.parse_args()
    if args.table:
        print("\n".join(table(args.table, args.pool, args.only.split(",") if args.only else None)))
        return
    if not (args.trial and args.out):
        ap.error("--trial and --out are required (or --table JSONL ...)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_file = (out / "search.log").open("a")

    def log(line: str) -> None:
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    first = len(list((out / "runs").glob("*"))) if (out / "runs").exists() else 0
    for index, text in enumerate(args.trial, start=first):
        variant, seeds, threads, overrides = parse_trial(text)
        set_cpu_threads(threads)
        cfg = dataclasses.replace(SMALL, device="cpu", **overrides)
        task = load_task(cfg)
        log(f"== trial {index}: {text} (torch threads {threads}, {time.strftime('%H:%M:%S')})")
        t0 = time.perf_counter()
        (_, results), = train_variants(cfg, [variant], seeds, out / "runs" / str(index), task, log)
        wall = time.perf_counter() - t0
        with (out / "search.jsonl").open("a") as f:
            for r in results:
                with RunFolder(r["run_dir"]).store(readonly=True) as store:
                    curves = {name: store.series(name) for name in ("eval/decision_acc", "eval/acc", "eval/loss")}
                record = {"trial": index, "spec": text, "variant": variant, "lr": cfg.lr[variant], "seed": r["seed"],
                          "trial_wall_s": wall,
                          "final_acc": r["eval/acc"], "final_decision_acc": r["eval/decision_acc"],
                          "curves": {k: {"steps": s, "values": v} for k, (s, v) in curves.items()}}
                f.write(json.dumps(record) + "\n")
                d = curves["eval/decision_acc"]
                log(f"   trial {index} {variant} seed {r['seed']}: final acc {r['eval/acc']:.3f} decision "
                    f"{r['eval/decision_acc']:.3f}; decision curve " + " ".join(f"{v:.2f}" for v in d[1]))
        log(f"   trial {index} wall {wall:.1f} s for {len(seeds)} seed(s)")


if __name__ == "__main__":
    main()
