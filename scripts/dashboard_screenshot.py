"""Open a page of the history dashboard in headless Chromium (Debian's ``chromium``, driven by playwright),
say what it shows and save a screenshot.

    python scripts/dashboard_screenshot.py site/paired.infer.img_per_s.html docs/history-dashboard.png

Prints one JSON object: the plots on the page, each plot's traces (name, points, marked change points)
and every console error or page error. The tests use :func:`browse` the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
# As root in a container: no sandbox; no GPU; nothing fetched in the background.
ARGS = ("--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--disable-extensions", "--no-first-run")  # fmt: skip
_TRACES = """Array.from(document.querySelectorAll('.js-plotly-plot')).map(d => d.data.map(t => ({
    name: t.name, mode: t.mode, x: Array.from(t.x || []), visible: t.visible === undefined ? true : t.visible})))"""


def browse(
    page: Path, screenshot: Path | None = None, *, width: int = 1200, select: str | None = None
) -> dict[str, Any]:
    """Load ``page`` from file://, wait for its plots, optionally pick ``select`` in the first plot's cell
    menu, and report what it shows; ``screenshot`` gets a PNG of the whole page."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=list(ARGS))
        try:
            tab = browser.new_page(viewport={"width": width, "height": 800})
            tab.on(
                "console",
                lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
            )
            tab.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            tab.goto(page.resolve().as_uri())
            plots = tab.locator(".js-plotly-plot")
            if tab.locator("script[src]").count():
                tab.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
            if select is not None:
                _pick(tab, select)
            traces = tab.evaluate(_TRACES) if plots.count() else []
            links = tab.evaluate(
                "Array.from(document.querySelectorAll('a')).map(a => a.getAttribute('href'))"
            )
            if screenshot is not None:
                tab.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"plots": len(traces), "traces": traces, "links": links, "errors": errors}


def _pick(tab: Any, cell: str) -> None:
    """Open the first plot's cell menu and pick ``cell`` (plotly's menu is SVG: clicked where it is drawn)."""
    for target in (".updatemenu-header .updatemenu-item-rect", f"text.updatemenu-item-text >> text='{cell}'"):
        box = (
            tab.locator(target).last.bounding_box()
            if "text=" in target
            else tab.locator(target).first.bounding_box()
        )
        if box is None:
            raise RuntimeError(f"the cell menu shows no {target!r}")
        tab.mouse.click(box["x"] + 5, box["y"] + box["height"] / 2)
        tab.wait_for_timeout(300)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("screenshot", type=Path)
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--select", help="pick this cell in the first plot's menu before the screenshot")
    args = parser.parse_args()
    report = browse(args.page, args.screenshot, width=args.width, select=args.select)
    summary = {
        "plots": report["plots"],
        "errors": report["errors"],
        "traces": [
            [{"name": t["name"], "points": len(t["x"]), "visible": t["visible"]} for t in plot]
            for plot in report["traces"]
        ],
    }
    print(json.dumps(summary, indent=1))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
