"""One Monitor probe step, taken apart: what a probe step costs and where the time goes.

Builds the Monitor's probe set for a task (``--examples``, default the Monitor's 2,000), then times, over
``--repeats`` probe steps: capturing the residual stream, fitting every feature's probes (cold, and
warm-started from the previous step's probes as the Monitor does), and writing the rows to a metrics
store. Between steps every weight of the model moves by ``--drift`` (5%) of its tensor's standard
deviation, a stand-in for the training between two checkpoints: a warm start from the same model's own
probes would cost next to nothing and flatter the figure. ``--profile`` adds the operators that took the most time in one warm fit and
the number of kernels launched (on a GPU, where a probe step is bound by launches rather than by
arithmetic).

    .venv/bin/python benchmarks/probe_step.py --task bfs
    python benchmarks/probe_step.py --task bfs --device cuda --profile
"""

from __future__ import annotations

import argparse
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
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import torch

    from quietlab.models import Transformer, TransformerConfig
    from quietlab.monitor.monitor import probe_set, trim_to_features
    from quietlab.monitor.probes import capture_layers, fit_features, split_probe_set
    from quietlab.runs import RunStore
    from quietlab.tasks import get_task

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.run:
        from quietlab.train import load_run

        model, task, _, _ = load_run(args.run, device=args.device)
    else:
        task = get_task(args.task)
        torch.manual_seed(0)
        model = Transformer(TransformerConfig(vocab_size=len(task.vocab), seq_len=task.seq_len, d_model=args.d_model,
                                              n_layers=args.layers, n_heads=4)).to(args.device).eval()
    batch = probe_set(task, args.examples, 0)
    tokens, feats = trim_to_features(batch.tokens, batch.features)
    tr, te = split_probe_set(len(tokens), 0.2, seed=0)
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
    previous = fit_features(acts, feats, tr, te, **kw)  # also the warm-up
    store = RunStore(tempfile.mkdtemp(prefix="quietlab-probe-step-") + "/metrics.sqlite")
    seconds = {"capture": [], "fit cold": [], "fit warm": [], "store": []}
    gen = torch.Generator(device=args.device).manual_seed(0)
    for step in range(args.repeats):
        with torch.no_grad():  # the next "checkpoint": every weight moved by --drift of its tensor's spread
            for p in model.parameters():
                if p.numel() > 1:
                    p.add_(torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype) * (args.drift * p.std()))
        acts, dt = timed(lambda: capture_layers(model, tokens))
        seconds["capture"].append(dt)
        cold, dt = timed(lambda: fit_features(acts, feats, tr, te, **kw))
        seconds["fit cold"].append(dt)
        warm, dt = timed(lambda: fit_features(acts, feats, tr, te, init=previous, **kw))
        seconds["fit warm"].append(dt)
        previous = warm
        rows = [r for name, res in warm.items() for r in res.rows(step, name)]
        _, dt = timed(lambda: store.log_probes(rows))
        seconds["store"].append(dt)
    n_pairs = sum(len(r.pairs) for r in cold.values())
    passes = {n: r.n_iter for n, r in cold.items()}
    where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"{task!r}, {'run ' + args.run if args.run else 'random-init model'}, {where}: {len(tokens)} probe "
          f"examples, {n_pairs} (feature, layer, position) probes, {len(rows)} store rows; solver passes {passes}")
    for part, values in seconds.items():
        print(f"  {part:9s} {np.median(values):7.3f} s  (median of {len(values)})")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            timed(lambda: fit_features(acts, feats, tr, te, init=previous, **kw))
        events = prof.key_averages()
        launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
        print(events.table(sort_by="self_cpu_time_total", row_limit=15))
        if cuda:
            print(f"kernels launched in one warm fit: {launches}")


if __name__ == "__main__":
    main()
