"""Where ``quietlab report --out`` may write: never over a run's own files, never over a stranger's file.

A path inside a run folder (a folder holding config.json or metrics.sqlite, at any depth above the
path) is allowed only as that run's ``report.html``; an existing file is replaced only if it is a
quietlab report, known by the marker every report carries in its head.
"""

from __future__ import annotations

from pathlib import Path

#: in the <head> of every report quietlab writes
REPORT_MARKER = '<meta name="generator" content="quietlab report">'
RUN_FILES = ("config.json", "metrics.sqlite")


#: the titles of the frontier's and the eureka verb's reports, which carried no marker before 2026-12-05
_UNMARKED_TITLES = (b"<title>quietlab sweep ", b"<title>quietlab eureka</title>")


def is_quietlab_report(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return REPORT_MARKER.encode() in head or any(title in head for title in _UNMARKED_TITLES)


def report_target(out: Path | str) -> Path:
    """The file ``out`` names (``out/report.html`` for a directory), or a ValueError saying why not there."""
    out = Path(out)
    if out.is_dir():
        out = out / "report.html"
    resolved = out.resolve()
    for folder in resolved.parents:
        if any((folder / name).exists() for name in RUN_FILES):
            if resolved != folder / "report.html":
                raise ValueError(f"{out} is inside the run folder {folder}; a report may only go to "
                                 f"{folder / 'report.html'} there (or choose a path outside it)")
            break
    if out.exists() and not is_quietlab_report(out):
        raise ValueError(f"{out} exists and is not a quietlab report; choose another --out or remove it")
    return out
