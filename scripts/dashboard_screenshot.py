"""The README's dashboard picture: a running server's /dashboard drawn by the tests' headless Chromium.

    make run                                   # shell 1
    editloop demo                              # shell 2: real traffic, a retrain, a hot-swap
    .venv/bin/python scripts/dashboard_screenshot.py http://127.0.0.1:8765 --out docs/dashboard.png

It waits until the page has drawn its charts, so the picture shows figures, not a loading page.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.chromium, as in the tests

from tests.chromium import Browser

READY = (
    "document.body.dataset.state === 'ready' && +document.getElementById('chart-latency').dataset.points > 0"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:8765")
    parser.add_argument("--token", help="a user token, when the server has EDITLOOP_API_TOKENS")
    parser.add_argument("--out", type=Path, default=Path("docs/dashboard.png"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1500)
    args = parser.parse_args()
    page_url = f"{args.url.rstrip('/')}/dashboard" + (f"#token={args.token}" if args.token else "")
    with Browser(width=args.width, height=args.height, timeout_s=60) as page:
        page.goto(page_url)
        page.wait_for(READY)
        png = page.screenshot()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(png)
    print(f"wrote {args.out} ({len(png) // 1024} KiB)")


if __name__ == "__main__":
    main()
