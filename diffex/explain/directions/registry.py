"""Registry of candidate h-space direction generators.

Every generator shares one signature, ``(ctx: DirectionContext, k: int) -> (Tensor[k', *h_shape],
names)``, returns unit-norm directions, and is registered by name with :func:`register`.
:func:`generate` runs the chosen methods and merges near-parallel candidates (|cos| above a
threshold: the earlier one is kept and records what it absorbed).

Methods
-------
``pca``          principal components of h over the images' denoising trajectories (per-step centred).
``gradient``     classifier gradients through the sampler: the mean gradient towards each target
                 condition, then the top right singular vectors of the stacked per-image gradients.
``jacobian``     top right singular vectors of ∂ε/∂h (subspace iteration; J·v by central differences,
                 Jᵀ·u by autograd) at a few timesteps of the edit interval.
``discriminative``  per denoising step, the shrinkage-LDA direction that separates one condition's real
                 images from the others' (regularization chosen by cross-validated AUC), averaged over
                 the edit steps; also the early-step and late-step averages.
``gradspan``     the same per-step LDA, solved within the span of the classifier's per-image gradients:
                 where the conditions differ *and* the classifier looks.
``sparse``       atoms of a sparse dictionary (sparse autoencoder) of h, ranked by how well each atom's
                 activation separates the conditions.
``readout``      per measured readout (object size, intensity, ...; lesion mm and HU for CT) that separates the
                 conditions, the pattern in h that moves it while the other readouts stay fixed (partial regression).
``steer``        the same readouts, but from measured renders: the top principal axes of h are rendered, the readouts'
                 response to each measured, and the edit that moves one readout and holds the others solved from it.
``hold``         the patterns of ``readout``, with every other readout held by the gradients of its renders through
                 the sampler (first order, soft readouts).
``learned``      the seed method: K directions a shift module proposes, trained with a reconstructor that
                 must tell which direction and how far from (render, shifted render) and a discriminator
                 that keeps shifted renders realistic, through the sampler.
``contrastive``  DiffEx-style baseline: K directions trained with the LatentCLR loss, so that one
                 direction changes the UNet's output in the same way on every image and differently
                 from the other directions.

Example
-------
>>> list_methods()
['contrastive', 'discriminative', 'gradient', 'gradspan', 'hold', 'jacobian', 'learned', 'pca', 'readout', 'sparse', 'steer']
>>> cands = generate(ctx, ["gradient", "pca"], k=4)            # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from diffex.errors import DiffexError
from diffex.models.hooks import mid_block_offset

Generator = Callable[["DirectionContext", int], tuple[torch.Tensor, list[str]]]
_REGISTRY: dict[str, Generator] = {}
_VERSIONS: dict[str, int] = {}


def register(name: str, version: int = 1) -> Callable[[Generator], Generator]:
    """Decorator adding a generator to the registry under ``name``.

    ``version`` goes up when what the method returns for the same input changes (its vectors, names,
    or the diagnostics that later stages read), so that cached candidates of an earlier version are
    not reused.
    """

    def wrap(fn: Generator) -> Generator:
        _REGISTRY[name] = fn
        _VERSIONS[name] = version
        return fn

    return wrap


def method_versions(methods: list[str]) -> dict[str, int]:
    """The versions of ``methods`` above 1 (first versions add nothing, so existing cache keys stay valid)."""
    return {m: _VERSIONS[m] for m in methods if _VERSIONS.get(m, 1) != 1}


def list_methods() -> list[str]:
    return sorted(_REGISTRY)


def get_method(name: str) -> Generator:
    if name not in _REGISTRY:
        raise DiffexError(f"unknown direction method {name!r}; available: {', '.join(list_methods())}")
    return _REGISTRY[name]


@dataclass
class DirectionContext:
    """What generators may use. Tensors are on the CPU unless noted.

    Attributes
    ----------
    pair : ModelPair
    x0 : Tensor (N, C, H, W)       reconstructions in model space (a subset is enough)
    h : Tensor (N, S, *h_shape)    h at every rendering step of each reconstruction
    grads : Tensor (M, *h_shape)   per-image classifier gradients (M <= N images)
    grad_targets : ndarray (M,)    the target class index of each gradient
    class_names : list of str
    timesteps : ndarray            the DDIM timesteps of the edit interval (ascending)
    h_scale : float                mean ‖h‖ (strength unit)
    seed : int
    contrastive_iterations : int
    labels : ndarray (N,) or None  the class index (condition) of each image in ``h``
    xt : Tensor (N, C, H, W) or None  the images' inverted x at t_end (methods that render: ``learned``)
    sampler : SamplerSpec or None  explain's sampler (``learned`` renders with its t_end and t_edit)
    learned_setting : str          ``learned``'s preset: auto, reduced or full
    cache : Path or None           the experiment's cache folder (methods that cache their training)
    cache_inputs : dict            digests of what those cached results depend on (images, models)
    diagnostics : dict             filled by methods: what their training did, by method name
    progress : Progress or None    where methods that train show a progress bar (``add_task``/``advance``)
    readouts : callable or None    raw images (N, C, H, W) ndarray -> {readout name: (N,) values}, the experiment's
                                   morphology readouts (``readout``, ``steer``)
    edit_sampler : SamplerSpec or None  the sampler explain renders edits with (``steer`` measures its renders, ``hold``
                                   differentiates them)
    soft_readouts : callable or None  raw renders (B, C, H, W) tensor, reference images (B, C, H, W) ndarray ->
                                   {readout name: (B,) tensor}: differentiable stand-ins of ``readouts`` (``hold``)
    """

    pair: object
    x0: torch.Tensor
    h: torch.Tensor
    grads: torch.Tensor
    grad_targets: np.ndarray
    class_names: list[str]
    timesteps: np.ndarray
    h_scale: float
    seed: int = 0
    contrastive_iterations: int = 30
    probe_images: int = 8
    labels: np.ndarray | None = None
    xt: torch.Tensor | None = None
    sampler: object = None
    learned_setting: str = "auto"
    cache: Path | None = None
    cache_inputs: dict = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)
    progress: object = None
    readouts: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None
    edit_sampler: object = None
    soft_readouts: Callable[[torch.Tensor, np.ndarray], dict[str, torch.Tensor]] | None = None

    @property
    def edit_steps(self) -> int:
        """How many of h's steps (ordered from t_end down) the edit acts on: the first ``len(timesteps)``."""
        return len(self.timesteps)

    @property
    def h_shape(self) -> tuple[int, ...]:
        return tuple(self.h.shape[2:])

    def probe_batch(self) -> torch.Tensor:
        """A fixed, seeded subset of reconstructions (B, C, H, W) for Jacobian/contrastive probes."""
        g = torch.Generator().manual_seed(self.seed)
        idx = torch.randperm(self.x0.shape[0], generator=g)[: self.probe_images]
        return self.x0[idx.sort().values]

    def noised(self, x0: torch.Tensor, t: int) -> torch.Tensor:
        """x0 (B, C, H, W) noised to timestep t with seeded noise (probe inputs)."""
        a = float(self.pair.dm.alphas_cumprod[t])
        g = torch.Generator().manual_seed(self.seed + 7919 * t)
        noise = torch.randn(x0.shape, generator=g)
        return math.sqrt(a) * x0 + math.sqrt(1 - a) * noise


@dataclass
class Candidates:
    """Unit-norm candidate directions with their names and provenance."""

    vectors: torch.Tensor  # (K, *h_shape)
    names: list[str]
    merged: dict[str, list[str]] = field(default_factory=dict)
    diagnostics: dict = field(default_factory=dict)  # by method: what its training did (e.g. ``learned``)

    def __len__(self) -> int:
        return len(self.names)

    def named(self, index: int) -> tuple[str, int]:
        """The readout candidate ``index`` is named for and the way its positive direction moves it (+1 higher, -1 lower).

        Methods that name a readout (``readout``, ``steer``, ``hold``) list each output with its ``name``, ``readout`` and
        ``higher`` in their diagnostics' ``candidates``; any other candidate gives ``("", 0)``.

        >>> c = Candidates(torch.zeros(1, 2), ["hold:towards b: DNA area lower"],
        ...                diagnostics={"hold": {"candidates": [{"name": "towards b: DNA area lower", "readout": "DNA_AreaShape_Area",
        ...                                                       "higher": False}]}})
        >>> c.named(0)
        ('DNA_AreaShape_Area', -1)
        """
        method, _, rest = self.names[index].partition(":")
        diag = self.diagnostics.get(method)
        rows = diag.get("candidates", []) if isinstance(diag, dict) else []
        row = next((r for r in rows if isinstance(r, dict) and r.get("name") == rest and "higher" in r), None)
        return (str(row["readout"]), 1 if row["higher"] else -1) if row else ("", 0)


def unit(v: torch.Tensor) -> torch.Tensor:
    flat = v.flatten(1)
    return (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(v)


def generate(ctx: DirectionContext, methods: list[str], k: int, merge_cos: float = 0.9) -> Candidates:
    """Run each method for ``k`` directions and merge near-parallel ones (|cos| > ``merge_cos``)."""
    vecs, names = [], []
    for m in methods:
        v, n = get_method(m)(ctx, k)
        if v.shape[1:] != ctx.h_shape:
            raise DiffexError(f"direction method {m!r} returned shape {tuple(v.shape[1:])}, expected {ctx.h_shape}")
        vecs.append(unit(v.float()))
        names += [f"{m}:{x}" for x in n]
    allv = torch.cat(vecs)
    keep: list[int] = []
    merged: dict[str, list[str]] = {}
    flat = allv.flatten(1)
    for i in range(len(names)):
        dup = next((j for j in keep if abs(float(flat[i] @ flat[j])) > merge_cos), None)
        if dup is None:
            keep.append(i)
        else:
            merged.setdefault(names[dup], []).append(names[i])
    return Candidates(allv[keep], [names[i] for i in keep], merged, dict(ctx.diagnostics))


def eps_with(dm, x: torch.Tensor, t: int, delta: torch.Tensor | None) -> torch.Tensor:
    """Noise prediction for x (B, C, H, W) at t with ``delta`` added to h (None: unedited)."""
    with mid_block_offset(dm.unet, delta):
        return dm.eps(x, t)
