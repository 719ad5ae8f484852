"""quietlab.watch on a TransformerLens HookedTransformer: its hook names are the taps.

The model is built from a HookedTransformerConfig (nothing downloaded) and trained on 4-bit addition;
quietlab probes ``hook_embed`` and each ``blocks.{l}.hook_resid_post`` and logs the attention entropy
of each ``blocks.{l}.attn.hook_pattern`` (TransformerLens names, the same as quietlab's own model).

    python examples/transformer_lens_model.py && quietlab report runs/transformer_lens
"""

import argparse

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

import quietlab
from quietlab.tasks import get_task
from quietlab.train.evaluate import masked_loss


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--out", default="runs/transformer_lens")
    ap.add_argument("--examples", type=int, default=1000, help="probe inputs (held-out examples)")
    ap.add_argument("--fast", action="store_true", help="a smoke run: 20 steps, 200 probe inputs")
    args = ap.parse_args(argv)
    if args.fast:
        args.steps, args.examples = 20, 200
    torch.manual_seed(0)

    task = get_task("addition", n_bits=4)
    cfg = HookedTransformerConfig(n_layers=2, d_model=64, d_head=16, n_heads=4, d_mlp=256, n_ctx=task.seq_len,
                                  d_vocab=len(task.vocab), act_fn="gelu", normalization_type="LN", seed=0,
                                  device="cpu")
    model = HookedTransformer(cfg)
    probe = task.sample(args.examples, seed=10**6, split="test")
    taps = ["hook_embed"] + [f"blocks.{l}.hook_resid_post" for l in range(cfg.n_layers)]
    w = quietlab.watch(model, out=args.out, taps=taps, inputs=torch.as_tensor(probe.tokens).long(),
                       features=probe.features, steps=args.steps, overwrite=True, max_overhead=None)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    for step in range(1, args.steps + 1):
        batch = task.sample(64, seed=step, split="train")
        tokens = torch.as_tensor(batch.tokens).long()
        loss = masked_loss(model(tokens), tokens, torch.as_tensor(batch.loss_mask))
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
