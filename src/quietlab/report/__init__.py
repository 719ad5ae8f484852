"""The HTML report and the plain-language summary of a run.

    write_report(run_dirs, out) -> Path     one self-contained HTML file (plotly.js inlined), opens offline
    summarize(run_dir) -> list[str]         sentences about a run, every number computed from its store
    headline(run_dir) -> str | None         the main finding in one sentence
    compare(run_dirs) -> list[str]          sentences across runs (when each drop began, steps to 95% accuracy)

The run's data (rundata.py) and the summary (summary.py) need no plotting library; plotly is imported only when a report is written.
"""

from .rundata import RunData, load_run
from .summary import compare, headline, summarize

__all__ = ["RunData", "compare", "headline", "load_run", "render_report", "summarize", "write_report"]


def __getattr__(name):
    if name in ("write_report", "render_report"):
        from . import html

        return getattr(html, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
