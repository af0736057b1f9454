"""Screenshots of a report's first screens in headless Chromium, and its layout at that width.

Usage::

    python scripts/screenshot_report.py RUN/report.html --out shots --screens 6

Renders the report at 1280 x 900 px (``--width``/``--height``) and writes
``screen_01.png`` ... (one per screen, top to bottom) into ``--out``, then prints what the
browser measured at that width: the page's scroll width (more than the window = horizontal
scrolling), tables wider than their column, and the smallest text size. It needs a
Chromium (Debian: ``apt-get install -y chromium``); without one it stops with exit status 2
and says so.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: Injected into a temporary copy of the report: measures the layout once it is drawn.
_MEASURE = """<script>
window.addEventListener('load', () => {
  const doc = document.documentElement;
  const wide = [];
  document.querySelectorAll('table').forEach((t, i) => {
    const box = t.parentElement.getBoundingClientRect();
    const r = t.getBoundingClientRect();
    if (r.right > box.right + 1) wide.push({index: i, source: t.dataset.source || '',
      width: Math.round(r.width), room: Math.round(box.width)});
  });
  let smallest = 99;
  document.querySelectorAll('body *').forEach(e => {
    const own = [...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (own) {
      smallest = Math.min(smallest, parseFloat(getComputedStyle(e).fontSize));
    }
  });
  const out = document.createElement('pre');
  out.id = '__layout';
  out.textContent = JSON.stringify({scroll_width: doc.scrollWidth, height: doc.scrollHeight,
    wide_tables: wide, smallest_font_px: smallest});
  document.body.appendChild(out);
});
</script>"""


def find_browser(name: str) -> str:
    """Return the path of the browser, or exit 2 saying how to get one."""
    for candidate in [name] if name else ["chromium", "chromium-browser", "google-chrome"]:
        path = shutil.which(candidate) or (candidate if Path(candidate).is_file() else None)
        if path:
            return path
    sys.stderr.write(
        f"screenshot_report: no browser {name or 'chromium'!r} found on PATH. Install "
        "Chromium (Debian/Ubuntu: `apt-get install -y chromium`) or pass --browser PATH.\n"
    )
    raise SystemExit(2)


def _chromium(browser: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def measure(browser: str, report: Path, width: int, height: int) -> dict:
    """Lay the report out at ``width`` and return the browser's measurements."""
    text = report.read_text(encoding="utf-8").replace("</body>", _MEASURE + "</body>", 1)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "report.html"
        copy.write_text(text, encoding="utf-8")
        proc = _chromium(
            browser,
            f"--window-size={width},{height}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            copy.as_uri(),
        )
    found = re.search(r'<pre id="__layout">(.*?)</pre>', proc.stdout, re.S)
    if not found:
        raise SystemExit(f"screenshot_report: the browser measured nothing: {proc.stderr[-800:]}")
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def screenshots(
    browser: str, report: Path, out: Path, screens: int, width: int, height: int
) -> list[Path]:
    """Write one PNG per screen of the first ``screens`` screens."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    tall = out / "_page.png"
    proc = _chromium(
        browser,
        f"--window-size={width},{height * screens}",
        f"--screenshot={tall}",
        "--virtual-time-budget=5000",
        report.resolve().as_uri(),
    )
    if not tall.exists():
        raise SystemExit(f"screenshot_report: no screenshot: {proc.stderr[-800:]}")
    paths = []
    with Image.open(tall) as page:
        for k in range(screens):
            box = (0, k * height, width, min((k + 1) * height, page.height))
            if box[1] >= page.height:
                break
            path = out / f"screen_{k + 1:02d}.png"
            page.crop(box).save(path, optimize=True)
            paths.append(path)
    tall.unlink()
    return paths


def main(argv: list[str] | None = None) -> int:
    """Run the script."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("report", type=Path, help="a report.html")
    parser.add_argument("--out", type=Path, default=Path("report_screens"))
    parser.add_argument("--screens", type=int, default=4, help="how many screens (default 4)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--browser", default="", help="chromium executable (found on PATH)")
    args = parser.parse_args(argv)
    browser = find_browser(args.browser)
    if not args.report.is_file():
        sys.stderr.write(f"screenshot_report: {args.report}: no such report file.\n")
        return 2
    layout = measure(browser, args.report, args.width, args.height)
    for path in screenshots(browser, args.report, args.out, args.screens, args.width, args.height):
        print(path)
    screens_total = -(-layout["height"] // args.height)
    print(
        f"page {layout['height']} px high ({screens_total} screens of {args.height} px); scroll "
        f"width {layout['scroll_width']} px at a {args.width} px window"
        + (" (horizontal scrolling!)" if layout["scroll_width"] > args.width else "")
        + f"; smallest text {layout['smallest_font_px']} px"
    )
    for table in layout["wide_tables"]:
        print(f"table wider than its column: {table}")
    return 1 if layout["scroll_width"] > args.width or layout["wide_tables"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
