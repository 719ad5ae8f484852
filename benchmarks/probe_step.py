"""One Monitor probe step, taken apart: what a probe step costs and where the time goes, for this code and
for the code before issue 16's probe-speed work (commit 97f9eea, kept in benchmarks/baseline/), side by side.

Builds the Monitor's probe set for a task (``--examples``, default the Monitor's 2,000; with ``--run``
the run's own, drawn with its seed), then times, over ``--repeats`` probe steps: capturing the residual
stream, fitting every feature's probes with each arm (cold, and warm-started from that arm's previous
step's probes as the Monitor does; the arms take turns going first), and writing the rows to a metrics
store. Between steps every weight of the model moves by ``--drift`` (5%) of its tensor's standard
deviation, a stand-in for the training between two checkpoints: a warm start from the same model's own
probes would cost next to nothing and flatter the figure. The arms are different solvers stopped at a
tolerance, so the output also says how far apart their test accuracies are. ``--profile`` counts, per
arm, the operations of one warm fit: kernel launches on a GPU (where a probe step is bound by them),
operators called from Python on a CPU (a proxy for them), and the host syncs.

    .venv/bin/python benchmarks/probe_step.py --task bfs
    python benchmarks/probe_step.py --task bfs --device cuda --profile --out probe_step_bfs_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="bfs")
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--run", default=None, help="a trained run's last checkpoint instead of a random model")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--drift", type=float, default=0.05,
                    help="between probe steps, each weight moves by this fraction of its tensor's standard deviation")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-baseline", action="store_true", help="time this code only")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--out", default=None, help="also write the figures here as JSON")
    args = ap.parse_args()

    import numpy as np
    import torch

    from quietlab.models import Transformer, TransformerConfig
    from quietlab.monitor.monitor import probe_set, trim_to_features
    from quietlab.monitor.probes import capture_layers, fit_features, split_probe_set
    from quietlab.runs import RunStore
    from quietlab.tasks import get_task

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    arms = {"this code": fit_features}
    if not args.no_baseline:
        from baseline.probes_97f9eea import fit_features as fit_features_97f9eea

        arms["97f9eea"] = fit_features_97f9eea

    if args.threads:
        from quietlab.train.threads import set_cpu_threads
        set_cpu_threads(args.threads)
    seed = 0
    if args.run:
        from quietlab.train import load_run

        model, task, cfg, _ = load_run(args.run, device=args.device)
        seed = cfg.seed
    else:
        task = get_task(args.task)
        torch.manual_seed(0)
        model = Transformer(TransformerConfig(vocab_size=len(task.vocab), seq_len=task.seq_len, d_model=args.d_model,
                                              n_layers=args.layers, n_heads=4)).to(args.device).eval()
    batch = probe_set(task, args.examples, seed)
    tokens, feats = trim_to_features(batch.tokens, batch.features)
    tr, te = split_probe_set(len(tokens), 0.2, seed=seed)
    cuda = torch.device(args.device).type == "cuda"

    def timed(fn):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    kw = {"max_iter": 60}  # as the Monitor fits
    acts, _ = timed(lambda: capture_layers(model, tokens))
    previous = {name: fit(acts, feats, tr, te, **kw) for name, fit in arms.items()}  # also the warm-up
    store = RunStore(tempfile.mkdtemp(prefix="quietlab-probe-step-") + "/metrics.sqlite")
    seconds = {"capture": [], "store": []}
    for name in arms:
        seconds[f"fit cold, {name}"], seconds[f"fit warm, {name}"] = [], []
    gen = torch.Generator(device=args.device).manual_seed(0)
    for step in range(args.repeats):
        with torch.no_grad():  # the next "checkpoint": every weight moved by --drift of its tensor's spread
            for p in model.parameters():
                if p.numel() > 1:
                    p.add_(torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype) * (args.drift * p.std()))
        acts, dt = timed(lambda: capture_layers(model, tokens))
        seconds["capture"].append(dt)
        for name in (list(arms) if step % 2 == 0 else list(arms)[::-1]):
            fit = arms[name]
            cold, dt = timed(lambda: fit(acts, feats, tr, te, **kw))
            seconds[f"fit cold, {name}"].append(dt)
            warm, dt = timed(lambda: fit(acts, feats, tr, te, init=previous[name], **kw))
            seconds[f"fit warm, {name}"].append(dt)
            previous[name] = warm
        rows = [r for name, res in previous["this code"].items() for r in res.rows(step, name)]
        _, dt = timed(lambda: store.log_probes(rows))
        seconds["store"].append(dt)
    ours = previous["this code"]
    n_pairs = sum(len(r.pairs) for r in ours.values())
    where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"{task!r}, {'run ' + args.run if args.run else 'random-init model'}, {where}: {len(tokens)} probe "
          f"examples, {n_pairs} (feature, layer, position) probes, {len(rows)} store rows")
    out = {"task": repr(task), "run": args.run, "device": where, "examples": len(tokens), "pairs": n_pairs,
           "repeats": args.repeats, "seconds": seconds, "median_s": {}, "passes": {}}
    for part, values in seconds.items():
        out["median_s"][part] = float(np.median(values))
        print(f"  {part:24s} {np.median(values):7.3f} s  (median of {len(values)}: "
              f"{', '.join(f'{v:.3f}' for v in values)})")
    for name, results in previous.items():
        out["passes"][name] = {n: r.n_iter for n, r in results.items()}
        print(f"  solver passes of the last warm fit, {name}: {out['passes'][name]}")
    if len(arms) > 1:
        other = previous["97f9eea"]
        agree = {}
        for n, r in ours.items():
            if r.pairs:
                d = np.abs(r.metrics[r.main_metric] - np.array([other[n].get(l, t)[r.main_metric] for l, t in r.pairs]))
                agree[n] = (float(d.mean()), float(d.max()))
        out["test_score_difference_mean_max"] = agree
        print("  test score, this code against 97f9eea (mean, max |difference|): " +
              ", ".join(f"{n} {m:.4f}, {x:.4f}" for n, (m, x) in agree.items()))
        cold = np.median(seconds["fit cold, 97f9eea"]) / np.median(seconds["fit cold, this code"])
        warm = np.median(seconds["fit warm, 97f9eea"]) / np.median(seconds["fit warm, this code"])
        out["speedup_cold"], out["speedup_warm"] = float(cold), float(warm)
        print(f"  fit speed-up over 97f9eea: {cold:.2f}x cold, {warm:.2f}x warm")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        out["profile"] = {}
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        tables = {}
        for name, fit in arms.items():
            with profile(activities=activities) as prof:
                timed(lambda: fit(acts, feats, tr, te, init=previous[name], **kw))
            counts = operation_counts(prof, cuda)
            out["profile"][name] = counts
            tables[name] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
            print(f"  one warm fit, {name}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
        print("the operators of one warm fit, this code:")
        print(tables["this code"])
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)


#: aten operators that only make views or metadata: no kernel behind them
VIEWS = {"aten::view", "aten::as_strided", "aten::select", "aten::unsqueeze", "aten::squeeze", "aten::reshape",
         "aten::transpose", "aten::permute", "aten::expand", "aten::empty", "aten::empty_like", "aten::t",
         "aten::slice", "aten::detach", "aten::alias", "aten::_reshape_alias", "aten::unbind", "aten::narrow",
         "aten::diagonal", "aten::lift_fresh", "aten::empty_strided", "aten::result_type", "aten::_unsafe_view",
         "aten::expand_as", "aten::view_as", "aten::mT", "aten::resolve_conj", "aten::resolve_neg", "aten::split",
         "aten::flatten", "aten::unflatten", "aten::movedim", "aten::is_nonzero", "aten::dim"}


def operation_counts(prof, cuda: bool) -> dict[str, int]:
    """Kernel launches (GPU), operators called from Python that compute (both) and host syncs of a profile."""
    launches = ops = syncs = 0
    for e in prof.events():
        if e.name in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"):
            launches += 1
        elif e.name == "aten::_local_scalar_dense":
            syncs += 1
        if e.name.startswith("aten::") and e.name not in VIEWS and \
                (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")):
            ops += 1
    counts = {"operators called from Python": ops, "host syncs (.item() and the like)": syncs}
    if cuda:
        counts["kernel launches"] = launches
    return counts


if __name__ == "__main__":
    main()
