"""quietlab.watch on your own model and your own features, in a plain PyTorch loop.

The model (a small GRU) reads a string of random bits and predicts, at each position, the parity of the
bits so far. The features are what a solution might compute on the way: the running parity (binary)
and the number of ones so far (categorical). Then:

    quietlab report runs/plain_loop      # the HTML report of what the probes saw
"""

import argparse

import numpy as np
import torch
from torch import nn

import quietlab

SEQ = 16


class ParityNet(nn.Module):
    def __init__(self, d: int = 48):
        super().__init__()
        self.embed = nn.Embedding(2, d)
        self.gru = nn.GRU(d, d, batch_first=True)  # returns (output, h): the tap takes output
        self.head = nn.Linear(d, 2)

    def forward(self, bits):
        x, _ = self.gru(self.embed(bits))
        return self.head(x)


def make_data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, size=(n, SEQ))
    ones = np.cumsum(bits, axis=1)
    return torch.as_tensor(bits), torch.as_tensor(ones % 2), ones


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--out", default="runs/plain_loop")
    ap.add_argument("--examples", type=int, default=1000, help="probe inputs (held-out examples)")
    ap.add_argument("--fast", action="store_true", help="a smoke run: 20 steps, 200 probe inputs")
    args = ap.parse_args(argv)
    if args.fast:
        args.steps, args.examples = 20, 200
    torch.manual_seed(0)

    probe_bits, probe_parity, probe_ones = make_data(args.examples, seed=123)  # held out: a seed training never uses
    everywhere = np.ones((args.examples, SEQ), dtype=bool)
    features = {
        "parity": quietlab.Feature(probe_parity.numpy()[..., None], everywhere, "binary"),
        "ones": quietlab.Feature(probe_ones[..., None], everywhere, "categorical", n_classes=SEQ + 1),
    }
    model = ParityNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    w = quietlab.watch(model, out=args.out, taps=["embed", "gru"], inputs=probe_bits, features=features,
                       steps=args.steps, overwrite=True,
                       max_overhead=None)  # probe on the log schedule: the default 8% budget skips most of a short run's probes
    for step in range(1, args.steps + 1):
        bits, parity, _ = make_data(64, seed=step)
        loss = nn.functional.cross_entropy(model(bits).flatten(0, 1), parity.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        w.step(step, loss=loss.item())
    classes = w.close()
    for name, c in classes.get("features", {}).items():
        print(f"{name}: {c.get('class')}")
    print(f"run folder: {w.path}")


if __name__ == "__main__":
    main()
