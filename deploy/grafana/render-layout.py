#!/usr/bin/env python3
"""Draws the layout of a Grafana dashboard JSON as SVG: each panel's gridPos
box with its title and type, each row as a band. A layout drawing, not a
screenshot: no Grafana runs here (docs/dashboards.md says why).

    python3 deploy/grafana/render-layout.py deploy/grafana/sockwarden.json > docs/dashboard-layout.svg
"""
import json
import sys
from xml.sax.saxutils import escape

COL = 48      # px per grid column (24 columns)
ROW = 30      # px per grid row (Grafana's is 30 px)
PAD = 4
COLORS = {"timeseries": "#1f60c4", "stat": "#37872d", "state-timeline": "#8f3bb8"}


def wrap(text, width):
    words, lines, line = text.split(), [], ""
    for w in words:
        if len(line) + len(w) + 1 > width and line:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return lines + [line] if line else lines


def main(path):
    dash = json.load(open(path))
    panels = dash["panels"]
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels) * ROW + 60
    width = 24 * COL
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif">',
           f'<rect width="{width}" height="{height}" fill="#111217"/>',
           f'<text x="8" y="22" fill="#ccccdc" font-size="16" font-weight="bold">{escape(dash["title"])}</text>',
           '<text x="8" y="42" fill="#8e8e9e" font-size="11">'
           + escape("Layout drawing from " + path + " (gridPos boxes, titles, panel types): not a screenshot. Variables: "
                    + ", ".join(v["name"] for v in dash["templating"]["list"])) + "</text>"]
    top = 52
    for p in panels:
        g = p["gridPos"]
        x, y, w, h = g["x"] * COL, top + g["y"] * ROW, g["w"] * COL, g["h"] * ROW
        if p["type"] == "row":
            out.append(f'<text x="{x + 6}" y="{y + 20}" fill="#ccccdc" font-size="14" font-weight="bold">'
                       f'▾ {escape(p["title"])}</text>')
            out.append(f'<line x1="0" y1="{y + h - 2}" x2="{width}" y2="{y + h - 2}" stroke="#2c3235"/>')
            continue
        color = COLORS.get(p["type"], "#6e6e6e")
        out.append(f'<rect x="{x + PAD}" y="{y + PAD}" width="{w - 2 * PAD}" height="{h - 2 * PAD}" '
                   f'rx="3" fill="#181b1f" stroke="#2c3235"/>')
        out.append(f'<rect x="{x + PAD}" y="{y + PAD}" width="4" height="{h - 2 * PAD}" fill="{color}"/>')
        chars = max(10, (w - 24) // 7)
        lines = wrap(p["title"], chars)[: max(1, (h - 24) // 16)]
        for i, line in enumerate(lines):
            out.append(f'<text x="{x + 14}" y="{y + 24 + i * 16}" fill="#ccccdc" font-size="12.5">{escape(line)}</text>')
        legend = [t.get("legendFormat", "") for t in p["targets"]]
        info = f'{p["type"]} · {len(legend)} quer{"y" if len(legend) == 1 else "ies"} · {p["fieldConfig"]["defaults"].get("unit", "")}'
        out.append(f'<text x="{x + 14}" y="{y + h - 12}" fill="#8e8e9e" font-size="10.5">{escape(info)}</text>')
        if h >= 6 * ROW:
            for i, lg in enumerate(legend[: (h - 80) // 14]):
                out.append(f'<text x="{x + 14}" y="{y + 30 + len(lines) * 16 + i * 14}" fill="#6e7b8b" '
                           f'font-size="10" font-family="monospace">{escape(lg[:chars + 8])}</text>')
    out.append("</svg>")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
