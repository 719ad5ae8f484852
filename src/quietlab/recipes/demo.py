"""`quietlab demo`: the whole story on a laptop CPU in minutes.

Train a small Transformer++ on binary addition with the monitor attached; the held-out loss sits on a
plateau while the probes show the carry being computed underneath, then drops. Then classify the
features (quiet / loud), ablate the main quiet feature against random directions, write the report and
print a summary in which every number is read from the run.

The configuration was chosen by experiment (benchmarks/demo_search.py) for a clear plateau and
transition on a 2-core CPU across seeds: lr 5e-4, 150 warm-up steps, then a cosine only down to half the
rate, 800 steps. The main drop ends by step 405-616 on seeds 0-2, which leaves 180 steps or more after it
for the probes that classify the features (benchmarks/results/cpu-2026-12-03-s4/demo_800_seeds012.txt; at
1,000 steps, demo_1000_seeds012.txt, the same story). The earlier 1,500 steps of a cosine to a tenth told
the same story with 900 steps after the drop, nearly twice the time; 1,000 steps of that cosine at lr 7e-4
or 1e-3 told it on some seeds only (benchmarks/results/cpu-engine/): its rate fell too early.

``preset="paper"`` (``quietlab demo --preset paper``) tells the same story under the quiet-feature study's
protocol: the same task size, model size, learning rate and length, but the study's schedule, its
addition (``=`` is a target), model, recipe and fp32; after training, DEMO_PAPER_CHECKPOINTS checkpoints
are probed with the study's probes (10,000 + 1,000 fresh examples each, C = 100 on raw block outputs,
a separately initialised random model as the baseline) and the feature is ablated by its protocol on
its 1,000 probe-test examples. The configuration was tuned for the quietlab preset, not for this one; the summary says what
the run shows.
"""

from __future__ import annotations

from pathlib import Path

from ..runs import RunFolder
from ..runs.lock import holds_files

DEMO_CONFIG = dict(
    task="addition",
    task_sizes={"n_bits": 12},
    d_model=64,
    n_layers=4,
    n_heads=4,
    lr=5e-4,
    batch_size=64,
    steps=800,
    warmup_fraction=0.1875,
    min_lr_fraction=0.5,
    eval_examples=256,
)
#: the demo's probes: dense on the log schedule (the plateau is short on a laptop budget and every probe
#: on it counts), thinned to this fraction of the training compute so the demo stays within two minutes;
#: none held back for plateau-following (a plateau of a few hundred steps is seen too late to follow)
DEMO_PROBES = dict(schedule="log", per_decade=20, probe_examples=1000, max_overhead=0.15, plateau_share=0.0)
#: the feature to ablate when the run finds several quiet ones (the paper's causal claim is on it)
MAIN_FEATURE = "carry"
#: checkpoints probed with the study's protocol under the paper preset (each fits 10,000-example probes)
DEMO_PAPER_CHECKPOINTS = 12


def demo_config(seed: int, preset: str = "quietlab"):
    from ..train.loop import TrainConfig

    config = dict(DEMO_CONFIG)
    if preset == "paper":  # the study's own schedule: TrainConfig's defaults, which that preset requires
        del config["warmup_fraction"], config["min_lr_fraction"]
    return TrainConfig(**config, seed=seed, preset=preset)


def pick_feature(classes: dict[str, dict]) -> str:
    """The carry if it is quiet, else the quiet feature decodable earliest, else the carry."""
    quiet = {k: v for k, v in classes.items() if v.get("class") == "quiet"}
    if MAIN_FEATURE in quiet or not quiet:
        return MAIN_FEATURE
    return min(quiet, key=lambda k: quiet[k].get("decodable_step") or 0)


def run_demo(out: Path, seed: int = 0, progress: bool = True, n_controls: int = 32, log=print,
             preset: str = "quietlab") -> list[str]:
    """Train (or resume), probe, detect, ablate, report; returns the summary sentences. ``preset``: see the
    module docstring (a demo folder of the other preset is refused, one line)."""
    from ..interventions.stored import ablate_run
    from ..monitor import Monitor
    from ..monitor.monitor import probe_run
    from ..report import write_report
    from ..report.summary import summarize
    from ..train.checkpoint import list_checkpoints
    from ..train.loop import train
    from ..train.schedule import thin

    cfg = demo_config(seed, preset)
    cfg.validate()
    if n_controls < 0:  # checked before minutes of training, not by the ablation after them
        raise ValueError(f"--controls must be >= 0, got {n_controls}")
    folder = RunFolder(out)
    resume = folder.exists()
    if holds_files(out) and not resume:
        raise ValueError(f"{out} already exists and holds no demo run; choose another --out")
    log(f"training {cfg.task} ({cfg.task_sizes['n_bits']}-bit{', paper preset' if cfg.paper else ''}) with the "
        f"monitor into {out}" + (" (resuming)" if resume else ""))
    monitor = Monitor(**DEMO_PROBES)
    train(cfg, out, hooks=monitor, progress=progress, resume=resume)

    if cfg.paper:
        steps = thin(list_checkpoints(out), DEMO_PAPER_CHECKPOINTS)
        log(f"probing {len(steps)} checkpoints with the paper's protocol (10,000 + 1,000 fresh examples, C = 100 on "
            f"the block outputs) and a separately initialised random model")
        probe_run(out, steps=steps)
    with folder.store(readonly=True) as store:
        classes = store.results("feature_class")
    feature = pick_feature(classes)
    log(f"ablating `{feature}` against {n_controls} random directions"
        + (" (the paper's protocol)" if cfg.paper else ""))
    ablate_run(out, [feature], method="boundary", n_eval=None if cfg.paper else 500, n_controls=n_controls, seed=seed)
    report = write_report([out], folder.report_path)
    return summarize(out) + [f"Report: {report}"]
