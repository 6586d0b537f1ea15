"""Renderings of a report's figures: JSON (for bots), Markdown (for chat and pull requests)
and one self-contained HTML file (charts as inline SVG, gallery images embedded as JPEG data
URIs; it opens offline)."""

from __future__ import annotations

import html
import json
import math
from typing import Optional

import numpy as np

from segbeam.classes import class_colours
from segbeam.metrics import METRIC_LABELS, REPORTED_METRICS
from segbeam.pipeline.report_gallery import gallery_panels
from segbeam.pipeline.report_svg import svg_bars, svg_heatmap, svg_histogram, svg_reliability

RAW_COLOUR, CRF_COLOUR = "#8da0cb", "#e78ac3"


def _clean(value):
    """NaN and infinities as null, so the JSON is strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def render_json(report: dict) -> str:
    return json.dumps(_clean(report), indent=2, allow_nan=False)


def _pct(value: Optional[float], signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value * 100:+.2f}" if signed else f"{value * 100:.2f}"


def _comparison_rows(comparison: dict):
    """(label, figures, is a regression) for each aggregate metric, then each class."""
    regressed = {r["what"] for r in comparison["regressions"]}
    for metric, figures in comparison["aggregate"].items():
        yield METRIC_LABELS[metric], figures, METRIC_LABELS[metric] in regressed
    for row in comparison["per_class"]:
        yield f"IoU {row['class']}", row, row["regression"]


def _count_items(run: dict) -> list[tuple[str, object]]:
    """The run's counts as (label, value); for nightly partitions as they stand
    (``segbeam.pipeline.standing``), the rows summed and what they cannot vouch for."""
    counts, standing = run["counts"], run.get("standing")
    if standing:
        return [("standing rows", f"each of {counts['rows']} inputs' latest row, from "
                                  f"{len(standing['nights_of_rows'])} of {standing['nights']} "
                                  f"finished nights (latest {standing['latest_night']})"),
                ("images with masks", counts.get("images_with_mask")),
                ("left out: rows of another configuration", standing["other_configuration"]),
                ("rows beyond the latest night's inputs", standing["rows_beyond_latest_inputs"])]
    return [("inputs / outputs / dead letters", f"{counts.get('inputs')} / "
                                                f"{counts.get('outputs')} / "
                                                f"{counts.get('dead_letters')}"),
            ("images with masks", counts.get("images_with_mask")),
            ("counts add up", counts.get("accounted_for"))]


def render_markdown(report: dict) -> str:
    run, evaluation = report["run"], report["evaluation"]
    counts = run["counts"]
    night = "latest night, " if run.get("standing") else ""  # the rest: every night's rows
    lines = [f"# Segmentation report: {run['output']}", "",
             f"- model: `{run['model']}` ({run['model_fingerprint']})",
             f"- {night}data: `{run['input']}`, masks `{run['masks']}`",
             f"- {night}started {run['started_utc']}, wall time {run['wall_time_seconds']} s"]
    if run.get("standing"):
        lines += [f"- {label}: {value}" for label, value in _count_items(run)]
    else:
        lines.append(f"- {counts.get('inputs')} inputs -> {counts.get('outputs')} outputs + "
                     f"{counts.get('dead_letters')} dead letters; "
                     f"{counts.get('images_with_mask')} with masks; counts add up: "
                     f"{counts.get('accounted_for')}")
    for dead in run["dead_letters_by_reason"]:
        lines.append(f"  - dead letters at {dead['stage']}: {dead['count']} x {dead['reason']}")
    lines += [f"- **warning**: {warning}" for warning in report.get("warnings", [])]
    if evaluation is None:
        lines += ["", "No ground-truth masks in this run: predictions only, no evaluation."]
    else:
        lines += ["", "## Aggregate (%)", "", "| metric | raw | CRF | CRF - raw |",
                  "| --- | ---: | ---: | ---: |"]
        for metric in REPORTED_METRICS:
            figures = evaluation["aggregate"][metric]
            lines.append(f"| {METRIC_LABELS[metric]} | {_pct(figures['raw'])} | "
                         f"{_pct(figures['crf'])} | {_pct(figures['delta'], True)} |")
        lines += ["", "## Per class (%)", "", "| class | IoU raw | IoU CRF | CRF - raw | "
                  "pixel share |", "| --- | ---: | ---: | ---: | ---: |"]
        for row in evaluation["per_class"]:
            lines.append(f"| {row['class']} | {_pct(row['iou_raw'])} | {_pct(row['iou_crf'])} "
                         f"| {_pct(row['delta'], True)} | {_pct(row['pixel_share'])} |")
        lines += ["", "## Calibration", ""]
        for variant, figures in evaluation["calibration"].items():
            lines.append(f"- {variant}: " + ("no probabilities kept" if not figures else
                                             f"ECE {_pct(figures['ece'])} %, NLL "
                                             f"{figures['nll']:.3f}, Brier {figures['brier']:.3f}"))
        lines += ["", "## Worst images", ""]
        lines += [f"- `{e['key']}`: mIoU raw {_pct(e['miou_raw'])}, CRF {_pct(e['miou_crf'])}"
                  for e in evaluation["worst"]]
    comparison = report.get("comparison")
    if comparison:
        lines += ["", f"## Compared with {comparison['previous']}", ""]
        if not comparison["comparable"]:
            lines.append(f"Not compared: {comparison['not_comparable']}.")
        else:
            caveats = comparison.get("caveats") or []
            if caveats:
                lines += ["Not like for like:", ""] + [f"- {c}" for c in caveats] + [""]
            lines += ["| what | current | previous | delta |", "| --- | ---: | ---: | ---: |"]
            for label, row, regressed in _comparison_rows(comparison):
                flag = " **regression**" if regressed else ""
                lines.append(f"| {label} | {_pct(row['current'])} | {_pct(row['previous'])} | "
                             f"{_pct(row['delta'], True)}{flag} |")
            regressions = comparison["regressions"]
            lines += ["", f"Regressions beyond {comparison['threshold'] * 100:.2f} points: "
                      + (", ".join(f"{r['what']} ({_pct(r['delta'], True)})"
                                   for r in regressions) if regressions else "none")]
    return "\n".join(lines) + "\n"


# ---- HTML -------------------------------------------------------------------------------

def _gallery(entries: list[dict], colours: np.ndarray) -> str:
    rows = []
    for entry in entries:
        cells = []
        for title, uri in gallery_panels(entry, colours):
            body = f'<img src="{uri}" alt="{title}">' if uri else \
                '<div class="missing">not readable from here</div>'
            cells.append(f"<figure>{body}<figcaption>{title}</figcaption></figure>")
        score = "" if entry.get("miou_raw") is None else \
            f" - mIoU raw {_pct(entry['miou_raw'])}, CRF {_pct(entry['miou_crf'])}"
        rows.append(f'<div class="sample"><h4>{html.escape(entry["key"])}{score}</h4>'
                    f'<div class="panels">{"".join(cells)}</div></div>')
    return "".join(rows)


def _legend(names: list[str], colours: np.ndarray) -> str:
    return '<div class="legend">' + "".join(
        f'<span><i style="background:rgb{tuple(int(c) for c in colours[i])}"></i>'
        f'{html.escape(name)}</span>' for i, name in enumerate(names)) + "</div>"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
.warning{color:#8a4b00;background:#fff4e0;padding:.4em .7em}
h1{font-size:1.5em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0} td,th{padding:.25em .7em;border-bottom:1px solid
#eee;text-align:right} td:first-child,th:first-child{text-align:left}
.pos{color:#1a7f37}.neg{color:#c62828} .chart text{font-size:11px;fill:#333}
.chart text.light{fill:#fff} .panels{display:flex;gap:8px;flex-wrap:wrap}
figure{margin:0} figcaption{font-size:12px;color:#555;text-align:center}
.missing{width:240px;height:60px;background:#f4f4f4;display:flex;align-items:center;
justify-content:center;font-size:12px;color:#888} .legend span{margin-right:1em;
font-size:13px;white-space:nowrap} .legend i{display:inline-block;width:12px;height:12px;
margin-right:4px;vertical-align:middle;border:1px solid #999} .regression{background:#fde8e8}
.note{color:#555;font-size:14px} #run td{text-align:left} .flex{display:flex;gap:3em;flex-wrap:wrap}
"""


def _whole_pct(value: float) -> str:
    return f"{value * 100:.0f}%"


def _signed_cell(value: Optional[float]) -> str:
    css = "" if value is None or abs(value) < 5e-5 else ("pos" if value > 0 else "neg")
    return f'<td class="{css}">{_pct(value, True)}</td>'


def render_html(report: dict) -> str:
    run, evaluation, names = report["run"], report["evaluation"], report["class_names"]
    colours = np.asarray(class_colours(names, report.get("palette")), dtype=np.uint8)
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>Segmentation report "
           f"- {html.escape(str(run['output']))}</title><style>{_CSS}</style></head><body>",
           "<h1>Segmentation report</h1>", '<section id="run"><h2>Run</h2><table>']
    night = "latest night, " if run.get("standing") else ""  # the rest: every night's rows
    for label, value in [("output", run["output"]), ("model", run["model"]),
                         ("model fingerprint", run["model_fingerprint"]),
                         (f"{night}data", run["input"]), (f"{night}masks", run["masks"]),
                         (f"{night}started (UTC)", run["started_utc"]),
                         (f"{night}wall time (s)", run["wall_time_seconds"]),
                         *_count_items(run)]:
        out.append(f"<tr><th>{label}</th><td>{html.escape(str(value))}</td></tr>")
    out.append("</table>")
    out += [f'<p class="warning">warning: {html.escape(w)}</p>'
            for w in report.get("warnings", [])]
    if run["dead_letters_by_reason"]:
        out.append("<h3>Dead letters by reason</h3><table><tr><th>stage</th><th>reason</th>"
                   "<th>count</th></tr>")
        out += [f"<tr><td>{html.escape(d['stage'])}</td><td>{html.escape(d['reason'])}</td>"
                f"<td>{d['count']}</td></tr>" for d in run["dead_letters_by_reason"]]
        out.append("</table>")
    out.append("</section>")
    if evaluation is None:
        out.append('<section id="no-evaluation"><h2>Evaluation</h2><p class="note">No '
                   "ground-truth masks in this run, so there is nothing to evaluate; the "
                   "predictions are shown below.</p></section>")
    else:
        out.append(_evaluation_html(evaluation, names, colours))
    unmasked = report["without_masks"]
    if unmasked["count"]:
        out.append(f'<section id="without-masks"><h2>Images without masks '
                   f'({unmasked["count"]})</h2>{_legend(names, colours)}'
                   f'{_gallery(unmasked["examples"], colours)}</section>')
    if report.get("comparison"):
        out.append(_comparison_html(report["comparison"]))
    out.append("</body></html>")
    return "\n".join(out)


def _evaluation_html(evaluation: dict, names: list[str], colours: np.ndarray) -> str:
    out = ['<section id="aggregate"><h2>Aggregate</h2><table><tr><th>metric (%)</th>'
           "<th>raw</th><th>CRF</th><th>CRF - raw</th></tr>"]
    for metric in REPORTED_METRICS:
        figures = evaluation["aggregate"][metric]
        out.append(f"<tr><td>{METRIC_LABELS[metric]}</td><td>{_pct(figures['raw'])}</td>"
                   f"<td>{_pct(figures['crf'])}</td>{_signed_cell(figures['delta'])}</tr>")
    out.append(f"</table><p class='note'>{evaluation['images_scored']} images scored, "
               f"{evaluation['labelled_pixels']:,} labelled pixels. Dataset figures come from "
               "the summed confusion matrix.</p></section>")
    per_class = evaluation["per_class"]
    out.append('<section id="per-class"><h2>Per-class IoU</h2>')
    out.append(svg_bars([r["class"] for r in per_class],
                         [("raw", RAW_COLOUR, [r["iou_raw"] for r in per_class]),
                          ("CRF", CRF_COLOUR, [r["iou_crf"] for r in per_class])]))
    out.append(_variant_legend())
    out.append("<table><tr><th>class</th><th>IoU raw</th><th>IoU CRF</th><th>CRF - raw</th>"
               "<th>pixel share</th></tr>")
    out += [f"<tr><td>{html.escape(r['class'])}</td><td>{_pct(r['iou_raw'])}</td>"
            f"<td>{_pct(r['iou_crf'])}</td>{_signed_cell(r['delta'])}"
            f"<td>{_pct(r['pixel_share'])}</td></tr>" for r in per_class]
    out.append("</table></section>")
    out.append(_boundaries_html(per_class))
    out.append(_calibration_html(evaluation["calibration"]))
    out.append(f'<section id="confusion"><h2>Confusion matrix ({evaluation["confusion_variant"]}'
               f', rows = ground truth, % of each row)</h2>'
               f'{svg_heatmap(evaluation["confusion_normalised"], names)}</section>')
    out.append('<section id="distributions"><h2>Per-image distributions</h2><div class="flex">'
               f'<div><h3>per-image mIoU (final)</h3>'
               f'{svg_histogram(evaluation["per_image_miou"], CRF_COLOUR, _whole_pct)}</div>')
    if evaluation["crf_gain"]:
        out.append(f'<div><h3>CRF gain in per-image mIoU (points; mean '
                   f'{_pct(evaluation["crf_gain_mean"], True)})</h3>'
                   f'{svg_histogram(evaluation["crf_gain"], RAW_COLOUR, lambda v: _pct(v, True))}'
                   "</div>")
    out.append("</div></section>")
    out.append(f'<section id="gallery"><h2>Worst images</h2>{_legend(names, colours)}'
               f'{_gallery(evaluation["worst"], colours)}')
    if evaluation["best"]:
        out.append(f'<h2>Best images</h2>{_gallery(evaluation["best"], colours)}')
    if evaluation["worst_boundary"]:
        out.append(f'<h2 id="worst-boundary">Worst images by boundary F1</h2>'
                   f'{_gallery(evaluation["worst_boundary"], colours)}')
    out.append("</section>")
    return "\n".join(out)


def _variant_legend() -> str:
    return (f'<div class="legend"><span><i style="background:{RAW_COLOUR}"></i>raw</span>'
            f'<span><i style="background:{CRF_COLOUR}"></i>CRF</span></div>')


def _boundaries_html(per_class: list[dict]) -> str:
    """Per-class boundary F1 and boundary IoU, raw against CRF."""
    out = ['<section id="boundaries"><h2>Boundaries per class</h2>',
           svg_bars([r["class"] for r in per_class],
                    [("BF raw", RAW_COLOUR, [r.get("boundary_f1_raw") for r in per_class]),
                     ("BF CRF", CRF_COLOUR, [r.get("boundary_f1_crf") for r in per_class])]),
           _variant_legend(),
           "<table><tr><th>class</th><th>BF raw</th><th>BF CRF</th><th>boundary IoU raw</th>"
           "<th>boundary IoU CRF</th></tr>"]
    out += [f"<tr><td>{html.escape(r['class'])}</td><td>{_pct(r.get('boundary_f1_raw'))}</td>"
            f"<td>{_pct(r.get('boundary_f1_crf'))}</td><td>{_pct(r.get('boundary_iou_raw'))}"
            f"</td><td>{_pct(r.get('boundary_iou_crf'))}</td></tr>" for r in per_class]
    out.append("</table><p class='note'>BF: per image, the mean over classes of the boundary "
               "F1 within 0.75% of the diagonal; per class, the mean over the images where the "
               "class occurs. Boundary IoU: Cheng et al. at 2% of the diagonal, from summed "
               "counts.</p></section>")
    return "\n".join(out)


def _calibration_html(calibration: dict) -> str:
    """Reliability diagrams with ECE, NLL and Brier score, raw and after the CRF."""
    present = {variant: figures for variant, figures in calibration.items() if figures}
    if not present:
        return ('<section id="calibration"><h2>Calibration</h2><p class="note">No class '
                "probabilities were kept in this run (run with the CRF, or --calibration)."
                "</p></section>")
    out = ['<section id="calibration"><h2>Calibration (reliability: accuracy against '
           'confidence per bin; dashed: perfect)</h2><div class="flex">']
    for variant, figures in present.items():
        colour = RAW_COLOUR if variant == "raw" else CRF_COLOUR
        out.append(f"<div><h3>{'raw' if variant == 'raw' else 'CRF'}: ECE "
                   f"{_pct(figures['ece'])}, NLL {figures['nll']:.3f}, Brier "
                   f"{figures['brier']:.3f}</h3>{svg_reliability(figures['bins'], colour)}"
                   "</div>")
    out.append("</div></section>")
    return "\n".join(out)


def _comparison_html(comparison: dict) -> str:
    out = [f'<section id="comparison"><h2>Compared with '
           f'{html.escape(str(comparison["previous"]))}</h2>']
    if not comparison["comparable"]:
        out.append(f"<p class='note'>Not compared: "
                   f"{html.escape(comparison['not_comparable'])}.</p></section>")
        return "\n".join(out)
    caveats = comparison.get("caveats") or []
    if caveats:
        out.append("<p class='note'><b>Not like for like:</b></p><ul class='note'>"
                   + "".join(f"<li>{html.escape(c)}</li>" for c in caveats) + "</ul>")
    regressions = comparison["regressions"]
    out.append(f"<p><b>{len(regressions)} regression(s)</b> beyond "
               f"{comparison['threshold'] * 100:.2f} points.</p>")
    out.append("<table><tr><th>what (%)</th><th>current</th><th>previous</th><th>delta</th>"
               "</tr>")
    for label, row, regressed in _comparison_rows(comparison):
        css = ' class="regression"' if regressed else ""
        out.append(f"<tr{css}><td>{html.escape(label)}</td><td>{_pct(row['current'])}</td>"
                   f"<td>{_pct(row['previous'])}</td>{_signed_cell(row['delta'])}</tr>")
    out.append("</table></section>")
    return "\n".join(out)
