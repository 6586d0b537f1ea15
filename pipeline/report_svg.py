"""The report's charts as inline SVG: grouped bars, histograms, a heat map, and the
reliability diagram of calibration bins. No plotting library: each is a few shapes."""

from __future__ import annotations

import html
from typing import Callable, Optional


def svg_bars(labels: list[str], series: list[tuple[str, str, list[Optional[float]]]],
              height: int = 220) -> str:
    """A grouped bar chart of values in [0, 1], one group per label."""
    group = 14 * len(series) + 10
    width = 40 + group * len(labels) + 60  # room for the last rotated label
    parts = [f'<svg class="chart" width="{width}" height="{height + 90}" role="img">',
             f'<line x1="36" y1="{height}" x2="{width}" y2="{height}" stroke="#555"/>']
    for tick in (0, 0.25, 0.5, 0.75, 1.0):
        y = height - tick * (height - 10)
        parts.append(f'<text x="32" y="{y + 4:.1f}" text-anchor="end">{tick * 100:.0f}</text>'
                     f'<line x1="36" y1="{y:.1f}" x2="{width}" y2="{y:.1f}" stroke="#eee"/>')
    for g, label in enumerate(labels):
        x0 = 40 + g * group
        for s, (name, colour, values) in enumerate(series):
            value = values[g]
            if value is None:
                continue
            bar = value * (height - 10)
            parts.append(f'<rect x="{x0 + s * 14}" y="{height - bar:.1f}" width="12" '
                         f'height="{bar:.1f}" fill="{colour}"><title>{html.escape(label)} '
                         f'{name}: {value * 100:.2f}</title></rect>')
        parts.append(f'<text transform="translate({x0 + group / 2 - 4},{height + 8}) '
                     f'rotate(60)">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_histogram(hist: dict, colour: str, label: Callable[[float], str]) -> str:
    counts, edges = hist["counts"], hist["edges"]
    top = max(counts + [1])
    width, height = 30 * len(counts) + 70, 160
    parts = [f'<svg class="chart" width="{width}" height="{height + 40}" role="img">']
    for i, count in enumerate(counts):
        bar = count / top * (height - 20)
        parts.append(f'<rect x="{30 + i * 30}" y="{height - bar:.1f}" width="28" '
                     f'height="{bar:.1f}" fill="{colour}"><title>{label(edges[i])} to '
                     f'{label(edges[i + 1])}: {count}</title></rect>'
                     f'<text x="{44 + i * 30}" y="{height - bar - 3:.1f}" '
                     f'text-anchor="middle">{count}</text>')
    for i in (0, len(counts) // 2, len(counts)):
        parts.append(f'<text x="{30 + i * 30}" y="{height + 16}" text-anchor="middle">'
                     f'{label(edges[i])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_heatmap(matrix: list[list[Optional[float]]], names: list[str]) -> str:
    cell, margin = 30, 110
    size = margin + cell * len(names)
    parts = [f'<svg class="chart" width="{size + 10}" height="{size + 10}" role="img">']
    for i, name in enumerate(names):
        parts.append(f'<text x="{margin - 4}" y="{margin + i * cell + 19}" text-anchor="end">'
                     f'{html.escape(name)}</text>'
                     f'<text transform="translate({margin + i * cell + 19},{margin - 4}) '
                     f'rotate(-60)">{html.escape(name)}</text>')
        for j, value in enumerate(matrix[i]):
            shade = "#f4f4f4" if value is None else \
                f"rgb({255 - int(value * 220)},{255 - int(value * 160)},255)"
            text = "" if value is None or value < 0.005 else f"{value * 100:.0f}"
            parts.append(f'<rect x="{margin + j * cell}" y="{margin + i * cell}" width="{cell}" '
                         f'height="{cell}" fill="{shade}" stroke="#fff"><title>truth '
                         f'{html.escape(name)}, predicted {html.escape(names[j])}: '
                         f'{"-" if value is None else f"{value * 100:.1f}%"}</title></rect>'
                         f'<text x="{margin + j * cell + 15}" y="{margin + i * cell + 19}" '
                         f'text-anchor="middle" class="{"light" if (value or 0) > 0.6 else ""}">'
                         f'{text}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_reliability(bins: list[dict], colour: str, size: int = 220) -> str:
    """Accuracy against confidence per bin (bars), the diagonal of perfect calibration, and
    each bin's pixel share as a strip below."""
    margin = 36
    parts = [f'<svg class="chart" width="{size + margin + 10}" height="{size + margin + 40}" '
             f'role="img"><g transform="translate(0,8)"><rect x="{margin}" y="0" '
             f'width="{size}" height="{size}" fill="none" stroke="#555"/><line x1="{margin}" '
             f'y1="{size}" x2="{margin + size}" y2="0" stroke="#999" stroke-dasharray="4 3"/>']
    total = max(sum(b["pixels"] for b in bins), 1)
    for b in bins:
        x, width = margin + b["lower"] * size, (b["upper"] - b["lower"]) * size
        if b["accuracy"] is not None:
            bar = b["accuracy"] * size
            parts.append(f'<rect x="{x:.1f}" y="{size - bar:.1f}" width="{width - 1:.1f}" '
                         f'height="{bar:.1f}" fill="{colour}" fill-opacity="0.8"><title>'
                         f'confidence {b["lower"] * 100:.0f}-{b["upper"] * 100:.0f}%: accuracy '
                         f'{b["accuracy"] * 100:.1f}%, mean confidence '
                         f'{b["confidence"] * 100:.1f}%, {b["pixels"]:,} pixels</title></rect>')
        share = b["pixels"] / total * 20
        parts.append(f'<rect x="{x:.1f}" y="{size + 24 - share:.1f}" width="{width - 1:.1f}" '
                     f'height="{share:.1f}" fill="#888"/>')
    for tick in (0, 0.5, 1.0):
        parts.append(f'<text x="{margin - 4}" y="{size - tick * size + 4:.1f}" '
                     f'text-anchor="end">{tick * 100:.0f}</text>'
                     f'<text x="{margin + tick * size:.1f}" y="{size + 36}" '
                     f'text-anchor="middle">{tick * 100:.0f}</text>')
    parts.append("</g></svg>")
    return "".join(parts)
