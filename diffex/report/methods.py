"""The report's ready-to-paste methods paragraph, from the results and the provenance.

Example
-------
>>> from diffex.report.results import read_results
>>> exp = Path("sample_data/experiment")                                         # doctest: +SKIP
>>> methods_paragraph(read_results(exp / "results.json"), {})[:40]                 # doctest: +SKIP
'Counterfactual explanations of the class'
"""

from __future__ import annotations

from pathlib import Path  # noqa: F401 - used in the example

from diffex.report.ct_view import lesion_readouts
from diffex.report.morphology import measurement_label
from diffex.report.results import Results

METHOD_TEXT = {
    "gradient": "the mean gradient of the classifier's log-probability with respect to h and the leading singular vectors of the per-image gradients",
    "pca": "principal components of h over the images' sampling trajectories",
    "jacobian": "leading right-singular vectors of the Jacobian of the U-Net's noise prediction with respect to h",
    "contrastive": "a contrastive objective on the U-Net's output changes (LatentCLR-style, the DiffEx baseline)",
    "discriminative": "per-step shrinkage linear discriminants between the conditions' real h, solved in cross-validated principal subspaces",
    "gradspan": "per-step shrinkage linear discriminants between the conditions' real h, solved within the span of the classifier's per-image gradients",
    "sparse": "atoms of a sparse dictionary (a sparse autoencoder) of h, ranked by how well their activations separate the conditions",
    "readout": ("per measured readout that separates the conditions, its partial pattern in h (the ridge regression of each step's h "
                "on all non-redundant readouts at once, so that the other readouts stay fixed)"),
    "steer": ("per measured readout that separates the conditions, the h edit whose renders move it and hold the other readouts, "
              "solved from the readouts' measured response to rendered edits along the leading principal axes of h"),
    "hold": ("per measured readout that separates the conditions, its partial pattern in h projected so that, to first order, "
             "the renders leave every other readout unchanged (gradients of smooth stand-ins of the readouts through the sampler)"),
    "learned": ("directions learned without labels by a shift module trained jointly with a reconstructor (which must recover "
                "the direction and the amount of a shift from the original and the shifted render) and a discriminator (which keeps "
                "shifted renders realistic), by backpropagation through the sampler"),
}


def _leak_clause(candidates: list[dict], how: str) -> str:
    """'; {how} moved by up to X % of the steered one' from the candidates' cross-fitted leaks ('' when none has one)."""
    leaks = [c["leak"] for c in candidates if c.get("leak") is not None]
    return f"; {how} moved by up to {100 * max(leaks):.0f} % of the steered one" if leaks else ""


def _training_text(r: Results) -> list[str]:
    """How trained direction methods were trained, and whether their reconstructor learned (a sentence each)."""
    out = []
    lt = r.direction_training.get("learned")
    if lt:
        s, ev = lt["settings"], lt["evaluation"]
        start = "started at the principal axes of the real images' h" if s.get("init") == "pca" else "started at random"
        out.append(f"The learned directions ({lt['k']}, {start}) were trained for "
                   f"{s['iterations']} iterations of {s['batch']} images with {s['steps']}-step renders, shifts of up to "
                   f"{s['strength_sd']:g} SD of the real images along each direction; on {ev['pairs']} fresh shifts the reconstructor "
                   f"named the direction in {100 * ev['accuracy']:.0f} % (chance {100 * ev['chance']:.0f} %, one-sided binomial "
                   f"p = {ev['p_value']:.2g}).")
    sp = r.direction_training.get("sparse")
    if sp:
        held = f", which hold {100 * sp['components_variance']:.0f} % of its variance" if "components_variance" in sp else ""
        out.append(f"The sparse dictionary ({sp['atoms']} atoms, learned in the top {sp['components']} principal components of h{held}) "
                   f"reconstructs {100 * sp['explained_variance']:.0f} % of the variance there with {sp['active_per_row']:.1f} active "
                   "atoms per image and step on average.")
    ro = r.direction_training.get("readout")
    if ro:
        cov = [measurement_label(c) for c in ro["covariates"]]
        out.append(f"The readout directions were regressed on {ro['images']} selection images with {len(cov)} readouts as covariates "
                   f"({', '.join(cov)}), so that across the real images each pattern holds the other readouts fixed.")
    st = r.direction_training.get("steer")
    if st:
        leak = _leak_clause(st["candidates"], "solved on half of the probe images and measured on the other half, another held readout")
        out.append(f"The steered directions were solved from {st['renders']} probe renders ({st['axes']} principal axes of h at "
                   f"±{st['probe_sd']:g} SD on {st['probe_images']} selection images), holding {len(st['held'])} readouts{leak}.")
    ho = r.direction_training.get("hold")
    if ho:
        leak = _leak_clause(ho["candidates"], "solved on half of those images and measured with the gradients of the other half, "
                            "a held readout")
        out.append(f"The held directions used gradients of the readouts through the sampler on {ho['probe_images']} selection images, "
                   f"holding up to {max(c['held'] for c in ho['candidates'])} of {len(ho['smooth'])} differentiable readouts{leak}.")
    return out


def _model_text(r: Results) -> str:
    d = r.diffusion_model
    text = f"a denoising diffusion model (U-Net, {d.parameters / 1e6:.1f} M parameters"
    text += f", trained for {d.training_steps} steps" if d.training_steps else ""
    return text + (f" on {d.training_images} images" if d.training_images else "") + ")"


def _strength_text(cfg: dict) -> str:
    """How far full strength moves an image, in words."""
    s = cfg.get("strength", 1)
    if cfg.get("strength_unit", "h_norm") == "h_norm":
        return f"±{s:g} × the mean activation norm for every image"
    return (f"±{s:g} standard deviations of the selection images' coordinates along each direction (h averaged over the edited steps), "
            "each image stopped at the edge of the real data (the narrower of the 1st-99th percentile range and ±3 SD)")


def _statistics_text(r: Results, cfg: dict) -> list[str]:
    st = r.statistics
    unit = "images" if st.bootstrap_unit == "image" else f"{st.bootstrap_unit}s (images of one {st.bootstrap_unit} resampled together)"
    return [
        f"The usable images were split at random into {st.selection_images} selection images, on which the directions were found and the "
        f"attributes selected, and {st.evaluation_images} evaluation images, on which every reported statistic was computed ({st.split}).",
        f"The {cfg.get('screen_top', '?')} candidates with the largest first-order effect on the classifier's probability of the target "
        f"condition (gradients on {st.gradient_images} selection images) were rendered at full strength, {_strength_text(cfg)} "
        f"({cfg.get('mode', '')} edits), on {st.rank_images} selection images, and up to {cfg.get('max_attributes', '?')} attributes per target "
        "condition were selected greedily by the mean change of the classifier's probability over the images not yet flipped "
        f"(AttFind; images the classifier already assigned to the target were excluded; {st.selection_rule}).",
        f"Each selected attribute was then rendered on the evaluation images: confidence intervals are 95 % percentile bootstrap intervals over "
        f"{unit} ({st.bootstrap_resamples} resamples), flip rates count only images not already assigned to the target, and the separation of "
        f"the conditions along each attribute was tested with two-sided Mann-Whitney U tests, p-values adjusted by {st.p_adjust}.",
    ]


def _input_text(r: Results) -> list[str]:
    """CT/MR: how the images became model inputs (spacing, HU conversion, windows)."""
    return [] if r.imaging is None else [f"Input: {r.imaging.input}; renders were mapped back through the window to "
                                         f"{'HU' if r.imaging.modality == 'ct' else 'scanner units'}."]


def _measurement_text(r: Results) -> str:
    if lesion_readouts(r):
        return ("Along each attribute, the renders of a seeded random sample of evaluation images per condition were measured in HU and mm: "
                "the lesion was segmented at -650 HU (opened at 0.6 times its inscribed radius to detach vessels; the component nearest "
                "the centre, holes filled), and its area, equivalent and maximum diameter, mean and percentile density, solidity, margin "
                "irregularity and share of pixels above -300 HU were measured; an attribute is described by the absolute changes at "
                "full strength of diameter, mean density, solid share and margin irregularity whose median within-image Spearman "
                "correlation with strength is at least 0.5.")
    return ("Along each attribute, the renders of a seeded random sample of evaluation images per condition were segmented per channel with Otsu's "
            "threshold and the largest object's area, perimeter, eccentricity, solidity, mean intensity and GLCM texture (contrast, homogeneity) "
            "were measured; an attribute is described by the measurements with the largest median change whose median within-image Spearman "
            "correlation with strength is at least 0.5.")


def methods_paragraph(r: Results, provenance: dict) -> str:
    """A ready-to-paste methods paragraph (plain text) describing how the explanation was made."""
    cfg = r.config or provenance.get("config") or {}
    sw = provenance.get("software") or {}
    inv = r.inversion
    per = ", ".join(f"{n} {c}" for c, n in r.per_condition.items())
    mtext = "; ".join(METHOD_TEXT.get(m, m) for m in cfg.get("methods") or []) or "the configured methods"
    size = f" at {r.diffusion_model.image_size}×{r.diffusion_model.image_size} px"
    parts = [
        f"Counterfactual explanations of the classifier were computed with diffex {sw.get('diffex', '')} (PyTorch {sw.get('torch', '?')}, "
        f"diffusers {sw.get('diffusers', '?')}, scikit-image {sw.get('scikit-image', '?')}).",
        f"{r.n_images} images ({per}; channels {', '.join(r.channel_names)}) were encoded{size} with {inv.steps} deterministic DDIM "
        f"inversion steps (to t = {inv.t_end} of 1000) of {_model_text(r)}" + (" evaluated in bfloat16" if cfg.get("precision") == "bf16" else "")
        + f"; the mean round-trip PSNR was {inv.psnr_db_mean:.1f} dB and {len(inv.flagged)} image(s) below {inv.min_psnr_db:g} dB were excluded.",
        f"Candidate directions in the activation space of the U-Net's middle block (h-space) were derived from {mtext}"
        f" (directions with |cos| > {cfg.get('merge_cos', 0.9)} merged; {len(r.candidates)} candidates).",
        *_training_text(r),
        *_statistics_text(r, cfg),
        *_input_text(r),
        _measurement_text(r),
        f"Random seed {cfg.get('seed', '?')}. Counterfactual images are hypotheses generated by a model, not observations.",
    ]
    return " ".join(parts)
