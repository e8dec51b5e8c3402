#!/usr/bin/env python3
"""Render the Grafana dashboards of dashboards/ to PNG pictures from real Prometheus data.

There is no Grafana here: this script reads each dashboard's JSON, runs every panel's PromQL
against Prometheus (instant queries for stat and table panels, range queries for time series)
and draws the panels with matplotlib where the dashboard's gridPos puts them, with their titles,
units, legends, stacking, value mappings and threshold lines. It approximates Grafana's look; it
is a picture of what the queries return, not a screenshot.

By default it starts its own stack on 127.0.0.1 (free ports, a temporary directory): the exporter
in demo mode (`kapso-exporter --demo`, its built-in simulator) and Prometheus scraping it every
5 s, waits `--minutes`, renders, and stops both. With `--prometheus URL` it renders from a
Prometheus you run instead (the last `--minutes` of its data).

    cargo build --release
    python3 tools/render-dashboards.py --exporter target/release/kapso-exporter --minutes 5

writes docs/images/kapso-workflows.png and docs/images/kapso-exporter-health.png.
Needs matplotlib (`pip install matplotlib`) and, without --prometheus, Debian's `prometheus`.
Variables are set to "All"; `$__rate_interval` is 1m (the demo polls every 15 s).
"""

import argparse
import json
import math
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RATE_INTERVAL = "1m"

BACKGROUND = "#111217"
PANEL = "#181b1f"
BORDER = "#2c3235"
TEXT = "#ccccdc"
MUTED = "#8e8e9e"
# Grafana's classic palette and named colours.
PALETTE = ["#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1", "#ba43a9",
           "#705da0", "#508642", "#cca300", "#447ebc", "#c15c17", "#890f02", "#0a437c"]
NAMED = {"green": "#73bf69", "red": "#f2495c", "orange": "#ff9830", "yellow": "#fade2a",
         "blue": "#5794f2", "purple": "#b877d9", "text": TEXT, "transparent": PANEL}


def color(name):
    return NAMED.get(name, name) if name else TEXT


# ----------------------------------------------------------------------------------------------
# Prometheus
# ----------------------------------------------------------------------------------------------

class Prometheus:
    def __init__(self, base):
        self.base = base.rstrip("/")

    def _get(self, path, **params):
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body}")
        return body["data"]

    def instant(self, expr, at):
        return self._get("/api/v1/query", query=expr, time=f"{at:.3f}")["result"]

    def range(self, expr, start, end, step):
        return self._get("/api/v1/query_range", query=expr, start=f"{start:.3f}",
                         end=f"{end:.3f}", step=f"{step}")["result"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def progress(message):
    """One line of progress, flushed at once (stdout may be a pipe or a CI log)."""
    print(message, flush=True)


def collect(prom, minutes):
    """Waits `minutes` while Prometheus scrapes the demo, saying every 30 s how it goes."""
    total = minutes * 60
    begun = time.monotonic()
    while True:
        elapsed = time.monotonic() - begun
        if elapsed >= total:
            return
        time.sleep(min(30, total - elapsed))
        elapsed = time.monotonic() - begun
        try:
            up = prom.instant('up{job="kapso"}', time.time())
            series = prom.instant('count({job="kapso"})', time.time())
            state = "up" if up and up[0]["value"][1] == "1" else "down"
            count = int(float(series[0]["value"][1])) if series else 0
            status = f"target {state}, {count} series"
        except (OSError, RuntimeError) as e:
            status = f"Prometheus not answering ({e})"
        progress(f"  {elapsed / 60:.1f} of {minutes:g} minutes collected; {status}")


def wait_ready(url, what, deadline_s=60):
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit(f"{what} did not become ready at {url}")
        time.sleep(0.5)


def start_stack(exporter, tmp):
    """The demo exporter and a Prometheus scraping it; returns (processes, prometheus URL)."""
    exporter_port, prom_port = free_port(), free_port()
    (tmp / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\n"
        "scrape_configs:\n  - job_name: kapso\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{exporter_port}']\n")
    log = open(tmp / "stack.log", "w")
    procs = [
        subprocess.Popen([exporter, "--demo", f"--web.listen-address=127.0.0.1:{exporter_port}",
                          "--log.level=warn"], stdout=log, stderr=log),
        subprocess.Popen(["prometheus", "--config.file=prometheus.yml",
                          "--storage.tsdb.path=data", f"--web.listen-address=127.0.0.1:{prom_port}",
                          "--log.level=warn"], cwd=tmp, stdout=log, stderr=log),
    ]
    progress(f"starting {exporter} --demo on 127.0.0.1:{exporter_port} and Prometheus on "
             f"127.0.0.1:{prom_port} (logs: {tmp / 'stack.log'})")
    wait_ready(f"http://127.0.0.1:{exporter_port}/-/ready", "the exporter")
    progress("  the exporter is ready")
    wait_ready(f"http://127.0.0.1:{prom_port}/-/ready", "Prometheus")
    progress("  Prometheus is ready")
    return procs, f"http://127.0.0.1:{prom_port}"


# ----------------------------------------------------------------------------------------------
# Dashboards
# ----------------------------------------------------------------------------------------------

def walk(panels):
    for panel in panels:
        yield panel
        yield from walk(panel.get("panels", []))


def substitute(expr, values):
    out, i = [], 0
    while i < len(expr):
        if expr[i] == "$" and expr[i + 1:i + 2] == "{":
            end = expr.index("}", i)
            out.append(values[expr[i + 2:end].split(":")[0]])
            i = end + 1
        elif expr[i] == "$":
            j = i + 1
            while j < len(expr) and (expr[j].isalnum() or expr[j] == "_"):
                j += 1
            out.append(values[expr[i + 1:j]])
            i = j
        else:
            out.append(expr[i])
            i += 1
    return "".join(out)


def legend(fmt, labels):
    if not fmt or fmt == "__auto":
        inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "__name__")
        return "{" + inner + "}"
    out = fmt
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v).replace("{{ " + k + " }}", v)
    return out


def fmt_value(value, unit, decimals=None):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    if unit == "percentunit":
        return f"{value * 100:.{1 if decimals is None else decimals}f}%"
    if unit == "s":
        a = abs(value)
        for limit, div, name in ((60, 1, "s"), (3600, 60, "min"), (86400, 3600, "hour"),
                                 (float("inf"), 86400, "day")):
            if a < limit:
                return f"{value / div:.{0 if div == 1 and a >= 10 else 1}f} {name}"
    if unit and unit.startswith("suffix:"):
        return f"{short(value, decimals)}{unit[len('suffix:'):]}"
    if unit == "reqpm":
        return f"{short(value, decimals)} req/min"
    if unit == "none":
        return f"{value:g}"
    return short(value, decimals)


def short(value, decimals=None):
    a = abs(value)
    for div, suffix in ((1e9, " Bil"), (1e6, " Mil"), (1e3, " K")):
        if a >= div:
            return f"{value / div:.1f}{suffix}"
    if decimals is not None:
        return f"{value:.{decimals}f}"
    return f"{value:.0f}" if value == int(value) else f"{value:.2f}"


def threshold_color(defaults, value):
    steps = defaults.get("thresholds", {}).get("steps", [])
    chosen = steps[0]["color"] if steps else "green"
    for step in steps:
        if step.get("value") is not None and value is not None and value >= step["value"]:
            chosen = step["color"]
    return color(chosen)


def mapped(defaults, value):
    for mapping in defaults.get("mappings", []):
        if mapping.get("type") == "value":
            key = f"{value:g}" if isinstance(value, float) else str(value)
            hit = mapping.get("options", {}).get(key)
            if hit:
                return hit.get("text", key), color(hit.get("color"))
    return None


def panel_axes(fig, box, title, margins=(0.0, 0.0, 0.0), legend_rows=0):
    """Draws the panel's background and title in `box` (figure fractions) and returns axes
    inside it, leaving `margins` (left, bottom, right, in inches) for ticks and room below for
    `legend_rows` legend lines."""
    width_in, height_in = fig.get_size_inches()
    x, y, w, h = box
    fig.add_artist(plt.Rectangle((x, y), w, h, transform=fig.transFigure, facecolor=PANEL,
                                 edgecolor=BORDER, linewidth=0.8, zorder=0))
    max_chars = int(w * width_in * 10.5)
    shown = title if len(title) <= max_chars else title[:max_chars - 1] + "…"
    fig.text(x + 0.08 / width_in, y + h - 0.17 / height_in, shown, color=TEXT, fontsize=9,
             fontweight="bold", va="center")
    left, bottom, right = margins
    bottom += 0.15 * legend_rows
    top = 0.36
    ax = fig.add_axes([x + left / width_in, y + bottom / height_in,
                       w - (left + right) / width_in, h - (bottom + top) / height_in])
    ax.set_facecolor(PANEL)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.tick_params(colors=MUTED, labelsize=7, length=0)
    return ax


def value_axes(fig, box, panel, series):
    """A panel's axes without ticks, for values rather than a plot; None (after writing
    "No data") when there is nothing to show."""
    ax = panel_axes(fig, box, panel["title"])
    ax.set_xticks([])
    ax.set_yticks([])
    if not series:
        ax.text(0.5, 0.45, "No data", color=MUTED, ha="center", va="center", fontsize=12)
        return None
    return ax


def draw_stat(fig, box, panel, series, defaults):
    ax = value_axes(fig, box, panel, series)
    if ax is None:
        return
    options = panel.get("options", {})
    text_mode = options.get("textMode", "auto")
    color_mode = options.get("colorMode", "value")
    n = len(series)
    for i, (name, value) in enumerate(series):
        x = (i + 0.5) / n
        mapping = mapped(defaults, value)
        text, col = mapping if mapping else (
            fmt_value(value, defaults.get("unit"), defaults.get("decimals")),
            threshold_color(defaults, value))
        if text_mode == "name":
            text, name = name, ""
        size = max(9, min(26, 60 / n, 200 / max(1, len(text)) / n))
        text_color = col
        if color_mode == "none":
            text_color = TEXT
        elif color_mode == "background":
            ax.add_patch(plt.Rectangle((i / n + 0.01, 0.02), 1 / n - 0.02, 0.96, color=col,
                                       alpha=0.85, transform=ax.transAxes, linewidth=0))
            text_color = "white"
        ax.text(x, 0.55, text, color=text_color, ha="center", va="center", fontsize=size,
                fontweight="bold")
        if name and (n > 1 or panel["targets"][0].get("legendFormat", "").startswith("{{")):
            ax.text(x, 0.15, name, color="white" if color_mode == "background" else MUTED,
                    ha="center", va="center", fontsize=max(6, min(8, 40 / n)))


def draw_bargauge(fig, box, panel, series, defaults):
    """Horizontal bars, largest first (the queries sort), at most as many as fit."""
    ax = value_axes(fig, box, panel, series)
    if ax is None:
        return
    shown = series[:12]
    top = max(v for _, v in shown) or 1.0
    n = len(shown)
    for i, (name, value) in enumerate(shown):
        y = 1 - (i + 0.5) / n
        h = 0.7 / n
        col = threshold_color(defaults, value)
        ax.text(0.01, y, name, color=TEXT, ha="left", va="center", fontsize=7,
                transform=ax.transAxes)
        ax.add_patch(plt.Rectangle((0.45, y - h / 2), 0.45, h, color=MUTED, alpha=0.15,
                                   transform=ax.transAxes, linewidth=0))
        ax.add_patch(plt.Rectangle((0.45, y - h / 2), 0.45 * max(0.0, value) / top, h,
                                   color=col, alpha=0.85, transform=ax.transAxes, linewidth=0))
        ax.text(0.99, y, fmt_value(value, defaults.get("unit"), defaults.get("decimals")),
                color=col, ha="right", va="center", fontsize=7, transform=ax.transAxes)


def with_gaps(times, values, step):
    """The points with a NaN inserted wherever more than one step is missing."""
    xs, ys = [], []
    for i, (t, v) in enumerate(zip(times, values)):
        if i and t - times[i - 1] > 1.5 * step:
            xs.append(times[i - 1] + step)
            ys.append(float("nan"))
        xs.append(t)
        ys.append(v)
    return xs, ys


def draw_timeseries(fig, box, panel, lines, defaults, start, end, step):
    width_in = fig.get_size_inches()[0]
    ncol = max(1, min(4, int(box[2] * width_in / 2.6)))
    legend_rows = min(4, math.ceil(len(lines) / ncol)) if lines else 0
    ax = panel_axes(fig, box, panel["title"], (0.75, 0.3, 0.12), legend_rows)
    unit = defaults.get("unit")
    custom = defaults.get("custom", {})
    ax.grid(color=BORDER, linewidth=0.5)
    ax.set_xlim(datetime.fromtimestamp(start), datetime.fromtimestamp(end))
    ax.xaxis.set_major_formatter(
        mdates.DateFormatter("%H:%M" if end - start > 600 else "%H:%M:%S"))
    ax.xaxis.set_major_locator(plt.MaxNLocator(max(2, int(box[2] * width_in / 1.2))))
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: fmt_value(v, unit, None)))
    if not lines:
        ax.text(0.5, 0.5, "No data", color=MUTED, ha="center", va="center", fontsize=12,
                transform=ax.transAxes)
        ax.set_yticks([])
        return
    stacked = custom.get("stacking", {}).get("mode") == "normal"
    fill = custom.get("fillOpacity", 10) / 100
    base = None
    for i, (name, times, values, (dashed, fixed)) in enumerate(lines):
        col = fixed or PALETTE[i % len(PALETTE)]
        xs = [datetime.fromtimestamp(t) for t in times]
        if stacked and not dashed:
            if base is None or len(base) != len(values):
                base = [0.0] * len(values)
            top = [b + v for b, v in zip(base, values)]
            ax.fill_between(xs, base, top, color=col, alpha=fill, linewidth=0)
            ax.plot(xs, top, color=col, linewidth=1, label=name)
            base = top
        else:
            # Like Grafana with spanNulls off: no line across a missing point.
            xs, values = with_gaps(times, values, step)
            xs = [datetime.fromtimestamp(t) for t in xs]
            ax.plot(xs, values, color=col, linewidth=1.2, label=name,
                    linestyle="--" if dashed else "-")
            if fill and not dashed:
                ax.fill_between(xs, values, color=col, alpha=fill * 0.6, linewidth=0)
    if custom.get("thresholdsStyle", {}).get("mode", "off") != "off":
        for step in defaults.get("thresholds", {}).get("steps", []):
            if step.get("value") is not None:
                ax.axhline(step["value"], color=color(step["color"]), linestyle="--",
                           linewidth=1)
    if custom.get("axisSoftMin") == 0:
        ax.set_ylim(bottom=0)
    handles, labels = ax.get_legend_handles_labels()
    keep = legend_rows * ncol
    if len(labels) > keep:
        handles, labels = handles[:keep - 1], labels[:keep - 1] + [f"… {len(labels) - keep + 1} more"]
        handles.append(plt.Line2D([], [], color=PANEL))
    fig_h = fig.get_size_inches()[1]
    ax.legend(handles, labels, fontsize=6.5, loc="upper left", ncol=ncol, frameon=False,
              labelcolor=TEXT, bbox_to_anchor=(0, -0.22 / (ax.get_position().height * fig_h)),
              borderaxespad=0, handlelength=1.5, columnspacing=1.2)


def draw_table(fig, box, panel, rows, defaults):
    ax = panel_axes(fig, box, panel["title"], (0.08, 0.08, 0.08))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    organize = next((t["options"] for t in panel.get("transformations", [])
                     if t["id"] == "organize"), {})
    excluded = {k for k, v in organize.get("excludeByName", {}).items() if v}
    order = organize.get("indexByName", {})
    names = {}
    for override in panel.get("fieldConfig", {}).get("overrides", []):
        for prop in override.get("properties", []):
            if prop["id"] == "displayName":
                names[override["matcher"]["options"]] = prop["value"]
    columns = sorted({k for labels, _ in rows for k in labels} | {"Value"},
                     key=lambda c: (order.get(c, 99), c))
    columns = [c for c in columns if c not in excluded and c not in ("__name__", "job", "instance")]
    if not rows:
        ax.text(0.5, 0.5, "No data", color=MUTED, ha="center", va="center", fontsize=12)
        return
    row_in = 0.22
    ax_h_in = ax.get_position().height * fig.get_size_inches()[1]
    fit = max(1, int(ax_h_in / row_in) - 1)
    cells = []
    for labels, value in rows[:fit]:
        cells.append([fmt_value(value, defaults.get("unit")) if c == "Value" else labels.get(c, "")
                      for c in columns])
    frac = row_in / ax_h_in
    table = ax.table(cellText=cells, colLabels=[names.get(c, c) for c in columns],
                     cellLoc="left", bbox=[0, 1 - frac * (len(cells) + 1), 1,
                                           frac * (len(cells) + 1)])
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    for (r, c), cell in table.get_celld().items():
        cell.set_edgecolor(BORDER)
        cell.set_facecolor(PANEL if r else "#22252b")
        cell.get_text().set_color(TEXT if r else MUTED)
        if r and columns[c] == "Value":
            cell.get_text().set_color(threshold_color(defaults, rows[r - 1][1]))


def render(path, prom, start, end, out):
    dashboard = json.loads(path.read_text())
    values = {"__rate_interval": RATE_INTERVAL, "__interval": "15s",
              "__range": f"{int(end - start)}s", "__range_s": str(int(end - start))}
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("includeAll"):
            values[var["name"]] = var.get("allValue") or ".*"
        elif var["type"] == "textbox":
            values[var["name"]] = var.get("query", "")
    panels = list(walk(dashboard["panels"]))
    rows_total = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    width_in, unit_h = 20.0, 0.36
    fig = plt.figure(figsize=(width_in, rows_total * unit_h + 0.7), facecolor=BACKGROUND)
    fig_h = rows_total * unit_h + 0.7
    fig.text(0.01, 1 - 0.35 / fig_h, dashboard["title"], color=TEXT, fontsize=15,
             fontweight="bold", va="center")
    fig.text(0.99, 1 - 0.35 / fig_h,
             f"{datetime.fromtimestamp(start):%Y-%m-%d %H:%M} – {datetime.fromtimestamp(end):%H:%M}"
             "  ·  all variables: All", color=MUTED, fontsize=9, ha="right", va="center")
    step = max(1, int((end - start) / 240))
    drawn = [p for p in panels if p["type"] != "row"]
    progress(f"rendering {dashboard['title']} ({path.name}): {len(drawn)} panels")
    for panel in panels:
        g = panel["gridPos"]
        top = 1 - (0.7 + g["y"] * unit_h) / fig_h
        height = g["h"] * unit_h / fig_h
        pad_x, pad_y = 0.004, 0.3 * unit_h / fig_h
        box = [g["x"] / 24 + pad_x, top - height + pad_y, g["w"] / 24 - 2 * pad_x,
               height - 2 * pad_y - 0.25 / fig_h]
        if panel["type"] == "row":
            fig.text(g["x"] / 24 + pad_x, top - height / 2, panel["title"], color=TEXT,
                     fontsize=11, fontweight="bold", va="center")
            continue
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        overrides = [o for o in panel.get("fieldConfig", {}).get("overrides", [])
                     if o["matcher"]["id"] == "byRegexp"]
        if panel["type"] == "timeseries":
            lines = []
            for target in panel["targets"]:
                expr = substitute(target["expr"], values)
                for s in prom.range(expr, start, end, step):
                    name = legend(target.get("legendFormat"), s["metric"])
                    style = series_style(overrides, name)
                    lines.append((name, [float(t) for t, _ in s["values"]],
                                  [float(v) for _, v in s["values"]], style))
            lines.sort(key=lambda line: line[0])
            draw_timeseries(fig, box, panel, lines, defaults, start, end, step)
            found = len(lines)
        elif panel["type"] == "stat":
            series = []
            for target in panel["targets"]:
                for s in prom.instant(substitute(target["expr"], values), end):
                    series.append((legend(target.get("legendFormat"), s["metric"]),
                                   float(s["value"][1])))
            series.sort()
            draw_stat(fig, box, panel, series, defaults)
            found = len(series)
        elif panel["type"] == "bargauge":
            series = []
            for target in panel["targets"]:
                for s in prom.instant(substitute(target["expr"], values), end):
                    series.append((legend(target.get("legendFormat"), s["metric"]),
                                   float(s["value"][1])))
            series.sort(key=lambda x: -x[1])
            draw_bargauge(fig, box, panel, series, defaults)
            found = len(series)
        elif panel["type"] == "table":
            rows = []
            for target in panel["targets"]:
                for s in prom.instant(substitute(target["expr"], values), end):
                    rows.append((s["metric"], float(s["value"][1])))
            sort = panel.get("options", {}).get("sortBy", [])
            if sort:
                key = sort[0]["displayName"]
                rows.sort(key=lambda r: r[0].get(key, ""), reverse=sort[0].get("desc", False))
            else:
                rows.sort(key=lambda r: -r[1])
            draw_table(fig, box, panel, rows, defaults)
            found = len(rows)
        else:
            found = None
        index = drawn.index(panel) + 1
        shown = "not drawn (type unknown here)" if found is None else f"{found} series"
        progress(f"  [{index}/{len(drawn)}] {panel['type']} {panel.get('title', '')!r}: {shown}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, facecolor=BACKGROUND)
    plt.close(fig)
    progress(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


def series_style(overrides, name):
    """(dashed, fixed colour or None) from the panel's byRegexp overrides matching `name`."""
    dashed, fixed = False, None
    for override in overrides:
        if re.fullmatch(override["matcher"]["options"], name):
            for prop in override["properties"]:
                if prop["id"] == "custom.lineStyle" and prop["value"].get("fill") == "dash":
                    dashed = True
                if prop["id"] == "color" and prop["value"].get("mode") == "fixed":
                    fixed = color(prop["value"]["fixedColor"])
    return dashed, fixed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", help="render from this Prometheus instead of starting one")
    parser.add_argument("--exporter", default=str(ROOT / "target/release/kapso-exporter"),
                        help="the kapso-exporter binary to run with --demo")
    parser.add_argument("--minutes", type=float, default=5, help="how much data to show")
    parser.add_argument("--out", default=str(ROOT / "docs/images"), help="output directory")
    args = parser.parse_args()
    procs, tmp = [], None
    try:
        if args.prometheus:
            prom = Prometheus(args.prometheus)
            end = time.time()
        else:
            if not shutil.which("prometheus"):
                sys.exit("prometheus is not on PATH (apt-get install prometheus)")
            tmp = Path(tempfile.mkdtemp(prefix="kapso-render-"))
            procs, url = start_stack(args.exporter, tmp)
            prom = Prometheus(url)
            progress(f"collecting {args.minutes:g} minutes of demo data from {url}; "
                     "a line every 30 s")
            collect(prom, args.minutes)
            end = time.time()
        start = end - args.minutes * 60
        for path in sorted((ROOT / "dashboards").glob("*.json")):
            render(path, prom, start, end, Path(args.out) / f"{path.stem}.png")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
