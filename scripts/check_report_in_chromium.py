"""Open a built report's index.html in headless Chromium, offline, and check that every plot rendered its marks.

The page's own script counts the laid-out marks of each plot (svg data-rendered) against what the report wrote
(data-expected); this prints both per plot, fails a plot with a mark placed outside its own area, the requests the page made that were not local, and writes a
screenshot per plot-bearing section (anchors scrolled into view) for a person to look at.

    python scripts/check_report_in_chromium.py results/reference/experiments-cpu [--shots DIR]

Exit status 0 when every plot rendered every mark and nothing remote was requested, 1 otherwise, 2 without
Chromium (bash scripts/setup.sh --test installs it).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path


class _Plots(HTMLParser):
    """(section id / data-task, data-plot) -> (marks expected, marks the page's script found laid out)."""
    def __init__(self):
        super().__init__()
        self.plots: dict[str, tuple[int, int | None]] = {}
        self.outside: dict[str, int] = {}   # marks placed outside their svg's own width x height
        self.section = ""
        self.svg: tuple[str, float, float] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.section = a.get("data-task") or a.get("id") or ""
        elif tag == "svg" and "data-plot" in a:
            rendered = a.get("data-rendered")
            key = f"{self.section}/{a['data-plot']}" if self.section else a["data-plot"]
            self.plots[key] = (int(a["data-expected"]), int(rendered) if rendered is not None else None)
            self.svg = (key, float(a.get("width", "inf")), float(a.get("height", "inf")))
            self.outside[key] = 0
        elif tag == "circle" and self.svg is not None and "cx" in a and "cy" in a:
            key, width, height = self.svg
            self.outside[key] += not (0 <= float(a["cx"]) <= width and 0 <= float(a["cy"]) <= height)

    def handle_endtag(self, tag):
        if tag == "svg":
            self.svg = None


def figure_pages(page: Path, out: Path) -> list[Path]:
    """Each <figure> of the page alone with the page's styles, as its own file (a screenshot of one plot)."""
    html = page.read_text(encoding="utf-8")
    style = "".join(re.findall(r"<style>.*?</style>", html, flags=re.S))
    written = []
    for i, figure in enumerate(re.findall(r"<figure\b.*?</figure>", html, flags=re.S)):
        name = re.search(r'id="([^"]+)"', figure)
        path = out / f"{i:02d}-{name.group(1) if name else 'figure'}.html"
        path.write_text(f"<!doctype html><html><head><meta charset='utf-8'>{style}</head><body>{figure}</body></html>",
                        encoding="utf-8")
        written.append(path)
    return written


def chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps",
           "--hide-scrollbars", "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing could resolve anyway
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def page_requests(net_log: Path) -> list[str]:
    """URLs of requests made on behalf of a file:// page, from a Chromium net log. Chromium's own background
    requests (updates, accounts) carry no file:// isolation key and are not the page's."""
    log = json.loads(net_log.read_text(encoding="utf-8"))
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if event.get("type") == start_job and "url" in params:
            owner = f"{params.get('network_isolation_key', '')} {params.get('site_for_cookies', '')}"
            if "file://" in owner:
                urls.append(params["url"])
    return urls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="a folder holding index.html (bench-report --out)")
    parser.add_argument("--shots", type=Path, default=None, help="write one screenshot per plot here")
    args = parser.parse_args(argv)
    binary = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if binary is None:
        print("chromium is not installed: bash scripts/setup.sh --test installs it", file=sys.stderr)
        return 2
    page = (args.report / "index.html").resolve()
    if not page.is_file():
        print(f"{page}: no index.html (build it with bench-report RESULTS --out {args.report})", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        proc = chromium(binary, tmp / "profile", f"--log-net-log={tmp / 'net.json'}", "--dump-dom", page.as_uri())
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            return 1
        found = _Plots()
        found.feed(proc.stdout)
        remote = [u for u in page_requests(tmp / "net.json") if not u.startswith(("file:", "data:", "about:"))]
        if args.shots:
            args.shots.mkdir(parents=True, exist_ok=True)
            for single in figure_pages(page, tmp):
                chromium(binary, tmp / "profile", "--window-size=680,480",
                         f"--screenshot={(args.shots / (single.stem + '.png')).resolve()}", single.as_uri())
    bad = 0
    for plot, (expected, rendered) in sorted(found.plots.items()):
        outside = found.outside.get(plot, 0)
        ok = rendered == expected and outside == 0
        bad += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {plot}: {rendered} of {expected} marks rendered"
              + (f", {outside} placed outside the plot" if outside else ""))
    print(f"{len(found.plots)} plots, {bad} incomplete; remote requests: {remote or 'none'}")
    return 0 if bad == 0 and not remote and found.plots else 1


if __name__ == "__main__":
    sys.exit(main())
