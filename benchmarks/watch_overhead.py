"""quietlab.watch's overhead: the same plain training loop with and without ``watch``, wall time compared.

Two models, one script:

- ``--model gpt2`` (default; CPU): a GPT-2-shaped ``transformers`` model built from a config (d 128 × 4
  layers, 4 heads) trained from scratch on a quietlab task; taps: the token embeddings and every block.
- ``--model quietlab``: quietlab's Transformer++, ``--compile``d (torch.compile; on CUDA with CUDA
  graphs, as ``quietlab train --compile``), watched through its hook names (``hook_embed``,
  ``blocks.{l}.hook_resid_post``) on the uncompiled module that shares its weights.

Both arms run the same loop (fresh examples every step, AdamW), timed the same way (perf_counter around
the whole loop, after three untimed forward/backward passes that compile; the watched arm's time includes ``watch()``, its step-0 probe, and ``close()``, its last
probe and the classification), interleaved for ``--repeats`` pairs (plain first, then watch first, alternately) after one untimed warm-up
pair (compilation, allocator). ``watch`` runs at its defaults: the Monitor's log probe schedule and its
overhead budget, 2000 held-out probe examples (``--examples``) of all the task's features. Overhead =
median over pairs of (watched − plain) / plain, in wall time and in the process's CPU time (which time
the host steals from the VM does not inflate); beside them the monitor's own measured time over the
watched run's time less it (steadier on a shared machine). Raw times go to ``--out`` (JSON) and stdout.

    python benchmarks/watch_overhead.py --steps 3000 --out watch_overhead_cpu.json                 # CPU
    python benchmarks/watch_overhead.py --model quietlab --compile --device cuda \\
        --task bfs --size 11 --d-model 256 --layers 4 --lr 1e-4 --steps 20000 --out watch_overhead_gpu.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def build(args, task, device):
    if args.model == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(vocab_size=len(task.vocab), n_positions=task.seq_len, n_embd=args.d_model,
                         n_layer=args.layers, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                         bos_token_id=None, eos_token_id=None)
        model = GPT2LMHeadModel(cfg).to(device)
        taps = ["transformer.wte"] + [f"transformer.h.{l}" for l in range(args.layers)]
        forward = lambda tokens: model(input_ids=tokens).logits  # noqa: E731
        return model, forward, taps, lambda t: {"input_ids": t}
    from quietlab.models import Transformer, TransformerConfig
    from quietlab.models.hooks import residual_hooks

    model = Transformer(TransformerConfig(vocab_size=len(task.vocab), seq_len=task.seq_len, d_model=args.d_model,
                                          n_layers=args.layers, n_heads=4)).to(device)
    return model, model, residual_hooks(args.layers), lambda t: t


def run_arm(args, task, device, watched: bool, root: Path, tag: str) -> dict:
    import torch

    import quietlab
    from quietlab.train.evaluate import masked_loss

    torch.manual_seed(0)
    model, forward, taps, as_inputs = build(args, task, device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    batches = [task.sample(args.batch_size * 50, seed=10 + c, split="train") for c in range(2)]  # outside the timing
    probe = task.sample(args.examples, seed=10**6, split="test")
    cuda_graphs = args.compile and device.type == "cuda"

    def step_loss(tokens, mask):  # as quietlab train: bf16 autocast on CUDA, forward and loss compiled together
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = forward(tokens)
        return masked_loss(logits, tokens, mask)

    if args.compile:
        step_loss = torch.compile(step_loss, mode="reduce-overhead" if cuda_graphs else None)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    warm = torch.as_tensor(batches[0].tokens[: args.batch_size]).long().to(device)
    warm_mask = torch.as_tensor(batches[0].loss_mask[: args.batch_size]).to(device)
    for _ in range(3):  # compilation and CUDA-graph capture happen here, outside the timing (no update)
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        step_loss(warm, warm_mask).backward()
        opt.zero_grad(set_to_none=True)  # a CUDA graph's gradients are its outputs: never accumulate into them
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    w = None
    if watched:
        w = quietlab.watch(model, root / tag, taps=taps, inputs=as_inputs(torch.as_tensor(probe.tokens).long()),
                           features=probe.features, steps=args.steps, overwrite=True,
                           **({} if args.max_overhead is None else {"max_overhead": args.max_overhead}))
    for step in range(1, args.steps + 1):
        b = batches[(step // 50) % 2]
        i = (step % 50) * args.batch_size
        tokens = torch.as_tensor(b.tokens[i : i + args.batch_size]).long().to(device, non_blocking=True)
        mask = torch.as_tensor(b.loss_mask[i : i + args.batch_size]).to(device, non_blocking=True)
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        loss = step_loss(tokens, mask)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if w is not None:
            w.step(step, loss=loss.detach())  # a tensor: float() syncs only when the store is written
    if w is not None:
        w.close()
    sync()
    seconds = time.perf_counter() - t0
    out = {"seconds": seconds, "cpu_s": time.process_time() - c0}
    if w is not None:
        m = w.monitor
        out.update(monitor_s=m.spent, probe_s=m.probe_seconds, deferred=m.deferred,
                   timings_s={k: round(v, 4) for k, v in m.timings.items()}, probes=_probe_log(root / tag))
        out["probe_steps"] = [p["step"] for p in out["probes"]]
    return out


def _probe_log(run) -> list[dict]:
    """Each probe step of a watched run: its seconds, its estimated cost (training steps) and the features it fitted."""
    from quietlab.runs.store import RunStore

    with RunStore(Path(run) / "metrics.sqlite", readonly=True) as store:
        seconds = dict(zip(*store.series("monitor/probe_s")))
        estimate = dict(zip(*store.series("monitor/probe_estimate")))
        fitted: dict[int, set] = {}
        for step, feature, *_ in store.probes(fit="online"):
            fitted.setdefault(int(step), set()).add(feature)
    return [{"step": s, "seconds": seconds.get(s), "estimate_steps": estimate.get(s), "features": sorted(f)}
            for s, f in sorted(fitted.items())]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("gpt2", "quietlab"), default="gpt2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--task", default="addition")
    ap.add_argument("--size", type=int, default=8, help="the task's first size knob (n_bits, n_nodes, ...)")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--examples", type=int, default=2000, help="probe inputs")
    ap.add_argument("--repeats", type=int, default=3, help="timed plain/watch pairs")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="write the raw results here (JSON)")
    ap.add_argument("--max-overhead", type=float, default=None,
                    help="watch's max_overhead (default: watch's own, quietlab.monitor.watch.WATCH_MAX_OVERHEAD)")
    args = ap.parse_args()

    import torch

    from quietlab.tasks import get_task

    if args.threads:
        from quietlab.train.threads import set_cpu_threads
        set_cpu_threads(args.threads)
    device = torch.device(args.device)
    task = get_task(args.task, **{get_task(args.task).knobs[0].name: args.size})
    root = Path(tempfile.mkdtemp(prefix="quietlab-watch-overhead-"))
    try:
        warm_steps, args.steps = args.steps, min(args.steps, 50)
        run_arm(args, task, device, False, root, "warm")
        run_arm(args, task, device, True, root, "warm")
        args.steps = warm_steps
        pairs = []
        for r in range(args.repeats):
            if r % 2 == 0:  # alternate which arm goes first, so that an order effect cancels
                plain = run_arm(args, task, device, False, root, f"plain{r}")
                watched = run_arm(args, task, device, True, root, f"watch{r}")
            else:
                watched = run_arm(args, task, device, True, root, f"watch{r}")
                plain = run_arm(args, task, device, False, root, f"plain{r}")
            plain["step_ms"] = 1e3 * plain["seconds"] / args.steps
            pairs.append({"plain": plain, "watch": watched,
                          "overhead": watched["seconds"] / plain["seconds"] - 1,
                          "cpu_overhead": watched["cpu_s"] / plain["cpu_s"] - 1,
                          "monitor_share": watched["monitor_s"] / (watched["seconds"] - watched["monitor_s"])})
            print(json.dumps(pairs[-1]), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {"args": vars(args), "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "pairs": pairs,
              "median_overhead": statistics.median(p["overhead"] for p in pairs),
              "median_cpu_overhead": statistics.median(p["cpu_overhead"] for p in pairs),
              "median_monitor_share": statistics.median(p["monitor_share"] for p in pairs)}
    print(f"median overhead of watch: {result['median_overhead']:.1%} wall, {result['median_cpu_overhead']:.1%} process "
          f"CPU time, over {len(pairs)} interleaved pairs "
          f"(the monitor's own time: {result['median_monitor_share']:.1%} of the watched run's training time)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
