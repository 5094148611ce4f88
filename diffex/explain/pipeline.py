"""``explain``: the stages in order over an experiment folder, each resumable from what is on disk.

images -> invert (cache per image; split into selection and evaluation images) -> gradients ->
candidates -> screen -> effect table -> select (AttFind) -> evaluate (renders of the picks on the
evaluation images) -> statistics -> traversals + describe -> write (results.json, attributes.csv,
morphology.csv, provenance.json, report.html).

Every stage is a plain function in its own module (:mod:`~diffex.explain.invert`,
:mod:`~diffex.explain.search`, :mod:`~diffex.explain.select`, :mod:`~diffex.explain.describe`,
:mod:`~diffex.explain.write`) that stores its result under ``OUT/cache`` keyed by the digests of
its inputs, so that an interrupted run, rerun, skips finished work, gives identical results, and
never reuses a result whose inputs changed.

Example
-------
>>> res = explain("sample_data/models/classifier", "sample_data/heldout", "exp1")   # doctest: +SKIP
>>> res.attributes[0].description                                                  # doctest: +SKIP
'DNA area -49%, Actin object intensity -48%, Actin eccentricity +40%'
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from diffex.explain.config import ExplainConfig
from diffex.explain.describe import describe_stage
from diffex.explain.inputs import default_out, open_experiment
from diffex.explain.invert import invert_stage
from diffex.explain.search import (
    calibration_stage,
    candidates_stage,
    effect_table_stage,
    gradients_stage,
    screen_stage,
)
from diffex.explain.select import evaluation_stage, select_stage, statistics_stage
from diffex.explain.write import build_results, write_stage
from diffex.fsutil import folder_lock
from diffex.progress import make_progress
from diffex.report.results import Attribute, Results

log = logging.getLogger(__name__)


@dataclass
class ExplainResult:
    """What :func:`explain` returns: the experiment folder and its results."""

    out: Path
    results: Results

    @property
    def attributes(self) -> list[Attribute]:
        return self.results.attributes

    @property
    def report(self) -> Path:
        return self.out / "report.html"


def explain(classifier: str | Path, images: str | Path, out: str | Path | None = None, diffusion: str | Path | None = None,
            config: ExplainConfig | None = None, device: str = "auto", axes: str | None = None, trust_checkpoint: bool = False,
            force: bool = False, command: str | None = None, show_progress: bool = True,
            diffusion_normalization: str | Path | None = None) -> ExplainResult:
    """Find, rank, render and describe the h-space attributes that change the classifier's decision.

    Parameters
    ----------
    classifier : path to a classifier model folder or TorchScript file (see :mod:`diffex.models.classifier`)
    images : folder with one subfolder per condition, or a CSV manifest
    out : experiment folder (default ``diffex-<images name>``)
    diffusion : diffusion model folder; default: ``config.diffusion``, else the one recorded with the classifier
    config : :class:`ExplainConfig`
    diffusion_normalization : JSON file (or Normalization) for a diffusion model folder without diffex.json
    """
    t_start = time.time()
    out = Path(out) if out else default_out(images)
    with folder_lock(out):  # a second process on the same folder is refused; released if this one dies
        exp = open_experiment(classifier, images, out, diffusion, config or ExplainConfig(), device=device, axes=axes,
                              trust_checkpoint=trust_checkpoint, force=force, command=command, show_progress=show_progress,
                              diffusion_normalization=diffusion_normalization)
        with make_progress(show_progress) as progress:
            inv = invert_stage(exp, progress)
            grads = gradients_stage(exp, inv, progress)
            cands_key, cands = candidates_stage(exp, inv, grads, progress)
            shortlist = screen_stage(exp, inv, grads, cands_key, cands)
            cal = calibration_stage(exp, inv, cands)
            table = effect_table_stage(exp, inv, cands, shortlist, cal, progress)
            picks = select_stage(exp, inv, shortlist, table, cal.coords)
            ev = evaluation_stage(exp, inv, cands_key, cands, cal, picks, progress)
            attributes = statistics_stage(exp, inv, cands, shortlist, cal, picks, ev)
            attributes, morphology_rows = describe_stage(exp, inv, cands_key, cands, cal, ev, attributes, progress)
        results = build_results(exp, inv, grads, cands, shortlist, table, attributes, t_start)
        write_stage(exp, inv, results, morphology_rows)
    log.info("explain finished in %.0f s: %s", time.time() - t_start, exp.out)
    return ExplainResult(exp.out, results)
