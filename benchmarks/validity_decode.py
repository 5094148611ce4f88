"""Readout changes along a traversal -> changes of the true factors: the validity scorer's calibrated measuring instrument.

The scorer measures each true factor on renders through a readout, and the readouts are coupled:
the generator dims the cytoplasm over the nucleus, so a larger nucleus lowers the Actin object's
mean intensity; a more solid nodule has a larger measured diameter. Rendered by the generator
itself, the perfect one-factor edit moves the other factor's readout monotonically and fails the
``specific`` criterion (``validity_oracle.py``). A :class:`Decoder` undoes the coupling: its
``response`` (R readouts x F factors) is the median change of each readout per unit of each
factor's traversal, measured on the oracle's known-answer traversals; along an attribute's
traversal the readout changes dz of an image (relative to its strength-0 render, in the units of
explain's trends) are decoded as ŝ = A⁻¹ dz_factors (A: the factor readouts' rows), in units of
each factor's Δ (the conditions' difference). The nuisance readouts' changes not explained by
the decoded factors, dz_nuisance − B ŝ − C ŝ² (B: their rows; C: their curvature, since e.g. the
measured margin irregularity of a nodule does not follow its diameter linearly), are their drift.

Scored as factor f, another factor counts as unchanged in an image when its decoded change spans
at most :data:`TIE` of f's decoded change there (the decoding error grows with the size of the
edit); otherwise it gives its Spearman r with strength, and the factor's r is the median over the
images, as in explain's trends. TIE was chosen on the oracle (decoder fitted on seed 5, checked on
seeds 6 and 7, 32 cells or patches per condition): the smallest of 0, 0.05, 0.1, 0.15 and 0.2 at
which every perfect edit is specific on both check seeds. Microscopy needs none (|r| 0.04-0.05 at
0); the CT diameter edit needs 0.05 (|r| 0.45 at 0 on seed 7, 0.12 at 0.05).

Example
-------
>>> dec = Decoder(factors=("a", "b"), columns=("A", "B"), nuisance=(), response=np.array([[0.5, 0.0], [-0.1, 0.2]]),
...               curvature=np.zeros((0, 2)), relative=False)
>>> s = np.linspace(-1, 1, 5)
>>> dz = np.stack([0.5 * s, -0.1 * s], axis=-1)[None]          # one image, a perfect edit of a: B's readout follows
>>> decode(dec, dz)[0].round(6).tolist()[-1]
[1.0, 0.0]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TIE = 0.05  # another factor has not changed in an image when its decoded change spans at most this share of the scored one's


@dataclass(frozen=True)
class Decoder:
    """How the readouts respond to the true factors (see the module docstring)."""

    factors: tuple[str, ...]  # true factors
    columns: tuple[str, ...]  # their readouts, in the same order
    nuisance: tuple[str, ...]  # nuisance readouts
    response: np.ndarray  # (len(columns) + len(nuisance), F): readout change per unit of each factor's traversal
    curvature: np.ndarray  # (len(nuisance), F): the nuisance readouts' change per squared unit (their response is not linear)
    relative: bool  # microscopy: changes relative to the strength-0 value (positions: to image_size); CT: absolute
    image_size: float = 0.0

    def to_dict(self) -> dict:
        return {"factors": list(self.factors), "columns": list(self.columns), "nuisance": list(self.nuisance),
                "response": np.asarray(self.response).round(6).tolist(),
                "curvature": np.asarray(self.curvature).round(6).tolist(), "relative": self.relative, "image_size": self.image_size}


def changes(values: np.ndarray, ref: np.ndarray, columns: tuple[str, ...], relative: bool, image_size: float) -> np.ndarray:
    """Readout changes (n, S, R) of values (n, S, R) against each image's strength-0 values ref (n, R), in trend units."""
    if not relative:
        return values - ref[:, None]
    denom = np.array([image_size if "Center" in c else np.nan for c in columns])
    denom = np.where(np.isnan(denom)[None], np.abs(ref), denom[None])  # (n, R)
    return (values - ref[:, None]) / np.where(denom == 0, np.nan, denom)[:, None]


def traversal_arrays(rows: list[dict], att_id: str, columns: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image with a strength-0 row: strengths (n, S), readouts (n, S, R) and the strength-0 readouts (n, R).

    Images are grouped by ``ImageName``; images on another strength grid than the most common one are left out.
    """
    by_image: dict[str, list[dict]] = {}
    for r in rows:
        if str(r["attribute"]) == att_id:
            by_image.setdefault(str(r["ImageName"]), []).append(r)
    s_all, v_all, ref_all = [], [], []
    for img_rows in by_image.values():
        img_rows = sorted(img_rows, key=lambda r: float(r["Strength"]))
        s = np.array([float(r["Strength"]) for r in img_rows])
        zero = np.flatnonzero(np.isclose(s, 0.0, atol=1e-9))
        if not len(zero):
            continue
        v = np.array([[float(r.get(c, np.nan)) if r.get(c) not in (None, "") else np.nan for c in columns] for r in img_rows])
        s_all.append(s), v_all.append(v), ref_all.append(v[zero[0]])
    grids = [tuple(np.round(s, 6)) for s in s_all]
    if not grids:
        return np.zeros((0, 0)), np.zeros((0, 0, len(columns))), np.zeros((0, len(columns)))
    common = max(set(grids), key=grids.count)  # explain renders every image at the same fractions of its strength
    keep = [i for i, g in enumerate(grids) if g == common]
    return np.stack([s_all[i] for i in keep]), np.stack([v_all[i] for i in keep]), np.stack([ref_all[i] for i in keep])


def decode(dec: Decoder, dz: np.ndarray) -> np.ndarray:
    """Decoded factor changes ŝ (n, S, F) from the factor readouts' changes dz (n, S, >= F), in units of Δ."""
    f = len(dec.factors)
    inv = np.linalg.inv(np.asarray(dec.response, float)[:f])  # (F, F)
    return np.einsum("fr,nsr->nsf", inv, dz[..., :f])


def decoded_r(strengths: np.ndarray, values: np.ndarray, span: np.ndarray | None = None, tie: float = TIE) -> float:
    """Median over images of the Spearman r of a decoded factor (n, S) with strength (n, S).

    Images with fewer than 3 finite values are left out. With ``span`` (n,), the decoded span of the matched factor in
    each image, an image whose values span at most ``tie`` x its ``span`` counts as unchanged (r 0); without it, as in
    explain's trends, only one whose values do not move at all.

    >>> s = np.tile(np.linspace(-1, 1, 5), (3, 1))
    >>> round(decoded_r(s, np.array([s[0], s[0], 0.01 * s[0]]), span=np.full(3, 2.0)), 6)  # one image within the tie
    1.0
    >>> decoded_r(s, np.array([0.05 * s[0], 0.05 * s[0], -s[0]]), span=np.full(3, 2.0))  # two within it: their median
    0.0
    """
    from scipy.stats import spearmanr

    rs = []
    for i, (si, vi) in enumerate(zip(np.atleast_2d(strengths), np.atleast_2d(values))):
        ok = np.isfinite(vi)
        if ok.sum() < 3:
            continue
        limit = 0.0 if span is None else tie * float(np.nan_to_num(span[i], nan=np.inf))
        rs.append(float(spearmanr(si[ok], vi[ok])[0]) if np.ptp(vi[ok]) > limit else 0.0)
    return float(np.median(rs)) if rs else 0.0


def _span(x: np.ndarray) -> np.ndarray:
    """Per image, the range of the finite values of x (n, S); NaN where fewer than 3 are finite."""
    out = np.full(x.shape[0], np.nan)
    for i, xi in enumerate(x):
        ok = np.isfinite(xi)
        if ok.sum() >= 3:
            out[i] = np.ptp(xi[ok])
    return out


def decoded_figures(dec: Decoder, rows: list[dict], att_id: str, factor: str | None = None) -> dict:
    """Decoded r of every factor (``r``: factor -> r), its median change from the traversal's first to its last render
    (``change``, in units of Δ) and each nuisance readout's residual change at the traversal's ends (``drift``: column ->
    (median change at the largest strength, at the smallest)), for one attribute's rows.

    With ``factor`` (the one the attribute is scored as) every other factor's r counts, per image, a decoded change
    within :data:`TIE` of the factor's own as no change; the factor's own r, and every r without ``factor``, count any.
    """
    cols = (*dec.columns, *dec.nuisance)
    s, v, ref = traversal_arrays(rows, att_id, cols)
    if not len(s):
        return {"r": dict.fromkeys(dec.factors, 0.0), "change": dict.fromkeys(dec.factors, float("nan")), "drift": {}}
    dz = changes(v, ref, cols, dec.relative, dec.image_size)  # (n, S, R)
    s_hat = decode(dec, dz)  # (n, S, F)
    nuis = np.asarray(dec.response, float)[len(dec.factors):]  # (N, F)
    resid = (dz[..., len(dec.factors):] - np.einsum("kf,nsf->nsk", nuis, s_hat)
             - np.einsum("kf,nsf->nsk", np.asarray(dec.curvature, float), s_hat**2))  # (n, S, N)
    drift = {c: (float(np.nanmedian(resid[:, -1, k])), float(np.nanmedian(resid[:, 0, k]))) for k, c in enumerate(dec.nuisance)}
    end_to_end = s_hat[:, -1] - s_hat[:, 0]  # (n, F)
    span = None if factor is None else _span(s_hat[..., dec.factors.index(factor)])
    r = {f: decoded_r(s, s_hat[..., k], None if f == factor else span) for k, f in enumerate(dec.factors)}
    return {"r": r, "change": {f: float(np.nanmedian(end_to_end[:, k])) for k, f in enumerate(dec.factors)}, "drift": drift}


def worst_drift(drift: dict, nuisance: dict, scale: dict | None = None) -> tuple[float | None, str | None]:
    """The largest |change| at either end among the nuisance readouts (``drift``: column -> (at max, at min), as
    :func:`decoded_figures` gives), over its ``scale`` (CT: absolute changes made relative), and its name in ``nuisance``
    (name -> column); unmeasured: inf.

    >>> worst_drift({"X": (0.02, -0.05), "Y": (0.01, 0.0)}, {"x": "X", "y": "Y"})
    (0.05, 'x')
    """
    scale = scale or {}
    d = {n: (np.inf if np.isnan(drift[c]).any() else max(abs(drift[c][0]), abs(drift[c][1])) / scale.get(c, 1.0))
         for n, c in nuisance.items() if c in drift}
    worst = max(d, key=d.get) if d else None
    return (d[worst] if worst else None), worst


def fit_response(rows: list[dict], factors: tuple[str, ...], columns: tuple[str, ...], nuisance: tuple[str, ...],
                 relative: bool, image_size: float = 0.0) -> Decoder:
    """A :class:`Decoder` from known-answer traversals: ``rows`` as morphology.csv's, ``attribute`` = the factor traversed
    (strength = its change in units of Δ), one ImageName per cell; the response is each readout's least-squares slope on
    strength, the median over the cells."""
    cols = (*columns, *nuisance)
    resp, curv = np.zeros((len(cols), len(factors))), np.zeros((len(nuisance), len(factors)))
    for j, f in enumerate(factors):
        s, v, ref = traversal_arrays(rows, f, cols)
        if not len(s):
            raise ValueError(f"no traversals of {f} among the rows")
        dz = changes(v, ref, cols, relative, image_size)
        for i in range(len(cols)):
            deg = 1 if i < len(columns) else 2
            fits = np.array([np.polyfit(si[ok], di[ok], deg) for si, di in zip(s, dz[..., i]) if (ok := np.isfinite(di)).sum() > 3])
            if len(fits):
                resp[i, j] = float(np.median(fits[:, -2]))
                if deg == 2:
                    curv[i - len(columns), j] = float(np.median(fits[:, 0]))
    if abs(np.linalg.det(resp[: len(factors)])) < 1e-12:
        raise ValueError(f"the readouts {columns} do not tell the factors {factors} apart (singular response)")
    return Decoder(tuple(factors), tuple(columns), tuple(nuisance), resp, curv, relative, float(image_size))
