"""Ablate features of a trained run and store each result in the run (``quietlab ablate`` and the demo).

    results, step = ablate_run("runs/add8", ["carry"], n_eval=1000, n_controls=32)

The run folder is a writer's for the whole call: its lock is taken and its store opened before the
minutes of work, so a locked, read-only or corrupt run fails at once. Results go to the store as
``results(kind="ablation", key="{feature}/{method}")`` with the checkpoint step.
"""

from __future__ import annotations

from pathlib import Path

from ..runs.folder import RunFolder
from ..runs.lock import RunLock


def ablate_run(run_dir: Path | str, features: list[str] | None, *, method: str = "boundary",
               layer: int | str = "auto", n_eval: int | None = None, n_controls: int = 32, seed: int = 0,
               step: int | None = None, device="cpu", progress=None, preset: str | None = None,
               paper_split: tuple[int, int] | None = None) -> tuple[list, int]:
    """([AblationResult, ...], checkpoint step) of ablating each of ``features`` (None: all of the task's)
    in the run's checkpoint ``step`` (default: the last readable one). ``progress(feature, done, total)``
    is called as each feature's controls run.

    The protocol is the run's preset's (``preset``, when given, must match it): ``quietlab``'s ``ablate``
    on ``n_eval`` held-out examples (default 1,000), or for a run of the paper preset the study's
    ``ablate_paper`` (the boundary method only, on the 1,000 probe-test examples of the paper protocol's
    probe set, seeded by the run's seed; ``paper_split`` changes the counts, for tests)."""
    from ..monitor.monitor import check_preset
    from ..train.checkpoint import load_run
    from .ablation import METHODS, ablate, ablate_paper

    if method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    folder = RunFolder(run_dir)
    with RunLock(folder.path), folder.store() as store:
        protocol = check_preset(folder.config().train.preset, preset, folder.path)
        if protocol == "paper" and method != "boundary":
            raise ValueError(f"the paper protocol ablates with the boundary method only (its sum of per-row steps), "
                             f"got --method {method}")
        if protocol == "paper" and n_eval is not None:
            raise ValueError("the paper protocol ablates on its 1,000 probe-test examples; drop --examples")
        model, task, cfg, at_step = load_run(folder.path, step=step, device=device)
        available = list(task.sample(1, split="test").features)
        names = available if features is None else list(features)
        unknown = [n for n in names if n not in available]
        if unknown:
            raise ValueError(f"{task.name} has no feature {', '.join(map(repr, unknown))}; choose from: {', '.join(available)}")
        results = []
        for name in names:
            report = None if progress is None else (lambda done, total, name=name: progress(name, done, total))
            if protocol == "paper":
                result = ablate_paper(model, task, name, probe_seed=cfg.seed, n_controls=n_controls, seed=seed,
                                      layer=layer, paper_split=paper_split, progress=report)
            else:
                result = ablate(model, task, name, method=method, layer=layer, n_eval=n_eval or 1000,
                                n_controls=n_controls, seed=seed, progress=report)
            store.put("ablation", f"{name}/{method}", {**result.to_dict(), "step": at_step}, step=at_step)
            results.append(result)
    return results, at_step
