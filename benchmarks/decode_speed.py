"""Greedy decoding of held-out bfs-11 examples, four ways: one example at a time with the whole prefix
recomputed for every new token (how the paper's released code evaluates graph tasks), batched without
a cache, one at a time with a KV cache, and batched with a KV cache (quietlab's) — so that the gain of
batching and the gain of the cache show apart.

    .venv/bin/python benchmarks/decode_speed.py            # 1,000 bfs-11 examples, d_model 128, 4 layers
    .venv/bin/python benchmarks/decode_speed.py --quick    # CPU smoke run (60 examples, a small model)
    .venv/bin/python benchmarks/decode_speed.py --run runs/bfs11   # a trained model instead of a random one

Every arm uses the same model in fp32 and the same stopping rule (a row ends at its end token), is timed
the same number of times (--repeats, median), and its outputs are checked against the batched cached
arm's. The random-init model has its end-token logit held at zero, so that rows decode to full length:
the slowest case for all. Prints examples/s of each and its speed-up over the first; --out also writes
the raw numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from quietlab.models import Transformer, TransformerConfig  # noqa: E402
from quietlab.tasks import get_task  # noqa: E402
from quietlab.train.decode import PAD_ID, greedy_decode  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def one_at_a_time(model, tokens, answer_start):
    """The baseline: batch size 1, no cache, the full prefix through the model for every token."""
    out = tokens.clone()
    T = tokens.shape[1]
    for i in range(len(tokens)):
        s = int(answer_start[i])
        row = tokens[i : i + 1, :s]
        out[i, s:] = PAD_ID
        while row.shape[1] < T:
            nxt = model(row)[:, -1].argmax(-1, keepdim=True)
            row = torch.cat([row, nxt], dim=1)
            if int(nxt) == PAD_ID:
                break
        out[i, : row.shape[1]] = row[0]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CPU smoke run")
    ap.add_argument("--examples", type=int, default=None, help="default 1000 (quick 60)")
    ap.add_argument("--n-nodes", type=int, default=None, help="bfs size (default 11; quick 6)")
    ap.add_argument("--d-model", type=int, default=None, help="default 128 (quick 32)")
    ap.add_argument("--layers", type=int, default=None, help="default 4 (quick 2)")
    ap.add_argument("--batch", type=int, default=1000, help="rows per batched greedy_decode call")
    ap.add_argument("--run", default=None, help="decode with the last checkpoint of this run folder")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: 1 with --quick)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of every arm (median reported)")
    ap.add_argument("--out", default=None, help="write the raw numbers to this JSON file")
    args = ap.parse_args()
    q = args.quick
    if args.threads or q:
        from quietlab.train.threads import set_cpu_threads
        set_cpu_threads(args.threads or 1)
    device = torch.device(("cpu" if q else "cuda" if torch.cuda.is_available() else "cpu")
                          if args.device == "auto" else args.device)
    n = args.examples or (60 if q else 1000)

    if args.run:
        from quietlab.train.checkpoint import load_run

        model, task, _, step = load_run(args.run, device=device)
        what = f"{args.run} at step {step}"
    else:
        task = get_task("bfs", n_nodes=args.n_nodes or (6 if q else 11))
        cfg = TransformerConfig(vocab_size=len(task.vocab), seq_len=task.seq_len, d_model=args.d_model or (32 if q else 128),
                                n_layers=args.layers or (2 if q else 4), n_heads=4)
        torch.manual_seed(0)
        model = Transformer(cfg)
        with torch.no_grad():
            model.lm_head.weight[PAD_ID] = 0  # no early end tokens: every row decodes to full length
        model = model.to(device).eval()
        what = f"random init, d_model {cfg.d_model}, {cfg.n_layers} layers"
    batch = task.sample(n, seed=0, split="test")
    tokens = torch.as_tensor(batch.tokens, dtype=torch.long, device=device)
    start = torch.as_tensor(batch.answer_start, dtype=torch.long, device=device)
    answer_tokens = int((torch.as_tensor(batch.loss_mask).sum()))
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'} · {task!r}, "
          f"seq_len {task.seq_len}, prompts of {int(start.min())}-{int(start.max())} tokens · model: {what}")

    def batched(cache: bool):
        return lambda: torch.cat([greedy_decode(model, tokens[i : i + args.batch], start[i : i + args.batch],
                                                use_cache=cache) for i in range(0, n, args.batch)])

    def cached_one_at_a_time():
        return torch.cat([greedy_decode(model, tokens[i : i + 1], start[i : i + 1]) for i in range(n)])

    rows = min(args.batch, n)
    arms = {  # name -> how one run decodes all n examples
        "one at a time, full prefix each token": lambda: one_at_a_time(model, tokens, start),
        f"batched ({rows} rows), no cache": batched(False),
        "one at a time, KV cache": cached_one_at_a_time,
        f"batched ({rows} rows), KV cache": batched(True),
    }
    # warm-up every path
    greedy_decode(model, tokens[: min(8, n)], start[: min(8, n)])
    greedy_decode(model, tokens[: min(8, n)], start[: min(8, n)], use_cache=False)
    one_at_a_time(model, tokens[:2], start[:2])

    seconds, outputs = {}, {}
    for name, run in arms.items():
        times = []
        for _ in range(args.repeats):
            sync(device)
            t = time.perf_counter()
            outputs[name] = run()
            sync(device)
            times.append(time.perf_counter() - t)
        seconds[name] = times
    reference = outputs[list(arms)[-1]]
    base = statistics.median(seconds[list(arms)[0]])
    print(f"{'method':<44}{'seconds':>10}{'examples/s':>14}{'speed-up':>10}  same outputs")
    result = {"device": str(device), "task": repr(task), "model": what, "examples": n, "answer_tokens": answer_tokens,
              "repeats": args.repeats, "arms": {}}
    for name in arms:
        med = statistics.median(seconds[name])
        same = torch.equal(outputs[name], reference)
        print(f"{name:<44}{med:>10.3f}{n / med:>14,.1f}{base / med:>9.1f}x  {same}")
        result["arms"][name] = {"seconds": seconds[name], "median_s": med, "examples_per_s": n / med,
                                "speedup_vs_first": base / med, "same_outputs": same,
                                "rows_differing": int((outputs[name] != reference).any(1).sum())}
    if not all(a["same_outputs"] for a in result["arms"].values()):
        print("WARNING: some rows differ (near-tied logits can flip an argmax between kernels)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
