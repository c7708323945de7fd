"""Draws the Grafana dashboard (infra/grafana/dashboards/mlops.json) as a PNG from real metrics.

Grafana cannot be installed from the registries this project builds from, so this reads the same
dashboard JSON, evaluates each panel's PromQL with Prometheus' HTTP API (query_range) and plots the
series panel by panel, row by row, with matplotlib. Prometheus is either one already running
(--prometheus URL) or one started here from ~/.cache/mlops/bin/prometheus (install-tools.sh
prometheus) with infra/prometheus/local.yml, scraping every service of the local stack.

    python infra/grafana/render.py --run "python -m mlops.demo" --after 30 --out docs/dashboard.png
    python infra/grafana/render.py --scrape 120 --out docs/dashboard.png
    python infra/grafana/render.py --prometheus http://127.0.0.1:9090 --minutes 30 --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DASHBOARD = HERE / "dashboards" / "mlops.json"
CACHE = Path(os.environ.get("MLOPS_CACHE", Path.home() / ".cache/mlops"))
UNITS = {"s": "seconds", "ops": "per second", "reqps": "requests/s", "percent": "%", "percentunit": "ratio"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_prometheus(data_dir: Path) -> tuple[subprocess.Popen, str]:
    binary = CACHE / "bin" / "prometheus"
    if not os.access(binary, os.X_OK):
        sys.exit(f"no Prometheus at {binary}: run `bash infra/k8s/install-tools.sh prometheus`")
    port = free_port()
    log = open(data_dir / "prometheus.log", "w")
    process = subprocess.Popen(
        [
            str(binary),
            f"--config.file={HERE.parent / 'prometheus' / 'local.yml'}",
            f"--storage.tsdb.path={data_dir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"Prometheus exited: see {data_dir / 'prometheus.log'}")
        try:
            if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.terminate()
    sys.exit("Prometheus did not become ready within 60 s")


def wait_for_targets(url: str, deadline_s: float = 30) -> list[str]:
    """Until every target has been scraped twice (so that a counter's first increase shows in rate());
    returns the ones that are down."""
    deadline = time.monotonic() + deadline_s
    first: dict[str, str] = {}
    while True:
        targets = httpx.get(f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        for t in targets:
            if t["health"] != "unknown":
                first.setdefault(t["scrapeUrl"], t["lastScrape"])
        twice = all(first.get(t["scrapeUrl"], t["lastScrape"]) != t["lastScrape"] for t in targets)
        if (twice and len(first) == len(targets)) or time.monotonic() > deadline:
            return [t["labels"].get("service", t["scrapeUrl"]) for t in targets if t["health"] != "up"]
        time.sleep(0.5)


def query_range(url: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    reply = httpx.get(
        f"{url}/api/v1/query_range",
        params={"query": expr, "start": start, "end": end, "step": step},
        timeout=30,
    ).json()
    if reply.get("status") != "success":
        raise RuntimeError(f"query failed: {expr}: {reply.get('error')}")
    return reply["data"]["result"]


def legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip() or "value"


def render(url: str, start: float, end: float, out: Path, note: str) -> dict[str, int]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    dashboard = json.loads(DASHBOARD.read_text())
    step = max(1.0, (end - start) / 240)
    # the dashboard's grid: 24 columns; panels of width 8 give three per line
    rows: list[tuple[str, list[dict]]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            rows.append((panel["title"], []))
        else:
            rows[-1][1].append(panel)
    lines = sum(math.ceil(len(panels) / 3) for _, panels in rows)
    fig = plt.figure(figsize=(18, 3.1 * lines + 0.5 * len(rows) + 1.2))
    grid = fig.add_gridspec(
        lines, 3, hspace=0.75, wspace=0.22, top=1 - 1.5 / fig.get_figheight(), bottom=0.03
    )
    fig.suptitle(
        f"{dashboard['title']}  —  {note}", fontsize=15, x=0.01, y=1 - 0.3 / fig.get_figheight(), ha="left"
    )
    counts = {"panels": 0, "with data": 0, "series": 0}
    line = 0
    for row_title, panels in rows:
        for i, panel in enumerate(panels):
            ax = fig.add_subplot(grid[line + i // 3, i % 3])
            if i == 0:
                ax.annotate(
                    row_title,
                    xy=(-0.08, 1.2),
                    xycoords="axes fraction",
                    fontsize=12.5,
                    fontweight="bold",
                    color="#1f4e79",
                )
            counts["panels"] += 1
            plotted = 0
            for target in panel["targets"]:
                for series in query_range(url, target["expr"], start, end, step):
                    xs = [datetime.fromtimestamp(float(t), UTC) for t, _ in series["values"]]
                    ys = [float(v) for _, v in series["values"]]
                    if os.environ.get("MLOPS_RENDER_DEBUG"):
                        print(panel["title"], series["metric"], len(ys), max(ys), file=sys.stderr)
                    ax.plot(
                        xs, ys, linewidth=1.4, label=legend(target.get("legendFormat", ""), series["metric"])
                    )
                    plotted += 1
            counts["series"] += plotted
            counts["with data"] += bool(plotted)
            unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
            ax.set_title(
                panel["title"] + (f"  [{UNITS.get(unit, unit)}]" if unit not in ("", "short") else ""),
                fontsize=10,
            )
            ax.tick_params(labelsize=7.5)
            ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=5))
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
            ax.set_xlim(datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC))
            ax.grid(alpha=0.3)
            if plotted:
                ax.legend(fontsize=6.5, loc="upper left", ncol=1 if plotted < 6 else 2, framealpha=0.6)
            else:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
        line += math.ceil(len(panels) / 3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    return counts


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", help="an existing Prometheus to query (default: start one here)")
    parser.add_argument("--run", help="command to run while Prometheus scrapes (e.g. the demo)")
    parser.add_argument("--before", type=float, default=10, help="seconds to scrape before --run starts")
    parser.add_argument("--after", type=float, default=20, help="seconds to keep scraping after --run ends")
    parser.add_argument("--scrape", type=float, default=0, help="seconds to scrape when there is no --run")
    parser.add_argument("--minutes", type=float, default=30, help="with --prometheus: how far back to draw")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    args = parser.parse_args(argv)

    if args.prometheus:
        end = time.time()
        counts = render(args.prometheus, end - args.minutes * 60, end, args.out, f"last {args.minutes:g} min")
        print(f"wrote {args.out}: {counts}")
        return 0

    with tempfile.TemporaryDirectory(prefix="mlops-prometheus-") as tmp:
        process, url = start_prometheus(Path(tmp))
        try:
            down = wait_for_targets(url)
            if down:
                print(f"services not scraped (down): {', '.join(down)}", file=sys.stderr)
            time.sleep(args.before)  # a baseline before the run, so that its first increments show in rate()
            start = time.time()
            rc = 0
            if args.run:
                print(f"running: {args.run}")
                rc = subprocess.call(shlex.split(args.run), cwd=REPO)
                time.sleep(args.after)  # the panels' last points: a few more scrapes after the run
            else:
                time.sleep(args.scrape)
            end = time.time()
            what = f"`{args.run}`" if args.run else f"{args.scrape:g} s of the running services"
            note = f"{what}, {datetime.fromtimestamp(start, UTC):%Y-%m-%d %H:%M} UTC, {end - start:.0f} s"
            counts = render(url, start - args.before, end, args.out, note)
            print(f"wrote {args.out}: {counts}")
            if down:
                print(f"note: {', '.join(down)} were down and are missing from the picture", file=sys.stderr)
            return rc
        finally:
            process.terminate()
            process.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
