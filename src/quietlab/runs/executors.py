"""Where a sweep's packs run: ``local`` (this machine) or ``ray`` (Ray's scheduler, any cluster).

An executor has ``slots`` (how many packs run at once, used to size the packs) and ``run(packs)``, which
yields each pack's results (``sweep.run_pack``'s list) as it finishes, in any order; ``close()`` frees it.

- ``local``: one worker process per GPU (each sees only its own card; ``workers`` > GPUs puts several
  on each card, round robin), or on the CPU a pool of
  ``workers`` processes (default: one per core) of one torch thread each; one worker runs inline.
- ``ray``: every pack is one Ray task; on GPUs each asks for ``gpus_per_pack`` of a card (default 0.25,
  so four packs share one), on the CPU for one core. ``address`` joins an existing cluster
  (``ray start --head`` / ``auto``); without it a local Ray instance is started and stopped.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from .sweep import run_pack


def check_options(kind: str, workers: int | None = None, address: str | None = None,
                  gpus_per_pack: float | None = None) -> None:
    """A ValueError for executor options that no cluster could take, before anything is started or written."""
    if kind not in ("local", "ray"):
        raise ValueError(f"--executor must be local or ray, got {kind!r}")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if kind == "local" and (address is not None or gpus_per_pack is not None):
        raise ValueError("--address and --gpus-per-pack are for --executor ray")
    if gpus_per_pack is not None and not (gpus_per_pack > 0 and math.isfinite(gpus_per_pack)):
        raise ValueError(f"--gpus-per-pack must be a number > 0, got {gpus_per_pack}")


def make(kind: str, workers: int | None = None, address: str | None = None, gpus_per_pack: float | None = None):
    check_options(kind, workers, address, gpus_per_pack)
    if kind == "local":
        return LocalExecutor(workers)
    return RayExecutor(address, gpus_per_pack, workers)


def _failed(pack, exc) -> list:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return [(it.run_id, "failed", text, len(pack)) for it in pack]


def _pin_gpu(queue) -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = str(queue.get())  # before this worker first touches CUDA


class LocalExecutor:
    def __init__(self, workers: int | None = None):
        import torch

        self.gpus = torch.cuda.device_count()
        self.slots = workers or self.gpus or (os.cpu_count() or 1)  # on GPUs, workers > GPUs shares the cards
        self.threads = None if self.gpus or self.slots == 1 else max(1, (os.cpu_count() or 1) // self.slots)

    def run(self, packs):
        if self.slots == 1:
            for pack in packs:
                yield run_pack(pack, self.threads)
            return
        ctx = mp.get_context("spawn")
        init, initargs = None, ()
        if self.gpus:
            queue = ctx.Queue()
            for slot in range(self.slots):
                queue.put(slot % self.gpus)
            init, initargs = _pin_gpu, (queue,)
        with ProcessPoolExecutor(self.slots, mp_context=ctx, initializer=init, initargs=initargs) as pool:
            futures = {pool.submit(run_pack, pack, self.threads): pack for pack in packs}
            try:
                while futures:
                    done, _ = wait(futures, return_when=FIRST_COMPLETED)
                    for f in done:
                        pack = futures.pop(f)
                        try:
                            yield f.result()
                        except Exception as exc:  # the worker died (e.g. out of memory): its runs failed
                            yield _failed(pack, exc)
            finally:
                for f in futures:
                    f.cancel()

    def close(self) -> None:
        pass


class RayExecutor:
    def __init__(self, address: str | None = None, gpus_per_pack: float | None = None, workers: int | None = None):
        try:
            import ray
        except ImportError:
            raise ValueError("the ray executor needs Ray: pip install 'quietlab[sweep]'") from None
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            ray.init(address=address, num_cpus=workers if address is None else None, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        resources = ray.cluster_resources()
        gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 1)
        if gpus_per_pack is not None and not 0 < gpus_per_pack <= max(gpus, 1):
            raise ValueError(f"--gpus-per-pack must be in (0, {max(gpus, 1):g}], got {gpus_per_pack}")
        if gpus:
            self.gpus_per_pack = gpus_per_pack or 0.25
            self.slots = max(1, int(gpus / self.gpus_per_pack))
            self.task = ray.remote(num_gpus=self.gpus_per_pack, num_cpus=1, max_retries=0)(run_pack)
            self.threads = None
        else:
            self.gpus_per_pack = 0
            self.slots = max(1, int(cpus))
            self.task = ray.remote(num_cpus=1, max_retries=0)(run_pack)
            self.threads = 1

    def run(self, packs):
        ray = self.ray
        refs = {self.task.remote(pack, self.threads): pack for pack in packs}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    try:
                        yield ray.get(ref)
                    except Exception as exc:  # the task or its worker failed: its runs are recorded failed
                        yield _failed(refs[ref], exc)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
