"""Writes stored runs' loss curves to one .npz (the form of tests/data/bfs11_seeds012.npz), so that a
GPU run's curves can be replayed and tested on the CPU after its run folder is gone.

For each ``NAME=RUN`` (or RUN, named by its folder): ``NAME_train_loss`` (train/loss at steps 1..N, one
value a step), ``NAME_eval_steps`` and ``NAME_eval_loss``.

    python benchmarks/export_losses.py seed0=/tmp/pp/seed0 seed1=/tmp/pp/seed1 --out losses.npz
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="NAME=RUN or RUN")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from quietlab.runs import RunFolder

    arrays = {}
    for spec in args.runs:
        name, _, path = spec.rpartition("=")
        name = name or Path(path).name
        with RunFolder(path).store(readonly=True) as store:
            steps, train = store.series("train/loss")
            eval_steps, eval_loss = store.series("eval/loss")
        if list(steps) != list(range(1, len(steps) + 1)):
            raise SystemExit(f"{path}: train/loss is not logged at every step 1..N")
        arrays[f"{name}_train_loss"] = np.asarray(train, dtype=np.float32)
        arrays[f"{name}_eval_steps"] = np.asarray(eval_steps, dtype=np.int64)
        arrays[f"{name}_eval_loss"] = np.asarray(eval_loss, dtype=np.float32)
    np.savez_compressed(args.out, **arrays)
    print(f"{len(args.runs)} runs -> {args.out}")


if __name__ == "__main__":
    main()
