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
``contrastive``  DiffEx-style baseline: K directions trained with the LatentCLR loss, so that one
                 direction changes the UNet's output in the same way on every image and differently
                 from the other directions.

Example
-------
>>> list_methods()
['contrastive', 'gradient', 'jacobian', 'pca']
>>> cands = generate(ctx, ["gradient", "pca"], k=4)            # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from diffex.engine import frozen, mid_block_offset
from diffex.errors import DiffexError

Generator = Callable[["DirectionContext", int], tuple[torch.Tensor, list[str]]]
_REGISTRY: dict[str, Generator] = {}


def register(name: str) -> Callable[[Generator], Generator]:
    """Decorator adding a generator to the registry under ``name``."""

    def wrap(fn: Generator) -> Generator:
        _REGISTRY[name] = fn
        return fn

    return wrap


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

    def __len__(self) -> int:
        return len(self.names)


def _unit(v: torch.Tensor) -> torch.Tensor:
    flat = v.flatten(1)
    return (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).view_as(v)


def generate(ctx: DirectionContext, methods: list[str], k: int, merge_cos: float = 0.9) -> Candidates:
    """Run each method for ``k`` directions and merge near-parallel ones (|cos| > ``merge_cos``)."""
    vecs, names = [], []
    for m in methods:
        v, n = get_method(m)(ctx, k)
        if v.shape[1:] != ctx.h_shape:
            raise DiffexError(f"direction method {m!r} returned shape {tuple(v.shape[1:])}, expected {ctx.h_shape}")
        vecs.append(_unit(v.float()))
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
    return Candidates(allv[keep], [names[i] for i in keep], merged)


# ------------------------------------------------------------------------------------- methods
@register("pca")
def pca_directions(ctx: DirectionContext, k: int) -> tuple[torch.Tensor, list[str]]:
    """Top-k principal axes of h, centred per denoising step, over all images and steps."""
    h = ctx.h.double()  # (N, S, *h)
    centred = (h - h.mean(0, keepdim=True)).flatten(2).flatten(0, 1)  # (N*S, D)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    k = min(k, vh.shape[0])
    explained = (s[:k] ** 2 / (s**2).sum()).tolist()
    return vh[:k].float().view(k, *ctx.h_shape), [f"pc{i + 1} ({e:.0%} var)" for i, e in enumerate(explained)]


@register("gradient")
def gradient_directions(ctx: DirectionContext, k: int) -> tuple[torch.Tensor, list[str]]:
    """Mean classifier gradient towards each target condition, then top singular vectors of all g_i."""
    g = ctx.grads.double().flatten(1)  # (M, D)
    vecs, names = [], []
    for t in np.unique(ctx.grad_targets):
        vecs.append(g[torch.as_tensor(ctx.grad_targets == t)].mean(0))
        names.append(f"mean towards {ctx.class_names[int(t)]}")
    if len(np.unique(ctx.grad_targets)) == 2 and len(vecs) == 2:
        # Two conditions: towards A is about minus towards B; keep one signed direction.
        vecs, names = [vecs[1] - vecs[0]], [f"mean towards {ctx.class_names[int(np.unique(ctx.grad_targets)[1])]}"]
    _, _, vh = torch.linalg.svd(g, full_matrices=False)
    n_sv = max(0, k - len(vecs))
    for i in range(min(n_sv, vh.shape[0])):
        v = vh[i]
        v = v if float((g @ v).mean()) >= 0 else -v
        vecs.append(v)
        names.append(f"sv{i + 1}")
    return torch.stack(vecs[:k]).float().view(-1, *ctx.h_shape), names[:k]


def _eps_with(dm, x: torch.Tensor, t: int, delta: torch.Tensor | None) -> torch.Tensor:
    with mid_block_offset(dm.unet, delta):
        return dm.eps(x, t)


@register("jacobian")
def jacobian_directions(ctx: DirectionContext, k: int, iterations: int = 3) -> tuple[torch.Tensor, list[str]]:
    """Top-k right singular vectors of J = ∂ε/∂h, stacked over probe images and edit timesteps."""
    dm = ctx.pair.dm
    dev = dm.device
    x0 = ctx.probe_batch().to(dev)  # (B, C, H, W)
    ts = [int(t) for t in ctx.timesteps[np.linspace(0, len(ctx.timesteps) - 1, min(2, len(ctx.timesteps))).round().astype(int)]]
    xs = {t: ctx.noised(x0.cpu(), t).to(dev) for t in ts}
    g = torch.Generator().manual_seed(ctx.seed)
    v = _unit(torch.randn((k, *ctx.h_shape), generator=g)).to(dev)  # (k, *h)
    fd = 0.05 * ctx.h_scale

    def jtj(vec: torch.Tensor) -> torch.Tensor:  # (*h) -> (*h)
        acc = torch.zeros_like(vec)
        for t, x in xs.items():
            with torch.no_grad():
                jv = (_eps_with(dm, x, t, fd * vec) - _eps_with(dm, x, t, -fd * vec)) / (2 * fd)  # (B, C, H, W)
            delta = torch.zeros((1, *ctx.h_shape), device=dev, requires_grad=True)
            with torch.enable_grad():
                y = _eps_with(dm, x, t, delta)
                (gr,) = torch.autograd.grad((y * jv).sum(), delta)
            acc += gr[0]
        return acc

    with frozen(dm.unet):
        for _ in range(iterations):
            w = torch.stack([jtj(vec) for vec in v])  # (k, *h)
            q, _ = torch.linalg.qr(w.flatten(1).double().T)  # (D, k)
            v = q.T.float().view(k, *ctx.h_shape)
        sv = torch.stack([jtj(vec) for vec in v]).flatten(1).mul(v.flatten(1)).sum(1)  # Rayleigh quotients
    order = torch.argsort(-sv)
    return v[order].cpu(), [f"jac{i + 1}" for i in range(k)]


@register("contrastive")
def contrastive_directions(ctx: DirectionContext, k: int, temperature: float = 0.5) -> tuple[torch.Tensor, list[str]]:
    """LatentCLR-style directions (the DiffEx baseline), trained on ε differences at one timestep.

    For probe image i and direction d_j the feature is f_ij = ε(x_t,i; h + α d_j) − ε(x_t,i; h);
    the NT-Xent loss pulls f_ij together across images for the same j and apart across j.
    """
    if k < 2:
        raise DiffexError("the contrastive method needs k >= 2 directions")
    dm = ctx.pair.dm
    dev = dm.device
    t = int(ctx.timesteps[len(ctx.timesteps) // 2])
    x = ctx.noised(ctx.probe_batch(), t).to(dev)  # (B, C, H, W)
    b = x.shape[0]
    g = torch.Generator().manual_seed(ctx.seed)
    raw = torch.randn((k, *ctx.h_shape), generator=g).to(dev).requires_grad_(True)
    opt = torch.optim.Adam([raw], lr=0.05)
    alpha = 1.0 * ctx.h_scale
    with frozen(dm.unet):
        with torch.no_grad():
            base = dm.eps(x, t)  # (B, C, H, W)
        xx = x.repeat(k, 1, 1, 1)  # (k*B, C, H, W), direction-major
        labels = torch.arange(k, device=dev).repeat_interleave(b)  # (k*B,)
        same = labels[:, None] == labels[None, :]
        eye = torch.eye(k * b, dtype=torch.bool, device=dev)
        for _ in range(ctx.contrastive_iterations):
            d = _unit(raw)
            delta = (alpha * d).repeat_interleave(b, dim=0)  # (k*B, *h)
            with torch.enable_grad():
                f = (_eps_with(dm, xx, t, delta) - base.repeat(k, 1, 1, 1)).flatten(1)
                f = torch.nn.functional.normalize(f, dim=1)
                sim = (f @ f.T / temperature).masked_fill(eye, -1e9)  # (k*B, k*B)
                pos = torch.logsumexp(sim.masked_fill(~same | eye, -1e9), dim=1)
                loss = (torch.logsumexp(sim, dim=1) - pos).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return _unit(raw.detach()).cpu(), [f"clr{i + 1}" for i in range(k)]
