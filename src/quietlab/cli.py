"""The quietlab command line: one Typer app, each verb a thin call into the modules."""

from __future__ import annotations

import functools
import json
import sys
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
        except (ValueError, FileNotFoundError) as exc:
            err_console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2)

    return wrapper


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
def tasks_cmd(as_json: bool = typer.Option(False, "--json", help="Print the list as JSON.")):
    """List every task with its size options, sequence length, vocabulary and features."""
    from .tasks import get_task, task_names

    described = [get_task(name).describe() for name in task_names()]
    if as_json:
        print(json.dumps(described, indent=2))
        return
    table = Table(title="quietlab tasks (at their default, paper sizes)", show_lines=True)
    for col in ("task", "sizes", "seq_len", "vocab", "features"):
        table.add_column(col)
    for d in described:
        sizes = "\n".join(f"{k}={v['value']} ({v['allowed']})" for k, v in d["sizes"].items())
        feats = "\n".join(f"{k}: {v}" for k, v in d["features"].items())
        table.add_row(d["name"], sizes, str(d["seq_len"]), d["vocab"], feats)
    console.print(table)


@app.command("sample", context_settings=TASK_SIZES)
@one_line_errors
def sample_cmd(
    ctx: typer.Context,
    task: str = typer.Argument(..., help="Task name; `quietlab tasks` lists them with their size options."),
    n: int = typer.Option(3, "--n", help="How many examples."),
    seed: int = typer.Option(0, "--seed"),
    split: str = typer.Option("train", "--split", help="train or test (the held-out side)."),
    as_json: bool = typer.Option(False, "--json", help="Print examples and features as JSON."),
):
    """Print decoded examples with each feature shown under the tokens it belongs to.

    Size options follow the task's knobs, e.g. `quietlab sample addition --n-bits 8`."""
    from .tasks import get_task
    from .tasks.render import batch_to_json, render_example

    t = get_task(task, **parse_sizes(ctx.args))
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    batch = t.sample(n, seed=seed, split=split)
    if as_json:
        print(json.dumps(batch_to_json(t, batch), indent=1))
        return
    for i in range(n):
        console.print(render_example(t, batch, i), highlight=False, markup=False)
        console.print()


@app.command("report")
@one_line_errors
def report_cmd(
    runs: List[str] = typer.Argument(..., metavar="RUN", help="One or more run folders (several: overlaid and compared)."),
    out: Optional[str] = typer.Option(
        None, "--out", help="HTML file to write; default RUN/report.html for one run, ./report.html for several."),
):
    """Write one self-contained HTML report (opens offline) and print its path."""
    from pathlib import Path

    from .report import write_report

    target = Path(out) if out else (Path(runs[0]) / "report.html" if len(runs) == 1 else Path("report.html"))
    print(write_report([Path(r) for r in runs], target))


def main() -> None:  # pragma: no cover
    app(prog_name="quietlab")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
