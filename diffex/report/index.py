"""One HTML page over many experiment folders (``diffex index DIR``).

Every folder under DIR with a ``results.json`` becomes a row: experiment, date, classifier,
conditions and image counts, the diffusion model's gate, the first attribute towards each
condition with its effect and flip rate, and a relative link to its ``report.html``. A folder whose
``results.json`` cannot be read gets a row that says why, so that a failed or outdated experiment
is visible rather than missing. The page is self-contained (inline CSS and JS: sort by a column
header, filter by text) and opens offline.

Example
-------
>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> write_index(d).name
'index.html'
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from urllib.parse import quote

from diffex.errors import DiffexError
from diffex.fsutil import atomic_file
from diffex.report.results import Results, read_results

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"


def find_experiments(root: Path) -> list[Path]:
    """Folders under ``root`` (itself included) that hold a ``results.json``, sorted; hidden and cache folders skipped."""
    found = []
    for p in sorted(root.rglob("results.json")):
        rel = p.parent.relative_to(root)
        if any(part.startswith(".") or part == "cache" for part in rel.parts):
            continue
        found.append(p.parent)
    return found


def _top(results: Results) -> list[dict]:
    """Per target, its first attribute: name, sign, Δp with its CI, flip rate over eligible images, baseline."""
    rows = []
    for a in results.attributes:
        if a.rank != 1:
            continue
        lo, hi = a.delta_p_ci95
        rows.append({"target": a.target, "name": a.name, "sign": "+" if a.sign > 0 else "−", "delta_p": a.mean_delta_p,
                     "ci": (lo, hi), "flip_rate": a.flip_rate, "n_eligible": a.n_eligible, "baseline": a.baseline_at_target,
                     "auc": a.separation_auc, "p_adjusted": a.separation_p_adjusted})
    return rows


def experiment_row(folder: Path, root: Path) -> dict:
    """The index row of one experiment folder (``error`` set when its results cannot be read)."""
    rel = folder.relative_to(root).as_posix() or "."
    stamp = dt.datetime.fromtimestamp((folder / "results.json").stat().st_mtime, tz=dt.timezone.utc)
    row = {"experiment": rel, "date": stamp.strftime("%Y-%m-%d %H:%M"), "report": None, "error": None}
    if (folder / "report.html").is_file():  # percent-encoded: no scheme (javascript:), no #, ? or % surprises
        row["report"] = quote(f"{rel}/report.html" if rel != "." else "report.html")
    try:
        r = read_results(folder / "results.json")
    except DiffexError as exc:
        row["error"] = str(exc)
        return row
    row.update(classifier=r.classifier, conditions=[(c, r.per_condition.get(c, 0)) for c in r.conditions],
               n_images=r.n_images, gate=r.quality_gate_passed, attributes=_top(r), accuracy=r.classifier_accuracy)
    return row


def render_index(root: Path, rows: list[dict]) -> str:
    """The page's HTML text."""
    from diffex.report.html import environment

    return environment().get_template("index.html.j2").render(
        root=str(root), rows=rows, made=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        css=(STATIC / "report.css").read_text(), js=(STATIC / "index.js").read_text())


def write_index(root: str | Path, out: str | Path | None = None) -> Path:
    """Write the index of every experiment under ``root`` to ``out`` (default ``root/index.html``)."""
    root = Path(root)
    if not root.is_dir():
        raise DiffexError(f"{root}: not a folder")
    out = Path(out) if out else root / "index.html"
    rows = [experiment_row(f, root) for f in find_experiments(root)]
    for r in rows:
        if r["error"]:
            log.warning("%s: %s", r["experiment"], r["error"])
    with atomic_file(out) as fh:
        fh.write(render_index(root, rows))
    log.info("indexed %d experiment(s) under %s in %s", len(rows), root, out)
    return out
