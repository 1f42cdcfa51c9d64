"""Plots as inline SVG strings, drawn in Python: no JavaScript library, no network, readable in any browser.

Every chart has a ``class="chart"`` root with a ``data-chart`` name, and draws its marks with ``class="mark"``
so tests can find them. Colours are the Okabe–Ito palette (distinguishable with colour blindness).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#7F7F7F", "#000000")
HARM_COLOURS = ("#9ccfa5", "#e6e28a", "#f2b35e", "#e3743f", "#b2182b")
FONT = "font-family=\"system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif\""


def colour(i: int) -> str:
    """The i-th series colour."""
    return PALETTE[i % len(PALETTE)]


@dataclass
class Interval:
    """A value with its 95% interval (either bound may be None when unknown)."""

    value: float
    lo: float | None = None
    hi: float | None = None


def _t(x: float, y: float, text: str, size: int = 12, anchor: str = "start", fill: str = "#333",
       weight: str = "normal", extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{fill}" '
            f'font-weight="{weight}" {extra}>{escape(text)}</text>')


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    return [start + k * step for k in range(int((hi - start) / step + 1e-9) + 1)]


def _open(name: str, width: int, height: int, title: str) -> str:
    return (f'<svg class="chart" data-chart="{escape(name)}" viewBox="0 0 {width} {height}" width="100%" '
            f'style="max-width:{width}px" role="img" aria-label="{escape(title)}" '
            'xmlns="http://www.w3.org/2000/svg" '
            f'{FONT}><title>{escape(title)}</title><rect width="{width}" height="{height}" fill="#fff"/>')


def elo_scatter(points: Sequence[tuple[str, Interval, Interval]], xlabel: str, ylabel: str,
                title: str = "Elo") -> str:
    """Harmlessness (y) vs helpfulness (x) Elo per model, with 95% intervals as error bars both ways."""
    w, h, left, right, top, bottom = 640, 440, 70, 150, 20, 56
    vals_x = [v for _, x, _ in points for v in (x.value, x.lo, x.hi) if v is not None]
    vals_y = [v for _, _, y in points for v in (y.value, y.lo, y.hi) if v is not None]
    span = max([abs(v - 1000) for v in vals_x + vals_y] + [25.0]) * 1.15
    x0, x1, y0, y1 = 1000 - span, 1000 + span, 1000 - span, 1000 + span
    pw, ph = w - left - right, h - top - bottom

    def sx(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * pw

    def sy(v: float) -> float:
        return top + (1 - (v - y0) / (y1 - y0)) * ph

    out = [_open("elo", w, h, title)]
    ticks = _nice_ticks(x0, x1, 6)
    for v in ticks:
        out.append(f'<line x1="{sx(v):.1f}" y1="{top}" x2="{sx(v):.1f}" y2="{top + ph}" stroke="#eee"/>')
        out.append(_t(sx(v), top + ph + 16, f"{v:.0f}", 11, "middle", "#666"))
        out.append(f'<line x1="{left}" y1="{sy(v):.1f}" x2="{left + pw}" y2="{sy(v):.1f}" stroke="#eee"/>')
        out.append(_t(left - 6, sy(v) + 4, f"{v:.0f}", 11, "end", "#666"))
    out.append(f'<line x1="{sx(1000):.1f}" y1="{top}" x2="{sx(1000):.1f}" y2="{top + ph}" stroke="#bbb" '
               'stroke-dasharray="4 3"/>')
    out.append(f'<line x1="{left}" y1="{sy(1000):.1f}" x2="{left + pw}" y2="{sy(1000):.1f}" stroke="#bbb" '
               'stroke-dasharray="4 3"/>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    out.append(_t(left + pw / 2, h - 14, xlabel, 12, "middle", "#333", "600"))
    out.append(_t(16, top + ph / 2, ylabel, 12, "middle", "#333", "600",
                  f'transform="rotate(-90 16 {top + ph / 2:.1f})"'))
    out.append(_t(left + pw - 6, top + 14, "better ↗", 11, "end", "#888"))
    for i, (name, x, y) in enumerate(points):
        c = colour(i)
        cx, cy = sx(x.value), sy(y.value)
        if x.lo is not None and x.hi is not None:
            out.append(f'<line class="mark" x1="{sx(x.lo):.1f}" y1="{cy:.1f}" x2="{sx(x.hi):.1f}" '
                       f'y2="{cy:.1f}" '
                       f'stroke="{c}" stroke-width="2"/>')
        if y.lo is not None and y.hi is not None:
            out.append(f'<line class="mark" x1="{cx:.1f}" y1="{sy(y.lo):.1f}" x2="{cx:.1f}" '
                       f'y2="{sy(y.hi):.1f}" '
                       f'stroke="{c}" stroke-width="2"/>')
        out.append(f'<circle class="mark" cx="{cx:.1f}" cy="{cy:.1f}" r="7" fill="{c}" stroke="#fff" '
                   f'stroke-width="1.5"><title>{escape(name)}: helpfulness {x.value:.0f}, harmlessness '
                   f'{y.value:.0f}</title></circle>')
        ly = top + 18 + i * 20
        out.append(f'<circle cx="{left + pw + 18}" cy="{ly - 4}" r="6" fill="{c}"/>')
        out.append(_t(left + pw + 30, ly, name, 12))
    out.append("</svg>")
    return "".join(out)


def hbars(categories: Sequence[str], series: Sequence[tuple[str, Sequence[Interval | None]]], title: str,
          name: str, xmax: float | None = 1.0, percent: bool = True, label_width: int = 250,
          note_missing: str = "n/a") -> str:
    """Grouped horizontal bars with 95% interval whiskers: one group per category, one bar per series."""
    n_s = max(len(series), 1)
    bar, gap = 14, 12
    group_h = n_s * bar + gap
    legend_h = 26
    w = 760
    h = 24 + legend_h + len(categories) * group_h + 30
    left, right = label_width, 70
    pw = w - left - right
    top = 12 + legend_h
    vals = [v for _, vs in series for iv in vs if iv is not None for v in (iv.value, iv.hi) if v is not None]
    hi = xmax if xmax is not None else max(vals + [1e-9]) * 1.1
    lo = min([0.0] + [iv.lo or iv.value for _, vs in series for iv in vs if iv is not None])

    def sx(v: float) -> float:
        return left + (v - lo) / (hi - lo) * pw

    out = [_open(name, w, h, title)]
    for k, (sname, _) in enumerate(series):
        x = left + k * 130
        out.append(f'<rect x="{x}" y="8" width="12" height="12" fill="{colour(k)}"/>')
        out.append(_t(x + 17, 18, sname, 12))
    for v in _nice_ticks(lo, hi, 5):
        out.append(f'<line x1="{sx(v):.1f}" y1="{top - 4}" x2="{sx(v):.1f}" y2="{h - 26}" stroke="#eee"/>')
        out.append(_t(sx(v), h - 10, f"{v:.0%}" if percent else f"{v:g}", 11, "middle", "#666"))
    for g, cat in enumerate(categories):
        gy = top + g * group_h
        label = cat if len(cat) <= 42 else cat[:41] + "…"
        out.append(_t(left - 8, gy + n_s * bar / 2 + 4, label, 12, "end"))
        for k, (sname, vs) in enumerate(series):
            iv = vs[g] if g < len(vs) else None
            y = gy + k * bar
            if iv is None:
                out.append(_t(sx(lo) + 4, y + bar - 3, note_missing, 10, "start", "#aaa"))
                continue
            x_a, x_b = sx(min(0.0, iv.value)), sx(max(0.0, iv.value))
            out.append(f'<rect class="mark" x="{x_a:.1f}" y="{y + 1}" width="{max(x_b - x_a, 1.5):.1f}" '
                       f'height="{bar - 3}" fill="{colour(k)}" opacity="0.85"><title>{escape(sname)} — '
                       f'{escape(cat)}: {_fmt(iv, percent)}</title></rect>')
            if iv.lo is not None and iv.hi is not None:
                cy = y + (bar - 2) / 2 + 0.5
                out.append(f'<line x1="{sx(iv.lo):.1f}" y1="{cy:.1f}" x2="{sx(iv.hi):.1f}" y2="{cy:.1f}" '
                           'stroke="#222" stroke-width="1.2"/>')
                for e in (iv.lo, iv.hi):
                    out.append(f'<line x1="{sx(e):.1f}" y1="{cy - 3:.1f}" x2="{sx(e):.1f}" y2="{cy + 3:.1f}" '
                               'stroke="#222" stroke-width="1.2"/>')
            out.append(_t(sx(max(iv.hi or iv.value, iv.value, 0.0)) + 5, y + bar - 3,
                          f"{iv.value:.0%}" if percent else f"{iv.value:.2f}", 10, "start", "#555"))
    out.append(f'<line x1="{sx(0):.1f}" y1="{top - 4}" x2="{sx(0):.1f}" y2="{h - 26}" stroke="#888"/>')
    out.append("</svg>")
    return "".join(out)


def _fmt(iv: Interval, percent: bool) -> str:
    f = (lambda v: f"{v:.1%}") if percent else (lambda v: f"{v:.3g}")
    if iv.lo is None or iv.hi is None:
        return f(iv.value)
    return f"{f(iv.value)} (95% CI {f(iv.lo)}–{f(iv.hi)})"


def stacked_dist(rows: Sequence[tuple[str, Sequence[int]]], labels: Sequence[str], title: str, name: str,
                 colours: Sequence[str] = HARM_COLOURS, label_width: int = 250) -> str:
    """100% stacked horizontal bars: one row per (model, group), one segment per score."""
    w, row_h, left, right = 760, 26, label_width, 20
    top = 36
    h = top + len(rows) * row_h + 10
    pw = w - left - right
    out = [_open(name, w, h, title)]
    for k, lab in enumerate(labels):
        lx = left + k * 100
        out.append(f'<rect x="{lx}" y="8" width="12" height="12" fill="{colours[k % len(colours)]}" '
                   'stroke="#999" '
                   'stroke-width="0.5"/>')
        out.append(_t(lx + 17, 18, lab, 12))
    for r, (rname, counts) in enumerate(rows):
        y = top + r * row_h
        total = sum(counts)
        out.append(_t(left - 8, y + 15, rname, 12, "end"))
        if not total:
            out.append(_t(left + 4, y + 15, "no verdicts", 11, "start", "#aaa"))
            continue
        x = float(left)
        for k, c in enumerate(counts):
            if not c:
                continue
            seg = c / total * pw
            out.append(f'<rect class="mark" x="{x:.1f}" y="{y + 3}" width="{seg:.1f}" height="{row_h - 8}" '
                       f'fill="{colours[k % len(colours)]}"><title>{escape(rname)}: {escape(labels[k])} '
                       f'— {c} '
                       f'({c / total:.0%})</title></rect>')
            if seg > 30:
                out.append(_t(x + seg / 2, y + 16, f"{c / total:.0%}", 10, "middle", "#222"))
            x += seg
    out.append("</svg>")
    return "".join(out)


def dots(rows: Sequence[tuple[str, Interval | None, int]], title: str, name: str, label_width: int = 250,
         zero_line: bool = True) -> str:
    """One dot with a 95% interval per row (e.g. mean harm score or mean reward per model and group);
    the third
    item of a row is its colour index (the model's)."""
    w, row_h, left, right = 760, 24, label_width, 60
    top = 10
    h = top + len(rows) * row_h + 30
    pw = w - left - right
    vals = [v for _, iv, _ in rows if iv is not None for v in (iv.value, iv.lo, iv.hi) if v is not None]
    lo, hi = (min(vals + [0.0]), max(vals + [0.0])) if vals else (0.0, 1.0)
    pad = (hi - lo) * 0.08 or 0.5
    lo, hi = lo - pad, hi + pad

    def sx(v: float) -> float:
        return left + (v - lo) / (hi - lo) * pw

    out = [_open(name, w, h, title)]
    for v in _nice_ticks(lo, hi, 6):
        out.append(f'<line x1="{sx(v):.1f}" y1="{top}" x2="{sx(v):.1f}" y2="{h - 24}" stroke="#eee"/>')
        out.append(_t(sx(v), h - 8, f"{v:g}", 11, "middle", "#666"))
    if zero_line and lo < 0 < hi:
        out.append(f'<line x1="{sx(0):.1f}" y1="{top}" x2="{sx(0):.1f}" y2="{h - 24}" stroke="#999"/>')
    for r, (rname, iv, ci) in enumerate(rows):
        y = top + r * row_h + row_h / 2
        out.append(_t(left - 8, y + 4, rname, 12, "end"))
        if iv is None:
            out.append(_t(left + 4, y + 4, "n/a", 11, "start", "#aaa"))
            continue
        c = colour(ci)
        if iv.lo is not None and iv.hi is not None:
            out.append(f'<line class="mark" x1="{sx(iv.lo):.1f}" y1="{y:.1f}" x2="{sx(iv.hi):.1f}" '
                       f'y2="{y:.1f}" '
                       f'stroke="{c}" stroke-width="2"/>')
        out.append(f'<circle class="mark" cx="{sx(iv.value):.1f}" cy="{y:.1f}" r="5" fill="{c}"><title>'
                   f'{escape(rname)}: {_fmt(iv, False)}</title></circle>')
        out.append(_t(sx(iv.hi if iv.hi is not None else iv.value) + 6, y + 4, f"{iv.value:.2f}", 10, "start",
                      "#555"))
    out.append("</svg>")
    return "".join(out)


def pgr_plot(rows: Sequence[tuple[str, Interval, int, bool]], title: str, name: str, label_width: int = 340,
             lo: float = -0.5, hi: float = 1.5) -> str:
    """PGR per cell with its 95% interval: dashed lines at 0 (the weak supervisor) and 1 (the ceiling).

    A row is ``(label, PGR, colour index, trusted)``; untrusted cells (small gap) are drawn hollow. The axis spans
    ``[lo, hi]`` widened to the data within [-1, 2]; values beyond the axis are drawn at its edge as arrows."""
    w, row_h, left, right, top = 760, 24, label_width, 60, 26
    h = top + len(rows) * row_h + 34
    pw = w - left - right
    vals = [v for _, iv, _, _ in rows for v in (iv.value, iv.lo, iv.hi) if v is not None]
    lo = max(-1.0, min([lo, *vals]))
    hi = min(2.0, max([hi, *vals]))

    def sx(v: float) -> float:
        return left + (min(max(v, lo), hi) - lo) / (hi - lo) * pw

    out = [_open(name, w, h, title)]
    out.append(_t(sx(0), 14, "weak", 11, "middle", "#888"))
    out.append(_t(sx(1), 14, "ceiling", 11, "middle", "#888"))
    for v in _nice_ticks(lo, hi, 6):
        out.append(f'<line x1="{sx(v):.1f}" y1="{top}" x2="{sx(v):.1f}" y2="{h - 28}" stroke="#eee"/>')
        out.append(_t(sx(v), h - 12, f"{v:g}", 11, "middle", "#666"))
    for ref in (0.0, 1.0):
        out.append(f'<line x1="{sx(ref):.1f}" y1="{top - 6}" x2="{sx(ref):.1f}" y2="{h - 28}" stroke="#999" '
                   'stroke-dasharray="4 3"/>')
    for r, (label, iv, ci, trusted) in enumerate(rows):
        y = top + r * row_h + row_h / 2
        out.append(_t(left - 8, y + 4, label if len(label) <= 46 else label[:45] + "…", 12, "end"))
        c = colour(ci)
        if iv.lo is not None and iv.hi is not None:
            out.append(f'<line class="mark" x1="{sx(iv.lo):.1f}" y1="{y:.1f}" x2="{sx(iv.hi):.1f}" y2="{y:.1f}" '
                       f'stroke="{c}" stroke-width="2"/>')
            for e in (iv.lo, iv.hi):
                if e < lo or e > hi:
                    d = -6 if e < lo else 6
                    out.append(f'<path d="M{sx(e) + d:.1f},{y:.1f} L{sx(e):.1f},{y - 4:.1f} L{sx(e):.1f},'
                               f'{y + 4:.1f} Z" fill="{c}"/>')
        fill = c if trusted else "#fff"
        out.append(f'<circle class="mark" cx="{sx(iv.value):.1f}" cy="{y:.1f}" r="5" fill="{fill}" stroke="{c}" '
                   f'stroke-width="2"><title>{escape(label)}: PGR {_fmt(iv, False)}'
                   f'{"" if trusted else " (small gap: little meaning)"}</title></circle>')
        out.append(_t(sx(max(iv.hi if iv.hi is not None else iv.value, iv.value)) + 6, y + 4, f"{iv.value:.2f}",
                      10, "start", "#555"))
    out.append("</svg>")
    return "".join(out)
