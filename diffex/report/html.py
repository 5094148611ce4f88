"""The experiment report: one self-contained ``report.html`` a biologist can open offline.

Everything the page needs (styles, a few lines of script, images, plots) is inside the file; it
makes no network request. It is built only from the experiment folder (``results.json`` through
:mod:`diffex.report.results`, ``provenance.json``, ``morphology.csv``, ``config.resolved.yaml``
and ``traversals/*.tif``), so ``diffex report EXPERIMENT_DIR`` re-renders it without computing
anything. The HTML comes from Jinja2 templates (``templates/``) with autoescape on: every string
from the user (file, condition and channel names, paths, config values) is escaped by default;
the style sheet and script (``static/``) are the package's own files, inlined.

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
from functools import lru_cache
from pathlib import Path

import numpy as np

from diffex.errors import DiffexError
from diffex.fsutil import atomic_file, read_json
from diffex.report.ct_view import ct_context, lesion_columns, lesion_readouts, lesion_scales
from diffex.report.folder import read_hyperstack, read_morphology
from diffex.report.methods import methods_paragraph
from diffex.report.morphology import measurement_label, salient
from diffex.report.plots import histogram_plot, line_plot
from diffex.report.trust import warnings
from diffex.report.results import Attribute, Results, read_results
from diffex.report.traversal import BRIGHTER, DARKER, PALETTE, composite, difference_map

log = logging.getLogger(__name__)

MAX_THUMB = 128  # px, longest side of an image inlined in the report
SIZE_BUDGET = 20 * 2**20  # bytes; a larger report is written but logged as a warning
DIFF_SCALE = 0.25  # difference maps: full colour = a change of 25 % of the channel's display range
ROLE_TEXT = {"most affected": "most affected image (largest change of p under this attribute): shown for illustration, not used for the measurements",
             "random sample": "randomly drawn image (one of the images the measurements below are computed on)"}
STATIC = Path(__file__).resolve().parent / "static"
# what the images show, in the report's sentences
OBJECTS = {"cells": {"one": "a cell", "many": "cells", "image": "a cell image"},
           "ct": {"one": "a lesion or its surroundings", "many": "lesions", "image": "a CT patch"}}


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


def _rgb(colour) -> str:
    return "rgb(" + ",".join(str(int(c * 255)) for c in colour) + ")"


def _num(v: float) -> str:
    """Readable number: 32,070 or 0.512."""
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


# ------------------------------------------------------------------------------ data helpers
def morphology_curves(rows: list[dict], columns: list[str], strengths: list[float], image_size: int,
                      absolute: dict[str, float] | None = None) -> list[tuple[str, list[float]]]:
    """Median over images of each column's relative change from the strength-0 render, per strength.

    Position columns (Center_X/Y) are relative to the image size, the others to the value at
    strength 0; with ``absolute`` (CT: column -> factor to its unit) the change is absolute, in mm, HU or points.

    Example
    -------
    >>> rows = [{"ImageName": "a", "Strength": s, "DNA_AreaShape_Area": v} for s, v in ((-1, 80.0), (0, 100.0), (1, 120.0))]
    >>> morphology_curves(rows, ["DNA_AreaShape_Area"], [-1.0, 0.0, 1.0], 32)
    [('DNA area', [-0.2, 0.0, 0.2])]
    """
    zero = round(strengths[int(np.argmin(np.abs(np.asarray(strengths))))], 6)
    by_image: dict[str, dict[float, dict]] = {}
    for r in rows:
        by_image.setdefault(str(r["ImageName"]), {})[round(float(r["Strength"]), 6)] = r
    out = []
    for col in columns:
        per = []
        for frames in by_image.values():
            ref = frames.get(zero, {}).get(col)
            denom = 1.0 / absolute[col] if absolute else float(image_size) if "Center" in col else abs(ref) if isinstance(ref, float) else 0.0
            if not isinstance(ref, float) or not np.isfinite(ref) or denom == 0:
                continue
            per.append([(frames[round(s, 6)][col] - ref) / denom if isinstance(frames.get(round(s, 6), {}).get(col), float) else np.nan
                        for s in strengths])
        if per:
            with np.errstate(all="ignore"):
                med = np.nanmedian(np.array(per, float), axis=0)
            out.append((measurement_label(col), [float(v) for v in med]))
    return out


def _ranges(results: Results, stacks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Fixed per-channel display range (low, high): the recorded one, else 0.5-99.5 % of all renders."""
    chans = results.channel_names
    low = np.array([results.display_ranges.get(c, [np.nan, np.nan])[0] for c in chans], float)
    high = np.array([results.display_ranges.get(c, [np.nan, np.nan])[1] for c in chans], float)
    if stacks and not np.isfinite(low).all():
        allv = np.concatenate([s.transpose(1, 0, 2, 3).reshape(len(chans), -1) for s in stacks], 1)
        low, high = np.percentile(allv, 0.5, axis=1), np.percentile(allv, 99.5, axis=1)
    return low, np.where(high > low, high, low + 1)


def _example(ex, stack: np.ndarray, att: Attribute, low: np.ndarray, high: np.ndarray, zero: int, grey_view: bool = False) -> dict:
    """Everything one example needs: composites (grey in the first window for CT), channels and difference maps per frame,
    p(target), its role."""
    frames, n_ch = range(len(stack)), stack.shape[1]
    view = (lambda im: grey(im[0], low[0], high[0])) if grey_view else (lambda im: composite(im, low, high))
    k = 1 if grey_view else n_ch  # the composite's difference map: the channels the composite shows
    p = att.traversal.p_target[ex.index] if ex.index < len(att.traversal.p_target) else []
    shift = att.traversal.shift_sd[ex.index] if ex.index < len(att.traversal.shift_sd) else []
    return {
        "image": ex.image, "condition": ex.condition, "moved": ex.condition != att.target, "role": ex.role,
        "role_text": ROLE_TEXT.get(ex.role, ex.role), "p": p, "shift": [f"{v:+.1f}" for v in shift],
        "composite": [png_uri(view(stack[j])) for j in frames],
        "channels": [[png_uri(grey(stack[j, c], low[c], high[c])) for j in frames] for c in range(n_ch)],
        "diff": [png_uri(difference_map(stack[j, :k], stack[zero, :k], low[:k], high[:k], DIFF_SCALE)) for j in frames],
        "channel_diffs": [[png_uri(difference_map(stack[j, c:c + 1], stack[zero, c:c + 1], low[c:c + 1], high[c:c + 1], DIFF_SCALE))
                           for j in frames] for c in range(n_ch)],
    }


def _spread(att: Attribute) -> str:
    """How far full strength moves an image, against the real images' spread along the attribute."""
    if att.strength_unit == "sd" and len(att.data_edges_sd) == 2:
        lo, hi = att.data_edges_sd
        return (f" A traversal moves each image by up to {att.strength:g} standard deviations of the real images along this axis and stops "
                f"at the edge of the real data ({lo:+.1f} … {hi:+.1f} SD, the narrower of the 1st–99th percentile range and ±3 SD): "
                f"the moved images went {att.mean_shift_sd:.1f} SD towards {att.target} on average, and {att.ends_in_data:.0%} of them "
                "ended inside the real data.")
    vals = [v for vs in att.coordinate.values() for v in vs]
    sd = float(np.std(vals)) if vals else 0.0
    if not sd > 0:
        return ""
    ratio = att.strength / sd
    return (f" Full strength is {ratio:.1f} standard deviations of the real images along this axis"
            + ("; the renders at the ends go beyond the variation seen in the data." if ratio > 3 else "."))


def _consistency(att: Attribute) -> str:
    """The consistency sentence (empty when not measured)."""
    if not att.consistency_measure or not np.isfinite(att.consistency):
        return ""
    return (f"Consistency {att.consistency:.0%}: the share of the measured images whose {measurement_label(att.consistency_measure)} "
            "changes in the same direction as the median image's, by between half and twice as much.")


def _axis(att: Attribute) -> str:
    return "fraction of full strength" if att.strength_unit == "sd" else "strength"


def _histogram(att: Attribute) -> dict:
    """The real images' coordinates per condition, with the range a traversal may render (the data's edges, or ±strength)."""
    if att.strength_unit == "sd" and len(att.data_edges_sd) == 2:
        return histogram_plot(att.coordinate, "coordinate along the attribute (SD of the real images)", edges=tuple(att.data_edges_sd))
    return histogram_plot(att.coordinate, "coordinate along the attribute (units of mean ‖h‖)", edges=(-att.strength, att.strength))


def _section(out: Path, results: Results, att: Attribute, morph_rows: list[dict]) -> dict:
    """The template data of one attribute's section (reads its hyperstacks)."""
    tr = att.traversal
    strengths = [float(s) for s in tr.strengths] if tr else []
    shown = sorted(tr.shown if tr else [], key=lambda ex: ex.condition == att.target)  # images being moved first
    stacks = []
    for ex in shown:
        path = out / "traversals" / ex.file
        if not path.exists():
            raise DiffexError(f"{path}: traversal missing from the experiment folder (re-run explain, or restore the file)")
        stacks.append(read_hyperstack(path, len(results.channel_names)))
    low, high = _ranges(results, stacks)
    zero = int(np.argmin(np.abs(strengths))) if strengths else 0
    start = max(0, len(strengths) - 1)
    rows = [r for r in morph_rows if r.get("attribute") == att.id and r.get("Role", "random sample") == "random sample"]
    trends = {k: vars(v) for k, v in att.morphology.items()}
    lesion = lesion_readouts(results)
    cols = lesion_columns(trends) if lesion else salient(trends, top=4) or sorted(trends, key=lambda k: -abs(trends[k]["spearman_r"]))[:3]
    absolute = lesion_scales(cols) if lesion else None
    curves = morphology_curves(rows, cols, strengths, results.diffusion_model.image_size, absolute) if rows and strengths else []
    return {
        "att": att, "n_frames": len(strengths), "start": start, "zero": zero, "strengths_text": [f"{s:+.2f}" for s in strengths],
        "examples": [_example(ex, st, att, low, high, zero, grey_view=results.imaging is not None) for ex, st in zip(shown, stacks)],
        "brighter": _rgb(BRIGHTER), "darker": _rgb(DARKER), "diff_scale": DIFF_SCALE,
        "morph": line_plot(strengths, curves, f"{_axis(att)} (towards {att.target} →)", "change from strength 0" + (" (mm, HU, points)" if lesion else ""), start,
                           yfmt="{:+g}" if lesion else None) if curves else None,
        "morph_images": len({r["ImageName"] for r in rows}),
        "hist": _histogram(att) if att.coordinate else None,
        "spread": _spread(att),
        "warnings": warnings(att, results.conditions, "lesions" if results.imaging is not None else "cells"),
        "consistency": _consistency(att),
    }


# ------------------------------------------------------------------------------------ render
@lru_cache(maxsize=1)
def environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("diffex.report", "templates"), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update({
        "pct": lambda v: f"{v:.0%}" if np.isfinite(v) else "n/a",
        "pct1": lambda v: f"{v:.1%}" if np.isfinite(v) else "n/a",
        "p": lambda v: f"{v:.2g}" if np.isfinite(v) else "n/a",
        "sgn": lambda s: "+" if s > 0 else "−",
    })
    return env


def render_report(out: Path, results: Results, provenance: dict | None = None, morph_rows: list[dict] | None = None,
                  config_text: str = "") -> str:
    """The report's HTML text for an experiment folder ``out`` (reads its traversal hyperstacks)."""
    provenance = provenance or {}
    ranges = results.display_ranges
    channels = [{"name": ch, "rgb": _rgb(PALETTE[i % len(PALETTE)]),
                 "range": f"{_num(ranges[ch][0])} – {_num(ranges[ch][1])}" if ch in ranges else "not recorded"}
                for i, ch in enumerate(results.channel_names)]
    sections = [_section(Path(out), results, a, morph_rows or []) for a in results.attributes]
    return environment().get_template("report.html.j2").render(
        r=results, prov=provenance, title=" vs ".join(results.conditions), channels=channels, channel_names=results.channel_names,
        sections=sections, flags={sec["att"].id: sec["warnings"] for sec in sections},
        methods=methods_paragraph(results, provenance), config_text=config_text, ct=ct_context(results, DIFF_SCALE),
        obj=OBJECTS["ct" if results.imaging is not None else "cells"],
        css=(STATIC / "report.css").read_text(), js=(STATIC / "report.js").read_text())


def write_report(out: str | Path, results: Results | None = None) -> Path:
    """Write ``out/report.html`` from the experiment folder (``results`` defaults to its results.json).

    Example
    -------
    >>> write_report("diffex-demo").name      # doctest: +SKIP
    'report.html'
    """
    out = Path(out)
    results = results if results is not None else read_results(out / "results.json")
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
