"""quietlab.watch in PyTorch Lightning: a callback on a LightningModule that wraps quietlab's Transformer.

Taps are module names of the LightningModule: here ``model.embed`` and ``model.blocks.{l}`` (a block
returns (output, attention pattern); the tap takes the output, the residual stream after the block).

    python examples/lightning_module.py && quietlab report runs/lightning
"""

import argparse

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset

from quietlab.integrations.lightning import QuietlabCallback
from quietlab.models import Transformer, TransformerConfig
from quietlab.tasks import get_task
from quietlab.train.evaluate import masked_loss


class FreshExamples(IterableDataset):
    """Batches of fresh training examples, one seed per batch."""

    def __init__(self, task, batch_size: int, n_batches: int):
        self.task, self.batch_size, self.n_batches = task, batch_size, n_batches

    def __iter__(self):
        for i in range(self.n_batches):
            b = self.task.sample(self.batch_size, seed=i + 1, split="train")
            yield torch.as_tensor(b.tokens).long(), torch.as_tensor(b.loss_mask)


class AdditionModule(pl.LightningModule):
    def __init__(self, task):
        super().__init__()
        self.model = Transformer(TransformerConfig(vocab_size=len(task.vocab), seq_len=task.seq_len,
                                                   d_model=64, n_layers=2, n_heads=4))

    def forward(self, tokens):  # what the probes run on the probe inputs
        return self.model(tokens)

    def training_step(self, batch, batch_idx):
        tokens, mask = batch
        return masked_loss(self.model(tokens), tokens, mask)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3, weight_decay=0.1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--out", default="runs/lightning")
    ap.add_argument("--examples", type=int, default=1000, help="probe inputs (held-out examples)")
    ap.add_argument("--fast", action="store_true", help="a smoke run: 20 steps, 200 probe inputs")
    args = ap.parse_args(argv)
    if args.fast:
        args.steps, args.examples = 20, 200
    torch.manual_seed(0)

    task = get_task("addition", n_bits=4)
    probe = task.sample(args.examples, seed=10**6, split="test")
    callback = QuietlabCallback(args.out, taps=["model.embed", "model.blocks.0", "model.blocks.1"],
                                inputs=torch.as_tensor(probe.tokens).long(), features=probe.features,
                                overwrite=True, max_overhead=None)
    trainer = pl.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[callback])
    trainer.fit(AdditionModule(task), DataLoader(FreshExamples(task, 64, args.steps), batch_size=None))
    for name, c in callback.watch.result.get("features", {}).items():
        print(f"{name}: {c['class']} (best layer {c['best_layer']}, decodable from step {c['decodable_step']})")
    print(f"run folder: {callback.watch.path}")


if __name__ == "__main__":
    main()
