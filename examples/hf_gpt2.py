"""quietlab.watch on a GPT-2-shaped Hugging Face model trained from scratch on a quietlab task.

The model is built from a GPT2Config (tiny, nothing downloaded) and trained on 4-bit addition in a plain
loop; quietlab supplies the probe inputs and the features (the task's held-out side, ``task.sample``).
The taps are the token embeddings and each block's output, by their names in ``model.named_modules()``.

    python examples/hf_gpt2.py && quietlab report runs/hf_gpt2
"""

import argparse

import torch
from transformers import GPT2Config, GPT2LMHeadModel

import quietlab
from quietlab.tasks import get_task
from quietlab.train.evaluate import masked_loss


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--out", default="runs/hf_gpt2")
    ap.add_argument("--examples", type=int, default=1000, help="probe inputs (held-out examples)")
    ap.add_argument("--fast", action="store_true", help="a smoke run: 20 steps, 200 probe inputs")
    args = ap.parse_args(argv)
    if args.fast:
        args.steps, args.examples = 20, 200
    torch.manual_seed(0)

    task = get_task("addition", n_bits=4)
    config = GPT2Config(vocab_size=len(task.vocab), n_positions=task.seq_len, n_embd=64, n_layer=2, n_head=4,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)
    probe = task.sample(args.examples, seed=10**6, split="test")  # held out: training samples the train side
    w = quietlab.watch(model, out=args.out, taps=["transformer.wte", "transformer.h.0", "transformer.h.1"],
                       inputs={"input_ids": torch.as_tensor(probe.tokens).long()}, features=probe.features,
                       steps=args.steps, overwrite=True, max_overhead=None)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    for step in range(1, args.steps + 1):
        batch = task.sample(64, seed=step, split="train")
        tokens = torch.as_tensor(batch.tokens).long()
        loss = masked_loss(model(input_ids=tokens).logits, tokens, torch.as_tensor(batch.loss_mask))
        opt.zero_grad()
        loss.backward()
        opt.step()
        w.step(step, loss=loss.item())
    result = w.close()
    for name, c in result.get("features", {}).items():
        print(f"{name}: {c['class']} (best layer {c['best_layer']}, decodable from step {c['decodable_step']})")
    print(f"run folder: {w.path}")


if __name__ == "__main__":
    main()
