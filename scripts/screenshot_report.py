"""Render a run's HTML report in headless Chromium and save a PNG of the page (docs/report.png by default).

    .venv/bin/python scripts/screenshot_report.py runs/demo            # writes runs/demo/report.html if missing
    .venv/bin/python scripts/screenshot_report.py runs/a runs/b --out docs/compare.png --full-page
    .venv/bin/python scripts/screenshot_report.py path/to/report.html

Uses Debian's chromium (/usr/bin/chromium, or --chromium PATH) through Playwright, with the network cut
off: the picture is what a reader sees offline. Never runs `playwright install`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--hide-scrollbars"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help="run folder(s), or one report .html file")
    ap.add_argument("--out", default=str(ROOT / "docs" / "report.png"), help="PNG to write (default docs/report.png)")
    ap.add_argument("--rebuild", action="store_true", help="rewrite the report even if the run has one")
    ap.add_argument("--full-page", action="store_true", help="the whole page, not just the top")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=1900, help="height of the picture when not --full-page")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args(argv)

    paths = [Path(p) for p in args.paths]
    if len(paths) == 1 and paths[0].suffix == ".html":
        html = paths[0]
        if not html.exists():
            print(f"error: {html} does not exist", file=sys.stderr)
            return 2
    else:
        sys.path.insert(0, str(ROOT / "src"))
        from quietlab.report import write_report

        html = paths[0] / "report.html" if len(paths) == 1 else Path(args.out).with_suffix(".html")
        try:
            if args.rebuild or len(paths) > 1 or not html.exists():
                write_report(paths, html)
        except (ValueError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if not Path(args.chromium).exists():
        print(f"error: no chromium at {args.chromium} (apt-get install chromium)", file=sys.stderr)
        return 2

    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        try:
            ctx = browser.new_context(viewport={"width": args.width, "height": args.height}, device_scale_factor=1)
            ctx.route(re.compile(r"^(https?|wss?)://"), lambda route: route.abort())
            page = ctx.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(html.resolve().as_uri(), wait_until="load")
            page.wait_for_function(
                "() => Array.from(document.querySelectorAll('.plotly-graph-div')).every(d => d._fullLayout)", timeout=60_000)
            page.wait_for_timeout(300)
            page.screenshot(path=str(out), full_page=args.full_page)
        finally:
            browser.close()
    for e in errors:
        print(f"warning: JavaScript error in the page: {e}", file=sys.stderr)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
