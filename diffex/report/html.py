"""The experiment report: one self-contained ``report.html`` a biologist can open offline.

Everything the page needs (styles, a few lines of script, images, plots) is inside the file; it
makes no network request. It is built only from the experiment folder (``results.json``,
``provenance.json``, ``morphology.csv``, ``config.resolved.yaml`` and ``traversals/*.tif``), so
``diffex report EXPERIMENT_DIR`` re-renders it without recomputing anything. Every string that
comes from the user (file, condition and channel names, paths, config values) is HTML-escaped.

Images are shown with fixed display ranges per channel (never rescaled per image), so that a
brighter render is a brighter render. Thumbnails are at most :data:`MAX_THUMB` pixels on a side;
full-resolution renders stay in ``traversals/*.tif``.

Example
-------
>>> write_report("diffex-demo")          # doctest: +SKIP
PosixPath('diffex-demo/report.html')
"""

from __future__ import annotations

import base64
import io
import logging
import math
from html import escape
from pathlib import Path

import numpy as np

from diffex.errors import DiffexError
from diffex.fsutil import atomic_file, read_json
from diffex.report.folder import read_hyperstack, read_morphology
from diffex.report.morphology import measurement_label, salient
from diffex.report.traversal import BRIGHTER, DARKER, PALETTE, composite, difference_map

log = logging.getLogger(__name__)

MAX_THUMB = 128  # px, longest side of an image inlined in the report
SIZE_BUDGET = 20 * 2**20  # bytes; a larger report is written but logged as a warning
DIFF_SCALE = 0.25  # difference maps: full colour = a change of 25 % of the channel's display range
CONDITION_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
SERIES_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")

METHOD_TEXT = {
    "gradient": "the mean gradient of the classifier's log-probability with respect to h and the leading singular vectors of the per-image gradients",
    "pca": "principal components of h over the images' sampling trajectories",
    "jacobian": "leading right-singular vectors of the Jacobian of the U-Net's noise prediction with respect to h",
    "contrastive": "a contrastive objective on the U-Net's output changes (LatentCLR-style, the DiffEx baseline)",
}


def e(value) -> str:
    """HTML-escape anything (quotes included)."""
    return escape(str(value), quote=True)


# ------------------------------------------------------------------------------------ images
def png_uri(pixels: np.ndarray) -> str:
    """(H, W) or (H, W, 3) uint8 -> a PNG data URI, downsampled to at most MAX_THUMB px."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(pixels))
    if max(im.size) > MAX_THUMB:
        im.thumbnail((MAX_THUMB, MAX_THUMB), Image.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def grey(channel: np.ndarray, low: float, high: float) -> np.ndarray:
    """(H, W) raw -> (H, W) uint8 with a fixed display range.

    Example
    -------
    >>> grey(np.array([[0.0, 50.0, 200.0]]), 0.0, 100.0).tolist()
    [[0, 127, 255]]
    """
    return (np.clip((channel - low) / (high - low), 0, 1) * 255).astype(np.uint8)


# ------------------------------------------------------------------------------------- plots
def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi].

    Example
    -------
    >>> nice_ticks(-1, 1)
    [-1.0, -0.5, 0.0, 0.5, 1.0]
    """
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


class _Axes:
    """Linear mapping of data to an SVG plot area, with axes drawn as SVG text."""

    def __init__(self, xlim, ylim, legend_rows=0, width=440, plot_height=200, left=52, right=12, top=12):
        self.x0, self.x1 = xlim
        self.y0, self.y1 = ylim
        self.b = 40 + 16 * legend_rows  # x tick labels and x label, then one legend row per series
        self.w, self.h, self.l, self.r, self.t = width, top + plot_height + self.b, left, right, top

    def legend_y(self, i: int) -> float:
        return self.h - self.b + 46 + 16 * i

    def x(self, v: float) -> float:
        return self.l + (v - self.x0) / (self.x1 - self.x0) * (self.w - self.l - self.r)

    def y(self, v: float) -> float:
        return self.h - self.b - (v - self.y0) / (self.y1 - self.y0) * (self.h - self.t - self.b)

    def frame(self, xlabel: str, ylabel: str, xfmt="{:g}", yfmt="{:g}") -> list[str]:
        out = [f'<rect x="{self.l}" y="{self.t}" width="{self.w - self.l - self.r}" height="{self.h - self.t - self.b}" class="plotarea"/>']
        for v in nice_ticks(self.x0, self.x1):
            out.append(f'<line x1="{self.x(v):.1f}" x2="{self.x(v):.1f}" y1="{self.h - self.b}" y2="{self.h - self.b + 4}" class="tick"/>'
                       f'<text x="{self.x(v):.1f}" y="{self.h - self.b + 16}" text-anchor="middle">{e(xfmt.format(v))}</text>')
        for v in nice_ticks(self.y0, self.y1):
            out.append(f'<line x1="{self.l - 4}" x2="{self.l}" y1="{self.y(v):.1f}" y2="{self.y(v):.1f}" class="tick"/>'
                       f'<text x="{self.l - 6}" y="{self.y(v) + 4:.1f}" text-anchor="end">{e(yfmt.format(v))}</text>')
        out.append(f'<text x="{(self.l + self.w - self.r) / 2:.0f}" y="{self.h - self.b + 30}" text-anchor="middle">{e(xlabel)}</text>')
        out.append(f'<text transform="translate(13 {(self.t + self.h - self.b) / 2:.0f}) rotate(-90)" text-anchor="middle">{e(ylabel)}</text>')
        return out


def _svg(axes: _Axes, body: list[str], label: str) -> str:
    return (f'<svg class="plot" role="img" aria-label="{e(label)}" viewBox="0 0 {axes.w} {axes.h}" width="{axes.w}" height="{axes.h}" '
            f'>{"".join(body)}</svg>')


def line_plot(x: list[float], series: list[tuple[str, list[float]]], xlabel: str, ylabel: str, marker_frame: int | None = None) -> str:
    """SVG line plot of several series over x, with a legend and an optional movable vertical marker."""
    ys = [v for _, vals in series for v in vals if np.isfinite(v)] or [0.0]
    lo, hi = min(min(ys), 0.0), max(max(ys), 0.0)
    pad = 0.08 * (hi - lo or 1.0)
    ax = _Axes((min(x), max(x)), (lo - pad, hi + pad), legend_rows=len(series))
    body = ax.frame(xlabel, ylabel, xfmt="{:+g}", yfmt="{:+.0%}" if hi - lo >= 0.05 else "{:+.1%}")
    body.append(f'<line x1="{ax.l}" x2="{ax.w - ax.r}" y1="{ax.y(0):.1f}" y2="{ax.y(0):.1f}" class="zero"/>')
    if marker_frame is not None:
        xs = ",".join(f"{ax.x(v):.1f}" for v in x)
        mx = ax.x(x[marker_frame])
        body.append(f'<line class="marker" data-xs="{xs}" x1="{mx:.1f}" x2="{mx:.1f}" y1="{ax.t}" y2="{ax.h - ax.b}"/>')
    for i, (name, vals) in enumerate(series):
        col = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        pts = " ".join(f"{ax.x(a):.1f},{ax.y(b):.1f}" for a, b in zip(x, vals) if np.isfinite(b))
        body.append(f'<polyline points="{pts}" fill="none" stroke="{col}" stroke-width="2"/>')
        body += [f'<circle cx="{ax.x(a):.1f}" cy="{ax.y(b):.1f}" r="2.5" fill="{col}"/>' for a, b in zip(x, vals) if np.isfinite(b)]
        ly = ax.legend_y(i)
        body.append(f'<line x1="{ax.l}" x2="{ax.l + 16}" y1="{ly - 4}" y2="{ly - 4}" stroke="{col}" stroke-width="2"/>'
                    f'<text x="{ax.l + 22}" y="{ly}" class="legend">{e(name)}</text>')
    return _svg(ax, body, f"{ylabel} against {xlabel}")


def histogram_plot(groups: dict[str, list[float]], xlabel: str, span: float | None = None) -> str:
    """SVG of overlaid per-group histograms (as densities), group means dashed, and a +-span bar."""
    vals = np.concatenate([np.asarray(v, float) for v in groups.values() if len(v)] or [np.zeros(1)])
    lo, hi = float(vals.min()), float(vals.max())
    if span:
        lo, hi = min(lo, -span), max(hi, span)
    if hi <= lo:
        lo, hi = lo - 1, hi + 1
    edges = np.linspace(lo, hi, 25)
    dens = {g: np.histogram(v, edges, density=True)[0] if len(v) else np.zeros(len(edges) - 1) for g, v in groups.items()}
    top = max(float(d.max()) for d in dens.values()) or 1.0
    ax = _Axes((lo, hi), (0, top * 1.15), legend_rows=len(groups) + (1 if span else 0))
    body = ax.frame(xlabel, "density", yfmt="{:.2g}")
    for i, (g, d) in enumerate(dens.items()):
        col = CONDITION_COLOURS[i % len(CONDITION_COLOURS)]
        pts = [f"{ax.x(edges[0]):.1f},{ax.y(0):.1f}"]
        for j, v in enumerate(d):
            pts += [f"{ax.x(edges[j]):.1f},{ax.y(v):.1f}", f"{ax.x(edges[j + 1]):.1f},{ax.y(v):.1f}"]
        pts.append(f"{ax.x(edges[-1]):.1f},{ax.y(0):.1f}")
        body.append(f'<polygon points="{" ".join(pts)}" fill="{col}" fill-opacity="0.18" stroke="{col}" stroke-width="1.5"/>')
        v = np.asarray(groups[g], float)
        if len(v):
            m = float(v.mean())
            body.append(f'<line x1="{ax.x(m):.1f}" x2="{ax.x(m):.1f}" y1="{ax.t}" y2="{ax.h - ax.b}" stroke="{col}" stroke-dasharray="4 3"/>')
        ly = ax.legend_y(i)
        body.append(f'<rect x="{ax.l}" y="{ly - 9}" width="14" height="10" fill="{col}" fill-opacity="0.5"/>'
                    f'<text x="{ax.l + 22}" y="{ly}" class="legend">{e(g)} (n = {len(v)}{f", mean {round(float(v.mean()), 2) + 0.0:+.2f}" if len(v) else ""})</text>')
    if span:
        y = ax.y(0) - 5
        ly = ax.legend_y(len(groups))
        body.append(f'<line x1="{ax.x(-span):.1f}" x2="{ax.x(span):.1f}" y1="{y:.1f}" y2="{y:.1f}" class="span"/>'
                    f'<line x1="{ax.l}" x2="{ax.l + 14}" y1="{ly - 4}" y2="{ly - 4}" class="span"/>'
                    f'<text x="{ax.l + 22}" y="{ly}" class="legend">range rendered by a traversal (strength {-span:+g} … {span:+g})</text>')
    return _svg(ax, body, f"distribution of {xlabel} per condition")


# ------------------------------------------------------------------------------ data helpers
def morphology_curves(rows: list[dict], columns: list[str], strengths: list[float], image_size: int) -> list[tuple[str, list[float]]]:
    """Median over images of each column's relative change from the strength-0 render, per strength.

    Position columns (Center_X/Y) are relative to the image size, the others to the value at
    strength 0.
    """
    zero = int(np.argmin(np.abs(np.asarray(strengths))))
    by_image: dict[str, dict[float, dict]] = {}
    for r in rows:
        by_image.setdefault(str(r["ImageName"]), {})[round(float(r["Strength"]), 6)] = r
    out = []
    for col in columns:
        per = []
        for frames in by_image.values():
            ref = frames.get(round(strengths[zero], 6), {}).get(col)
            if not isinstance(ref, float) or not np.isfinite(ref):
                continue
            denom = float(image_size) if "Center" in col else abs(ref)
            if denom == 0:
                continue
            per.append([(frames[round(s, 6)][col] - ref) / denom if round(s, 6) in frames and isinstance(frames[round(s, 6)].get(col), float)
                        else np.nan for s in strengths])
        if per:
            with np.errstate(all="ignore"):
                med = np.nanmedian(np.array(per, float), axis=0)
            out.append((measurement_label(col), [float(v) for v in med]))
    return out


def _pct(v: float) -> str:
    return f"{v:.0%}" if np.isfinite(v) else "n/a"


def _num(v: float) -> str:
    """Readable number: 32,070 or 0.512."""
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def _sign(s: int) -> str:
    return "+" if s > 0 else "−"


# --------------------------------------------------------------------------------- sections
CSS = """
:root{--fg:#1d2329;--muted:#5b6670;--line:#d5dae0;--accent:#0b5cad;--warnbg:#fff4d6;--warnline:#d9a300;--badbg:#fde4e1;--badline:#c0392b}
*{box-sizing:border-box}[hidden]{display:none!important}body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);max-width:1180px;margin:0 auto;padding:1.2em 1.5em 4em}
h1{font-size:1.7em;margin:.2em 0}h2{font-size:1.3em;margin-top:2em;border-bottom:2px solid var(--line);padding-bottom:.2em}h3{font-size:1.12em;margin:.2em 0}
.muted{color:var(--muted)}.small{font-size:.86em}code,pre,textarea{font:13px/1.4 ui-monospace,"DejaVu Sans Mono",monospace}
pre{background:#f5f7f9;border:1px solid var(--line);padding:.6em;overflow:auto;white-space:pre-wrap;word-break:break-all}
.banner{padding:.7em 1em;border-left:6px solid var(--warnline);background:var(--warnbg);margin:.8em 0}.banner.bad{border-color:var(--badline);background:var(--badbg)}
table{border-collapse:collapse;margin:.4em 0}th,td{border:1px solid var(--line);padding:.25em .55em;text-align:left;vertical-align:top}th{background:#f0f3f6;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.cards{display:flex;flex-wrap:wrap;gap:1em}.card{border:1px solid var(--line);border-radius:6px;padding:.6em .9em;flex:1 1 300px}
.swatch{display:inline-block;width:.9em;height:.9em;border-radius:2px;vertical-align:-.1em;margin-right:.3em;border:1px solid #0003}
section.attribute{border:1px solid var(--line);border-radius:8px;padding:1em 1.2em;margin:1.6em 0}
.desc{font-size:1.08em;font-weight:600}.controls{display:flex;align-items:center;gap:.8em;flex-wrap:wrap;margin:.8em 0;padding:.5em .8em;background:#f0f5fb;border-radius:6px}
.controls input[type=range]{width:min(420px,60vw)}.controls output{font-weight:600;font-variant-numeric:tabular-nums;min-width:8.5em}
.examples{display:grid;grid-template-columns:repeat(auto-fill,minmax(500px,1fr));gap:.4em 1.5em}.example{margin:.6em 0 1em}.views{border:none}.views td,.views th{border:none;padding:2px 4px;text-align:center;font-weight:normal;background:none}
.views th{font-size:.82em;color:var(--muted)}.views td.rowlabel{text-align:right;font-size:.82em;color:var(--muted);vertical-align:middle}
img.px{width:112px;height:112px;image-rendering:pixelated;background:#000;display:block}
.strip{display:flex;gap:3px;margin-top:.3em;flex-wrap:wrap}.strip figure{margin:0;text-align:center;font-size:.72em;color:var(--muted)}
.strip img{width:56px;height:56px;image-rendering:pixelated;border:2px solid transparent;cursor:pointer;display:block}.strip img.current{border-color:var(--accent)}
.plots{display:flex;flex-wrap:wrap;gap:1.5em}.plots figure{margin:0;flex:1 1 440px}.plots figcaption{font-size:.86em;color:var(--muted);max-width:460px}
svg.plot{max-width:100%;height:auto;font:11px system-ui,"DejaVu Sans",sans-serif}svg .plotarea{fill:#fff;stroke:#aab3bc}svg .tick{stroke:#6b7680}
svg .zero{stroke:#aab3bc;stroke-dasharray:2 3}svg .marker{stroke:var(--accent);stroke-width:2;opacity:.55}svg .span{stroke:#333;stroke-width:3}svg .legend{fill:#333}
textarea{width:100%;min-height:15em;padding:.6em;border:1px solid var(--line);font:14px/1.5 system-ui,"DejaVu Sans",sans-serif}details{margin:.5em 0}summary{cursor:pointer;color:var(--accent)}
nav.toc a{margin-right:1em}a{color:var(--accent)}
@media print{section.attribute{break-inside:avoid}.controls input{display:none}}
"""

SCRIPT = """
"use strict";
document.querySelectorAll("section.attribute").forEach(function (sec) {
  var slider = sec.querySelector("input.strength");
  if (!slider) { return; }
  var label = sec.querySelector("output.strength-value");
  var strengths = slider.getAttribute("data-strengths").split(",");
  var marker = sec.querySelector("line.marker");
  function show(f) {
    f = String(f);
    sec.querySelectorAll("[data-f]").forEach(function (el) { el.hidden = el.getAttribute("data-f") !== f; });
    sec.querySelectorAll(".strip img").forEach(function (el) { el.classList.toggle("current", el.getAttribute("data-frame") === f); });
    if (marker) {
      var x = marker.getAttribute("data-xs").split(",")[Number(f)];
      marker.setAttribute("x1", x); marker.setAttribute("x2", x);
    }
    label.textContent = "strength " + strengths[Number(f)];
  }
  slider.addEventListener("input", function () { show(slider.value); });
  sec.querySelectorAll(".strip img").forEach(function (el) {
    el.addEventListener("click", function () { slider.value = el.getAttribute("data-frame"); show(slider.value); });
  });
  show(slider.value);
});
document.querySelectorAll("button.copy").forEach(function (b) {
  b.addEventListener("click", function () {
    var t = document.getElementById(b.getAttribute("data-target"));
    t.select();
    if (navigator.clipboard) { navigator.clipboard.writeText(t.value).catch(function () {}); }
  });
});
"""


def _summary(results: dict, provenance: dict) -> str:
    conds = results["conditions"]
    names = results["class_names"]
    inv = results["inversion"]
    ranges = results.get("display_ranges") or {}
    chans = "".join(
        f'<tr><td><span class="swatch" style="background:rgb({",".join(str(int(c * 255)) for c in PALETTE[i % len(PALETTE)])})"></span>{e(ch)}</td>'
        f'<td class="num">{e(_num(ranges[ch][0]) + " – " + _num(ranges[ch][1])) if ch in ranges else "not recorded"}</td></tr>'
        for i, ch in enumerate(results["channel_names"]))
    counts = "".join(f'<tr><td>{e(c)}</td><td class="num">{results["per_condition"].get(c, 0)}</td></tr>' for c in conds)
    cm = np.asarray(results.get("confusion_matrix") or [], dtype=float)
    cm_html = ""
    if cm.size:
        head = "".join(f"<th>{e(n)}</th>" for n in names)
        body = "".join(
            f"<tr><th>{e(n)}</th>" + "".join(f'<td class="num">{int(v)}</td>' for v in row) + "</tr>" for n, row in zip(names, cm))
        cm_html = f'<table><tr><th class="small">true ↓ / predicted →</th>{head}</tr>{body}</table>'
    flagged = inv.get("flagged") or []
    flagged_html = ""
    if flagged:
        items = "".join(f'<tr><td>{e(f["image"])}</td><td class="num">{f["psnr_db"]:.1f}</td></tr>' for f in flagged)
        flagged_html = f"<details><summary>{len(flagged)} image(s) excluded</summary><table><tr><th>image</th><th>PSNR (dB)</th></tr>{items}</table></details>"
    return f"""
<h2 id="summary">Summary</h2>
<div class="cards">
<div class="card"><h3>Images</h3><p class="small muted">{e(results["images"])}</p>
<table><tr><th>condition</th><th>images</th></tr>{counts}</table>
<table><tr><th>channel (colour in composites)</th><th>fixed display range</th></tr>{chans}</table></div>
<div class="card"><h3>Classifier on these images</h3>
<p>Accuracy <b>{results["classifier_accuracy"]:.1%}</b> on the images, {results["classifier_accuracy_on_reconstructions"]:.1%} on their reconstructions by the diffusion model.</p>
{cm_html}</div>
<div class="card"><h3>Diffusion model fidelity</h3>
<p>Each image is encoded into the diffusion model ({inv["steps"]} DDIM steps to t = {inv["t_end"]}) and decoded again; the reconstruction should look like the image.
Round-trip PSNR: mean <b>{inv["psnr_db_mean"]:.1f} dB</b>, median {inv.get("psnr_db_median", float("nan")):.1f} dB, worst {inv["psnr_db_min"]:.1f} dB.
Images under {inv["min_psnr_db"]:g} dB are not used: {len(flagged)}.</p>{flagged_html}
<p>Quality gate of the diffusion model (samples resemble the training images): {"passed" if results.get("quality_gate_passed") else "<b>FAILED</b>"}.</p></div>
</div>"""


def _attribute_table(results: dict) -> str:
    rows = []
    for a in results["attributes"]:
        lo, hi = a["delta_p_ci95"]
        rows.append(
            f'<tr><td class="num">{a["rank"]}</td><td>{e(a["target"])}</td><td><a href="#{e(a["id"])}">{e(a.get("description", ""))}</a>'
            f'<div class="small muted">direction {e(a["name"])} ({_sign(a["sign"])})</div></td>'
            f'<td class="num">{a["mean_delta_p"]:+.3f} [{lo:+.3f}, {hi:+.3f}]</td><td class="num">{_pct(a["flip_rate"])}</td>'
            f'<td class="num">{_pct(a["cumulative_flip_rate"])}</td><td class="num">{a["separation_auc"]:.2f}</td>'
            f'<td class="num">{a["separation_p_value"]:.2g}</td></tr>')
    if not rows:
        return '<h2 id="attributes">Ranked attributes</h2><p class="banner">No attribute changed the classifier\'s decision at the tested strength.</p>'
    return f"""
<h2 id="attributes">Ranked attributes</h2>
<p>An <b>attribute</b> is one way the diffusion model can change a cell image. diffex searched for the changes that move the classifier's decision from one
condition towards the other, ranked them by how strongly they do so, and measured what each one does to the cells. Per target condition, rank 1
explains the most images; later ranks explain the images the earlier ones did not.</p>
<table><tr><th>rank</th><th>towards</th><th>what changes in the cells (measured on the renders)</th><th>Δp [95% CI]</th><th>flip rate</th><th>cumulative flips</th><th>AUC</th><th>p</th></tr>
{"".join(rows)}</table>
<p class="small muted"><b>Δp</b>: mean change of the classifier's probability for the target condition when images of the other condition(s) are moved by the attribute at
full strength, with a bootstrap 95 % confidence interval over images. <b>Flip rate</b>: share of those images the classifier then assigns to the target.
<b>Cumulative flips</b>: share flipped by this attribute or a higher-ranked one. <b>AUC</b> and <b>p</b> (Mann-Whitney): how well the images' own
coordinate along the attribute separates the target condition from the others (0.5 = not at all), i.e. whether the conditions differ along it in the data.</p>"""


def _attribute_section(out: Path, results: dict, att: dict, morph_rows: list[dict]) -> str:
    tr = att.get("traversal") or {}
    strengths = [float(s) for s in tr.get("strengths", [])]
    chans = results["channel_names"]
    ranges = results.get("display_ranges") or {}
    low = np.array([ranges.get(c, [np.nan, np.nan])[0] for c in chans], float)
    high = np.array([ranges.get(c, [np.nan, np.nan])[1] for c in chans], float)
    shown = tr.get("shown")
    if shown is None:  # results written before the 'shown' list existed: the hyperstacks, in file order
        shown = [{"index": None, "image": f, "condition": "", "file": f} for f in att.get("files", []) if f.endswith(".tif")]
    target = att["target"]
    shown = sorted(shown, key=lambda ex: ex.get("condition") == target)  # images being moved first, then the target's own
    stacks = []
    for ex in shown:
        path = out / "traversals" / ex["file"]
        if not path.exists():
            raise DiffexError(f"{path}: traversal missing from the experiment folder (re-run explain, or restore the file)")
        stacks.append(read_hyperstack(path, len(chans)))
    if stacks and not np.isfinite(low).all():  # no recorded ranges: one fixed range per channel over all renders
        allv = np.concatenate([s.transpose(1, 0, 2, 3).reshape(len(chans), -1) for s in stacks], 1)
        low, high = np.percentile(allv, 0.5, axis=1), np.percentile(allv, 99.5, axis=1)
    high = np.where(high > low, high, low + 1)
    n_frames = len(strengths)
    zero = int(np.argmin(np.abs(strengths))) if strengths else 0
    start = n_frames - 1
    p_target = tr.get("p_target") or []

    def frames_cell(images: list[str], cls: str = "px") -> str:
        return "".join(f'<img class="{cls}" data-f="{j}" alt="strength {strengths[j]:+.2f}" src="{src}"{"" if j == start else " hidden"}>'
                       for j, src in enumerate(images))

    examples = []
    for ex, stack in zip(shown, stacks):
        comp = [png_uri(composite(stack[j], low, high)) for j in range(n_frames)]
        rows = [f'<tr><td class="rowlabel">render</td><td>{frames_cell(comp)}</td>'
                + "".join(f"<td>{frames_cell([png_uri(grey(stack[j, c], low[c], high[c])) for j in range(n_frames)])}</td>" for c in range(len(chans)))
                + "</tr>"]
        diffs = [png_uri(difference_map(stack[j], stack[zero], low, high, DIFF_SCALE)) for j in range(n_frames)]
        rows.append(f'<tr><td class="rowlabel">change from<br>strength 0</td><td>{frames_cell(diffs)}</td>'
                    + "".join(f"<td>{frames_cell([png_uri(difference_map(stack[j, c:c + 1], stack[zero, c:c + 1], low[c:c + 1], high[c:c + 1], DIFF_SCALE)) for j in range(n_frames)])}</td>"
                              for c in range(len(chans))) + "</tr>")
        head = "<tr><th></th><th>composite</th>" + "".join(f"<th>{e(c)}</th>" for c in chans) + "</tr>"
        ptxt = ""
        if ex.get("index") is not None and ex["index"] < len(p_target):
            ps = p_target[ex["index"]]
            ptxt = "classifier p(" + e(target) + ") = " + "".join(
                f'<b data-f="{j}"{"" if j == start else " hidden"}>{ps[j]:.2f}</b>' for j in range(min(n_frames, len(ps))))
            ptxt += f' <span class="muted">(at strength 0: {ps[zero]:.2f})</span>' if zero < len(ps) else ""
        strip = "".join(f'<figure><img data-frame="{j}" class="{"current" if j == start else ""}" alt="strength {strengths[j]:+.2f}" src="{comp[j]}">'
                        f"{strengths[j]:+.2f}</figure>" for j in range(n_frames))
        role = ""
        if ex.get("condition"):
            role = (f' <span class="muted">({e(ex["condition"])}, moved towards {e(target)})</span>' if ex["condition"] != target
                    else f' <span class="muted">({e(ex["condition"])}, already the target condition; for comparison)</span>')
        examples.append(f'<div class="example"><div><b>{e(ex["image"])}</b>{role}<br>{ptxt}</div>'
                        f'<table class="views">{head}{"".join(rows)}</table><div class="strip" title="all strengths; click one">{strip}</div></div>')

    # morphology along the traversal
    rows_att = [r for r in morph_rows if r.get("attribute") == att["id"]]
    trends = att.get("morphology") or {}
    cols = salient(trends, top=4) or sorted(trends, key=lambda k: -abs(trends[k]["spearman_r"]))[:3]
    image_size = int((results.get("diffusion_model") or {}).get("image_size") or 64)
    curves = morphology_curves(rows_att, cols, strengths, image_size) if rows_att and strengths else []
    morph_fig = (f'<figure>{line_plot(strengths, curves, "strength (towards " + target + " →)", "change from strength 0", start)}'
                 f"<figcaption>Median over {len({r['ImageName'] for r in rows_att})} images of the change of the measurements that move most consistently "
                 "(Otsu segmentation per channel, largest object). All measurements per render are in morphology.csv.</figcaption></figure>"
                 if curves else '<figure><p class="muted">No morphology measurements recorded for this attribute.</p></figure>')
    coord = att.get("coordinate")
    auc = f'AUC {att["separation_auc"]:.2f}, p = {att["separation_p_value"]:.2g}'
    spread = ""
    if coord and att.get("strength"):
        sd = float(np.std(np.concatenate([np.asarray(v, float) for v in coord.values()])))
        if sd > 0:
            ratio = att["strength"] / sd
            spread = (f" Full strength is {ratio:.1f} standard deviations of the real images along this axis"
                      + ("; the renders at the ends go beyond the variation seen in the data." if ratio > 3 else "."))
    dist_fig = (f'<figure>{histogram_plot(coord, "coordinate along the attribute (units of mean ‖h‖)", att.get("strength"))}'
                f"<figcaption>Where the real images lie along this attribute, per condition (dashed: means; {e(auc)}). Higher values point towards "
                f"{e(target)}. A traversal moves an image by the strength on this axis.{spread}</figcaption></figure>"
                if coord else f'<figure><p class="muted">Coordinates per image not recorded ({e(auc)}).</p></figure>')
    lo_ci, hi_ci = att["delta_p_ci95"]
    s_text = ",".join(f"{s:+.2f}" for s in strengths)
    slider = (f'<div class="controls"><label for="s-{e(att["id"])}">Strength</label>'
              f'<input type="range" class="strength" id="s-{e(att["id"])}" min="0" max="{max(0, n_frames - 1)}" step="1" value="{start}" data-strengths="{e(s_text)}">'
              f'<output class="strength-value" for="s-{e(att["id"])}">strength {strengths[start]:+.2f}</output>'
              f'<span class="small muted">0 = the reconstruction; positive = towards {e(target)}; difference maps: '
              f'<span class="swatch" style="background:rgb({",".join(str(int(v * 255)) for v in BRIGHTER)})"></span>brighter, '
              f'<span class="swatch" style="background:rgb({",".join(str(int(v * 255)) for v in DARKER)})"></span>darker than at strength 0 '
              f"(full colour = {DIFF_SCALE:.0%} of the display range)</span></div>") if n_frames else ""
    merged = f' (merged with {e(", ".join(att["merged"]))})' if att.get("merged") else ""
    return f"""
<section class="attribute" id="{e(att["id"])}">
<h3>Rank {att["rank"]} towards {e(target)}</h3>
<p class="desc">{e(att.get("description", ""))}</p>
<p class="small">Δp {att["mean_delta_p"]:+.3f} [{lo_ci:+.3f}, {hi_ci:+.3f}] · flips {_pct(att["flip_rate"])} of {att["n_images"]} images · {e(auc)} ·
direction <code>{e(att["name"])}</code>{merged}, sign {_sign(att["sign"])}, full strength {att.get("strength", 1):g} × mean ‖h‖</p>
{slider}
<div class="examples">{"".join(examples) or '<p class="muted">No traversal images recorded.</p>'}</div>
<div class="plots">{morph_fig}{dist_fig}</div>
</section>"""


def methods_paragraph(results: dict, provenance: dict) -> str:
    """A ready-to-paste methods paragraph (plain text) describing how the explanation was made.

    Example
    -------
    >>> exp = Path("sample_data/experiment")                                           # doctest: +SKIP
    >>> methods_paragraph(read_json(exp / "results.json"), read_json(exp / "provenance.json"))[:40]  # doctest: +SKIP
    'Counterfactual explanations of the class'
    """
    from diffex.report.results import to_plain

    results = to_plain(results)
    cfg = results.get("config") or provenance.get("config") or {}
    sw = provenance.get("software") or {}
    inv = results["inversion"]
    dmi = results.get("diffusion_model") or {}
    per = ", ".join(f"{n} {c}" for c, n in results["per_condition"].items())
    methods = cfg.get("methods") or []
    mtext = "; ".join(METHOD_TEXT.get(m, m) for m in methods) or "the configured methods"
    model = (f"a denoising diffusion model (U-Net, {dmi['parameters'] / 1e6:.1f} M parameters"
             + (f", trained for {dmi['training_steps']} steps" if dmi.get("training_steps") else "")
             + (f" on {dmi['training_images']} images" if dmi.get("training_images") else "") + ")") if dmi.get("parameters") else "a denoising diffusion model"
    size = f" at {dmi['image_size']}×{dmi['image_size']} px" if dmi.get("image_size") else ""
    n_flag = len(inv.get("flagged") or [])
    parts = [
        f"Counterfactual explanations of the classifier were computed with diffex {sw.get('diffex', '')} (PyTorch {sw.get('torch', '?')}, "
        f"diffusers {sw.get('diffusers', '?')}, scikit-image {sw.get('scikit-image', '?')}).",
        f"{results['n_images']} images ({per}; channels {', '.join(results['channel_names'])}) were encoded{size} with "
        f"{inv['steps']} deterministic DDIM inversion steps (to t = {inv['t_end']} of 1000) of {model}"
        + (" evaluated in bfloat16" if cfg.get("precision") == "bf16" else "") + "; the mean round-trip PSNR was "
        f"{inv['psnr_db_mean']:.1f} dB and {n_flag} image(s) below {inv['min_psnr_db']:g} dB were excluded.",
        f"Candidate directions in the activation space of the U-Net's middle block (h-space) were derived from {mtext}"
        f" (directions with |cos| > {cfg.get('merge_cos', 0.9)} merged; {len(results.get('candidates', []))} candidates).",
        f"The {cfg.get('screen_top', '?')} candidates with the largest first-order effect on the classifier's log-probability of the target condition "
        f"(gradients on {results.get('gradient_images', '?')} images) were rendered at ±{cfg.get('strength', 1)} × the mean activation norm "
        f"({cfg.get('mode', '')} edits) on {results.get('rank_images', '?')} images, and up to {cfg.get('max_attributes', '?')} attributes per "
        "target condition were selected greedily by the mean change of the classifier's probability over the images not yet flipped (AttFind).",
        f"Confidence intervals are 95 % percentile bootstrap intervals over images ({cfg.get('bootstrap', '?')} resamples).",
        "Along each attribute, renders were segmented per channel with Otsu's threshold and the largest object's area, perimeter, eccentricity, "
        "solidity, mean intensity and GLCM texture (contrast, homogeneity) were measured; an attribute is described by the measurements with "
        "the largest median change whose median within-image Spearman correlation with strength is at least 0.5.",
        f"Random seed {cfg.get('seed', '?')}. Counterfactual images are hypotheses generated by a model, not observations.",
    ]
    return " ".join(parts)


def _provenance(results: dict, provenance: dict, config_text: str) -> str:
    sw = provenance.get("software") or {}
    sw_rows = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in sw.items())

    def sums(block: dict) -> str:
        return "".join(f"<tr><td>{e(name)}</td><td><code>{e(h)}</code></td></tr>" for name, h in (block.get("sha256") or {}).items())

    clf, dif = provenance.get("classifier") or {}, provenance.get("diffusion") or {}
    imgs = provenance.get("images") or []
    img_rows = "".join(f"<tr><td>{e(r['path'])}</td><td>{e(r['condition'])}</td><td><code>{e(r['sha256'])}</code></td></tr>" for r in imgs)
    para = methods_paragraph(results, provenance)
    return f"""
<h2 id="methods">Methods paragraph</h2>
<p class="small muted">Ready to paste into a manuscript; check it against your own description of the models.</p>
<textarea id="methods-text" readonly>{e(para)}</textarea>
<button type="button" class="copy" data-target="methods-text">Select and copy</button>
<h2 id="provenance">Provenance</h2>
<p>Command: </p><pre>{e(provenance.get("command") or "not recorded (called from Python)")}</pre>
<p>Device: {e(provenance.get("device", "not recorded"))} · seed {e(provenance.get("seed", (results.get("config") or {}).get("seed", "?")))} ·
run time {e(results.get("elapsed_s", "?"))} s</p>
<details><summary>Software versions</summary><table>{sw_rows}</table></details>
<details><summary>Resolved settings (config.resolved.yaml)</summary><pre>{e(config_text)}</pre></details>
<details><summary>Classifier: {e(clf.get("path", results.get("classifier", "")))} (SHA-256 of its files)</summary><table>{sums(clf)}</table></details>
<details><summary>Diffusion model: {e(dif.get("path", results.get("diffusion", "")))} (SHA-256 of its files)</summary><table>{sums(dif)}</table></details>
<details><summary>Input images ({len(imgs)}, SHA-256)</summary><table><tr><th>image</th><th>condition</th><th>SHA-256</th></tr>{img_rows}</table></details>
<p class="small muted">The data behind this page are in the same folder: results.json, attributes.csv, morphology.csv, provenance.json and
traversals/ (full-resolution float32 ImageJ hyperstacks, frames × channels, one per example image).</p>"""


def render_report(out: Path, results: dict, provenance: dict | None = None, morph_rows: list[dict] | None = None,
                  config_text: str = "") -> str:
    """The report's HTML text for an experiment folder ``out`` (reads its traversal hyperstacks)."""
    provenance = provenance or {}
    morph_rows = morph_rows or []
    gate_failed = not results.get("quality_gate_passed", False)
    flagged = len(results["inversion"].get("flagged") or [])
    title = " vs ".join(results["conditions"])
    sections = "".join(_attribute_section(out, results, a, morph_rows) for a in results["attributes"])
    toc = "".join(f'<a href="#{e(a["id"])}">{e(a["target"])} #{a["rank"]}</a>' for a in results["attributes"])
    bad = ""
    if gate_failed:
        bad += ('<p class="banner bad"><b>The diffusion model failed its quality gate:</b> its samples do not match the statistics of real images. '
                "Renders may show cells that do not occur in reality; treat every image and measurement below with extra caution.</p>")
    if flagged:
        bad += f'<p class="banner">{flagged} image(s) could not be reconstructed faithfully and were left out (see the fidelity card).</p>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>diffex report: {e(title)}</title><style>{CSS}</style></head><body>
<h1>What the classifier uses to tell {e(title)}</h1>
<p class="muted">diffex explanation of the classifier <code>{e(results["classifier"])}</code> on <code>{e(results["images"])}</code>.</p>
<p class="banner"><b>The images in this report are counterfactuals: hypotheses generated by a model, not observations.</b>
They show how the classifier's decision changes when a cell is altered in one specific way; they do not show that such cells exist,
and a measured change is a change of the rendered image. Confirm any finding on real cells.</p>
{bad}
<nav class="toc small">Contents: <a href="#summary">summary</a><a href="#attributes">ranked attributes</a>{toc}<a href="#methods">methods</a><a href="#provenance">provenance</a></nav>
{_summary(results, provenance)}
{_attribute_table(results)}
{sections}
{_provenance(results, provenance, config_text)}
<script>{SCRIPT}</script>
</body></html>
"""


def write_report(out: str | Path, results: dict | None = None) -> Path:
    """Write ``out/report.html`` from the experiment folder (``results`` defaults to results.json).

    Example
    -------
    >>> write_report("diffex-demo").name      # doctest: +SKIP
    'report.html'
    """
    from diffex.report.results import read_results, to_plain

    out = Path(out)
    results = to_plain(results if results is not None else read_results(out / "results.json"))
    prov_path = out / "provenance.json"
    provenance = read_json(prov_path) if prov_path.exists() else {}
    cfg_path = out / "config.resolved.yaml"
    config_text = cfg_path.read_text() if cfg_path.exists() else ""
    html = render_report(out, results, provenance, read_morphology(out / "morphology.csv"), config_text)
    path = out / "report.html"
    with atomic_file(path) as fh:
        fh.write(html)
    size = path.stat().st_size
    if size > SIZE_BUDGET:
        log.warning("%s is %.1f MB, over the %.0f MB budget (fewer traversal_images or frames make it smaller)", path, size / 2**20, SIZE_BUDGET / 2**20)
    return path


