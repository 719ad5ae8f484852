"""The Eureka study's proposed cause, checked on finished runs: while a ViT sits on the plateau, is its attention
near-uniform and are its W_Q and W_K gradients small against W_V's; do the fixes change that; and within a variant,
do the runs with larger Q/K gradients leave the plateau sooner?

Every Eureka run logs, at each evaluation, the mean |grad| of each head's rows of W_Q, W_K and W_V (after any Q/K
rescaling, as the study logs them) and each head's normalised attention entropy (`recipes/eureka.py`). This script
reads run folders (read-only) and prints, per run and per variant (medians over its runs):

- the escape: the first evaluation with decision accuracy >= 75% (the verb's success criterion), or none;
- on the run's plateau, ``recipes.eureka.plateau_diagnostics`` (what `quietlab eureka` reports): the evaluations
  after step 0 before decision accuracy first reaches 60%, and over them the median mean |grad| of W_Q and W_K
  (averaged) and of W_V over layers and heads, their ratio, and the mean attention entropy;
- the same over one fixed window of steps for every run (``--window``, default 250-500: at this scale no run of
  the pooled table had left the plateau at step 250), so that runs that leave early and late are compared over the
  same steps; and the Spearman rank correlation, over a variant's runs, between that window's Q/K gradient and the
  escape step (runs that never escape ranked last, tied).

The gradients are raw: a temperature β scales the logits' gradient by β, and AdamW's steps hardly depend on a
gradient's scale, so a difference in |grad| between variants is not by itself a difference in how fast W_Q and W_K
move. The ratio to W_V's gradient in the same run, and the ranks within a variant, do not depend on that scale.

    python benchmarks/eureka_mechanism.py RUNS_DIR [RUNS_DIR ...] [--window 250,500] [--json OUT.json]

RUNS_DIR: any folder holding Eureka run folders at any depth (``eureka_small_search.py --out OUT`` puts them under
OUT/runs/, ``quietlab eureka --out OUT`` under OUT/). ``--json`` also keeps each run's per-evaluation series (decision
accuracy, the layer-and-head means of the three gradients and of the entropy), everything the tables are made of.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from quietlab.recipes.eureka import SUCCESS, attention_series, first_step_at, plateau_diagnostics
from quietlab.runs import RunFolder

COLUMNS = ("qk_grad", "v_grad", "qk_over_v", "entropy")


def run_folders(roots: list[str]) -> list[Path]:
    found = sorted({p.parent for root in roots for p in Path(root).rglob("config.json")})
    return [p for p in found if (p / "metrics.sqlite").exists()]


def run_row(path: Path, window: tuple[int, int]) -> dict | None:
    folder = RunFolder(path)
    cfg = folder.read_config()
    if cfg.get("recipe") != "eureka" or cfg.get("variant") == "cnn":
        return None
    with folder.store(readonly=True) as store:
        series = attention_series(store)  # every figure here is computed from it; kept in the JSON
    dsteps, decision = series["decision_acc"]
    empty = {"evals": 0, **dict.fromkeys(COLUMNS)}
    plateau = plateau_diagnostics(series) or empty
    window_row = plateau_diagnostics(series, window) or empty
    return {"variant": cfg["variant"], "seed": cfg["seed"], "run_dir": str(path), "steps": cfg["steps"],
            "escape_step": first_step_at(dsteps, decision, SUCCESS), "final_decision_acc": decision[-1],
            "plateau": plateau, "window": window_row, "series": series}


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (ties given their mean rank)."""
    if len(x) < 3:
        return None
    ranks = []
    for a in (np.asarray(x, float), np.asarray(y, float)):
        order = np.argsort(a, kind="stable")
        r = np.empty(len(a))
        r[order] = np.arange(len(a), dtype=float)
        for value in np.unique(a):  # ties: their mean rank
            r[a == value] = r[a == value].mean()
        ranks.append(r)
    if ranks[0].std() == 0 or ranks[1].std() == 0:
        return None
    return float(np.corrcoef(*ranks)[0, 1])


def per_variant(rows: list[dict]) -> dict:
    out = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == variant]
        entry = {"runs": len(rs), "seeds": [r["seed"] for r in rs], "escaped": sum(r["escape_step"] is not None for r in rs)}
        for scope in ("plateau", "window"):
            for key in COLUMNS:
                values = [r[scope][key] for r in rs if r[scope][key] is not None]
                entry[f"{scope}_{key}"] = float(np.median(values)) if values else None
        for key in ("qk_over_v", "entropy"):
            values = [r["window"][key] for r in rs if r["window"][key] is not None]
            entry[f"window_{key}_range"] = [min(values), max(values)] if values else None
        escapes = [r["escape_step"] if r["escape_step"] is not None else r["steps"] + 1 for r in rs]
        qk = [r["window"]["qk_grad"] for r in rs]
        entry["spearman_window_qk_vs_escape"] = None if None in qk else spearman(qk, escapes)
        out[variant] = entry
    return out


def _fmt(x, digits=3) -> str:
    if x is None:
        return "—"
    return f"{x:.{digits}g}" if abs(x) < 1e-2 else f"{x:.{digits}f}"


def _cells(d: dict, scope: str) -> str:
    return (f"{_fmt(d[f'{scope}qk_grad'])} · {_fmt(d[f'{scope}v_grad'])} | {_fmt(d[f'{scope}qk_over_v'])} | "
            f"{_fmt(d[f'{scope}entropy'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("roots", nargs="+", help="folders holding Eureka run folders")
    ap.add_argument("--window", default="250,500", help="fixed window of steps, FIRST,LAST (default 250,500)")
    ap.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = ap.parse_args()
    lo, hi = (int(s) for s in args.window.split(","))
    rows = [r for r in (run_row(p, (lo, hi)) for p in run_folders(args.roots)) if r is not None]
    if not rows:
        raise SystemExit(f"no Eureka ViT run folders under {', '.join(args.roots)}")
    rows.sort(key=lambda r: (r["variant"], r["seed"]))
    variants = per_variant(rows)
    print(f"plateau: the evaluations after step 0 before decision accuracy first reaches 60%; window: steps {lo}-{hi}; "
          "grad: mean |grad| over layers and heads (Q/K: the mean of W_Q's and W_K's), median over the evaluations\n")
    head = ("grad Q/K · V | Q/K ÷ V | entropy")
    print(f"| variant | seed | escape (decision ≥ 75%) | plateau evals | plateau {head} | window {head} |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        escape = "—" if r["escape_step"] is None else f"{r['escape_step']:,}"
        flat = {f"p_{k}": v for k, v in r["plateau"].items()} | {f"w_{k}": v for k, v in r["window"].items()}
        print(f"| {r['variant']} | {r['seed']} | {escape} | {r['plateau']['evals']} | {_cells(flat, 'p_')} | "
              f"{_cells(flat, 'w_')} |")
    print(f"\n| variant (medians over runs) | runs | escaped | plateau {head} | window {head} | "
          "Spearman(window Q/K grad, escape step) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for variant, v in variants.items():
        print(f"| {variant} | {v['runs']} | {v['escaped']} | {_cells(v, 'plateau_')} | {_cells(v, 'window_')} | "
              f"{_fmt(v['spearman_window_qk_vs_escape'], 2)} |")
    print("\n| variant | window Q/K ÷ V, lowest–highest run | window entropy, lowest–highest run |")
    print("| --- | --- | --- |")
    for variant, v in variants.items():
        ranges = [v[f"window_{key}_range"] for key in ("qk_over_v", "entropy")]
        print(f"| {variant} | " + " | ".join("—" if r is None else f"{_fmt(r[0])}–{_fmt(r[1])}" for r in ranges) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"window": [lo, hi], "success": SUCCESS, "runs": rows,
                                               "variants": variants}, indent=1))


if __name__ == "__main__":
    main()
