"""Geometry of the report's SVG plots: numbers and labels for the ``plots.svg.j2`` template macros.

Python computes where everything goes (ticks, polylines, histogram outlines, legends); the
template writes the SVG and escapes every label, so that a hostile condition or channel name can
never become markup.

Example
-------
>>> nice_ticks(-1, 1)
[-1.0, -0.5, 0.0, 0.5, 1.0]
>>> p = line_plot([-1, 0, 1], [("DNA area", [-0.2, 0.0, 0.3])], "strength", "change")
>>> p["series"][0]["name"], len(p["series"][0]["dots"])
('DNA area', 3)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CONDITION_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
SERIES_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


@dataclass
class Axes:
    """Linear mapping of data to an SVG plot area; legend rows go below the x label."""

    xlim: tuple[float, float]
    ylim: tuple[float, float]
    legend_rows: int = 0
    w: int = 440
    plot_height: int = 200
    l: int = 52  # noqa: E741 - left margin
    r: int = 12
    t: int = 12

    @property
    def b(self) -> int:
        return 40 + 16 * self.legend_rows  # x tick labels and x label, then one legend row per series

    @property
    def h(self) -> int:
        return self.t + self.plot_height + self.b

    def x(self, v: float) -> float:
        return self.l + (v - self.xlim[0]) / (self.xlim[1] - self.xlim[0]) * (self.w - self.l - self.r)

    def y(self, v: float) -> float:
        return self.h - self.b - (v - self.ylim[0]) / (self.ylim[1] - self.ylim[0]) * (self.h - self.t - self.b)

    def legend_y(self, i: int) -> float:
        return self.h - self.b + 46 + 16 * i

    def frame(self, xlabel: str, ylabel: str, xfmt: str = "{:g}", yfmt: str = "{:g}") -> dict:
        """Plot box, ticks and axis labels for the template's ``frame`` macro."""
        bottom = self.h - self.b
        return {"w": self.w, "h": self.h, "l": self.l, "t": self.t, "right": self.w - self.r, "bottom": bottom,
                "box_w": self.w - self.l - self.r, "box_h": bottom - self.t,
                "xticks": [(round(self.x(v), 1), xfmt.format(v)) for v in nice_ticks(*self.xlim)],
                "yticks": [(round(self.y(v), 1), yfmt.format(v)) for v in nice_ticks(*self.ylim)],
                "xlabel": xlabel, "ylabel": ylabel, "xlabel_x": round((self.l + self.w - self.r) / 2),
                "ylabel_y": round((self.t + bottom) / 2)}


def line_plot(x: list[float], series: list[tuple[str, list[float]]], xlabel: str, ylabel: str,
              marker_frame: int | None = None, yfmt: str | None = None) -> dict:
    """Line plot of several series over x (relative changes, or values in ``yfmt``), with a legend and an optional movable marker."""
    ys = [v for _, vals in series for v in vals if np.isfinite(v)] or [0.0]
    lo, hi = min(min(ys), 0.0), max(max(ys), 0.0)
    pad = 0.08 * (hi - lo or 1.0)
    ax = Axes((min(x), max(x)), (lo - pad, hi + pad), legend_rows=len(series))
    out = {"frame": ax.frame(xlabel, ylabel, "{:+g}", yfmt or ("{:+.0%}" if hi - lo >= 0.05 else "{:+.1%}")), "zero_y": round(ax.y(0), 1),
           "label": f"{ylabel} against {xlabel}", "marker": None, "series": []}
    if marker_frame is not None:
        out["marker"] = {"xs": ",".join(f"{ax.x(v):.1f}" for v in x), "x": round(ax.x(x[marker_frame]), 1)}
    for i, (name, vals) in enumerate(series):
        pts = [(round(ax.x(a), 1), round(ax.y(b), 1)) for a, b in zip(x, vals) if np.isfinite(b)]
        out["series"].append({"name": name, "colour": SERIES_COLOURS[i % len(SERIES_COLOURS)], "dots": pts,
                              "points": " ".join(f"{a:.1f},{b:.1f}" for a, b in pts), "legend_y": ax.legend_y(i)})
    return out


def histogram_plot(groups: dict[str, list[float]], xlabel: str, edges: tuple[float, float] | None = None) -> dict:
    """Overlaid per-group histograms (densities) with the group means dashed, and a bar from ``edges[0]`` to ``edges[1]``
    (the range a traversal may render)."""
    vals = np.concatenate([np.asarray(v, float) for v in groups.values() if len(v)] or [np.zeros(1)])
    lo, hi = float(vals.min()), float(vals.max())
    span = edges
    if span:
        lo, hi = min(lo, span[0]), max(hi, span[1])
    if hi <= lo:
        lo, hi = lo - 1, hi + 1
    edges = np.linspace(lo, hi, 25)
    dens = {g: np.histogram(v, edges, density=True)[0] if len(v) else np.zeros(len(edges) - 1) for g, v in groups.items()}
    top = max(float(d.max()) for d in dens.values()) or 1.0
    ax = Axes((lo, hi), (0, top * 1.15), legend_rows=len(groups) + (1 if span else 0))
    out = {"frame": ax.frame(xlabel, "density", yfmt="{:.2g}"), "label": f"distribution of {xlabel} per condition",
           "groups": [], "span": None}
    for i, (g, d) in enumerate(dens.items()):
        pts = [(ax.x(edges[0]), ax.y(0))]
        for j, v in enumerate(d):
            pts += [(ax.x(edges[j]), ax.y(v)), (ax.x(edges[j + 1]), ax.y(v))]
        pts.append((ax.x(edges[-1]), ax.y(0)))
        v = np.asarray(groups[g], float)
        out["groups"].append({"name": g, "n": len(v), "colour": CONDITION_COLOURS[i % len(CONDITION_COLOURS)],
                              "points": " ".join(f"{a:.1f},{b:.1f}" for a, b in pts), "legend_y": ax.legend_y(i),
                              "mean": f"{round(float(v.mean()), 2) + 0.0:+.2f}" if len(v) else None,
                              "mean_x": round(ax.x(float(v.mean())), 1) if len(v) else None})
    if span:
        out["span"] = {"x0": round(ax.x(span[0]), 1), "x1": round(ax.x(span[1]), 1), "y": round(ax.y(0) - 5, 1),
                       "legend_y": ax.legend_y(len(groups)), "text": f"{span[0]:+.2g} … {span[1]:+.2g}"}
    return out
