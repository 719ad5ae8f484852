"""A plain PyTorch training loop on quietlab's own model and task: the yardstick for `quietlab train`.

What a user would write by hand: the same Transformer++, the same AdamW recipe (warm-up, cosine,
clipping), the same fresh examples (drawn as the loop draws them, 16 steps' worth per ``task.sample``
call, with its seeds, but synchronously: no background thread); no evaluation, no checkpoints, no
logging, no monitor. Prints one JSON line (steps, final loss, wall seconds inside the process).

``--compile`` compiles forward and loss as `quietlab train --compile` does (bf16 autocast on a GPU, CUDA graphs
through mode="reduce-overhead", Inductor's compile workers started first), and ``--window N`` times the
loop in windows of N steps (a device sync at each window's end) to report what run_throughput.py reports for
a quietlab run: the first step's seconds, the steady tokens/s (median over windows after the first), the
whole loop's tokens/s and their ratio. That separates what compiling costs any loop from what quietlab's
engine adds (issue 12's whole-run target on the GPU):

    python benchmarks/plain_loop.py --device cuda --compile --task bfs --size 11 --d-model 256 --lr 1e-4 \
        --steps 20000 --window 500
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

t_process = time.perf_counter()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="addition")
    ap.add_argument("--size", type=int, default=12, help="the task's first size knob (n_bits, n_nodes, ...)")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="as quietlab train --compile")
    ap.add_argument("--window", type=int, default=0, help="time windows of this many steps (0: none)")
    args = ap.parse_args()

    import torch

    from quietlab.models import Transformer
    from quietlab.tasks import get_task
    from quietlab.train import TrainConfig
    from quietlab.train.evaluate import masked_loss
    from quietlab.train.loop import _DATA, derive_seed, resolve_dtype, set_matmul_precision, start_compile_workers
    from quietlab.train.schedule import lr_at, make_optimizer, set_lr

    task = get_task(args.task, **{get_task(args.task).knobs[0].name: args.size})
    cfg = TrainConfig(task=args.task, d_model=args.d_model, n_layers=args.layers, n_heads=args.heads)
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    set_matmul_precision(cfg, dev)
    amp = resolve_dtype(cfg.dtype, dev)
    model = Transformer(cfg.model_config(task)).to(dev)
    optimizer = make_optimizer(model, args.lr)
    model.train()
    chunk = cfg.data_chunk
    cuda_graphs = args.compile and dev.type == "cuda"
    if cuda_graphs:
        start_compile_workers()

    def forward_loss(tokens, mask):
        with torch.autocast(dev.type, dtype=amp) if amp else contextlib.nullcontext():
            logits = model(tokens)
        return masked_loss(logits, tokens, mask)

    train_loss = (torch.compile(forward_loss, mode="reduce-overhead" if cuda_graphs else None)
                  if args.compile else forward_loss)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    t_loop = time.perf_counter()
    marks = []  # (step, seconds since t_loop) at the first step's end and each window's end
    for step in range(1, args.steps + 1):
        c, i = divmod(step - 1, chunk)
        if i == 0:
            data = task.sample(chunk * args.batch_size, seed=derive_seed(args.seed, _DATA, c), split="train")
            all_tokens = torch.as_tensor(data.tokens, dtype=torch.long, device=dev)
            all_mask = torch.as_tensor(data.loss_mask, dtype=torch.bool, device=dev)
        rows = slice(i * args.batch_size, (i + 1) * args.batch_size)
        tokens, mask = all_tokens[rows], all_mask[rows]
        set_lr(optimizer, lr_at(step - 1, args.steps, args.lr))
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        loss = train_loss(tokens, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if args.window and (step == 1 or step % args.window == 0):
            sync()
            marks.append((step, time.perf_counter() - t_loop))
    final = float(loss.detach())
    out = {"steps": args.steps, "loss": final, "wall_s": time.perf_counter() - t_process}
    if args.window:
        loop_s = time.perf_counter() - t_loop
        tokens_per_step = args.batch_size * task.seq_len
        rates = [(b[0] - a[0]) * tokens_per_step / (b[1] - a[1]) for a, b in zip(marks[1:], marks[2:])]
        steady = statistics.median(rates) if rates else float("nan")
        whole = args.steps * tokens_per_step / loop_s
        out.update({"compile": args.compile, "device": str(dev), "loop_s": loop_s, "first_step_s": marks[0][1],
                    "steady_tokens_per_s": steady, "whole_run_tokens_per_s": whole, "steady_over_whole": steady / whole})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
