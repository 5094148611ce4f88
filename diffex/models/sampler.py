"""Deterministic DDIM (eta = 0): inversion of real images, rendering from x_T, h-space edits.

Inversion and rendering share one timestep grid (trailing spacing, ``steps`` steps ending at
t = T - 1), so that rendering an inverted x_T reproduces the image up to the discretization error
of the ODE. Nothing is clipped. Unconditional samples (:func:`sample`) can also be drawn with
fresh noise at every step (eta > 0, :func:`ddim_step_stochastic`); explain never does.

h-space is the output of the UNet's mid block. An edit adds an offset ``delta`` (B, *h_shape) to
it at every step with t >= ``t_edit``, through a forward hook on ``unet.mid_block``
(:func:`mid_block_offset`); :func:`record_h` captures h instead.

Example
-------
>>> from diffex.models.diffusion import tiny_model
>>> dm = tiny_model(in_channels=1, size=8)
>>> x0 = torch.rand(2, 1, 8, 8) * 2 - 1
>>> spec = SamplerSpec(steps=5, t_end=699, t_edit=300, mode="asymmetric")
>>> xt = ddim_invert(dm, x0, spec)
>>> ddim_render(dm, xt, spec, delta=torch.zeros(1, *h_shape(dm))).shape
torch.Size([2, 1, 8, 8])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from diffex.models.hooks import can_fork, h_shape, mid_block_fork, mid_block_offset  # noqa: F401 - h_shape: used in examples

DEFAULT_STEPS = 20
DEFAULT_T_END = 699  # where explain stops inverting by default (ExplainConfig.t_end)
MODES = ("symmetric", "asymmetric")


@dataclass(frozen=True)
class SamplerSpec:
    """How the deterministic DDIM sampler runs: one value passed to inversion, renders and gradients.

    Parameters
    ----------
    steps : int
        DDIM steps on the trailing grid (:func:`ddim_timesteps`).
    t_end : int, optional
        Last timestep of the grid, where inversion stops (default T - 1; lower = partial inversion).
    t_edit : int
        h-space offsets act on every step with t >= ``t_edit``.
    mode : str
        ``symmetric`` (the edited noise prediction in both DDIM terms) or ``asymmetric`` (Asyrp: the
        edited prediction only in the predicted-x0 term, the unedited one in the direction term).

    Example
    -------
    >>> SamplerSpec(steps=4).timesteps(1000).tolist()
    [249, 499, 749, 999]
    """

    steps: int = DEFAULT_STEPS
    t_end: int | None = None
    t_edit: int = 0
    mode: str = "symmetric"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")

    @property
    def asymmetric(self) -> bool:
        return self.mode == "asymmetric"

    def timesteps(self, num_train_timesteps: int) -> np.ndarray:
        """Ascending timesteps of the grid (see :func:`ddim_timesteps`)."""
        return ddim_timesteps(num_train_timesteps, self.steps, self.t_end)


def ddim_timesteps(num_train_timesteps: int, steps: int, t_end: int | None = None) -> np.ndarray:
    """Ascending DDIM timesteps with trailing spacing ending at ``t_end`` (default T - 1).

    e.g. T=1000, steps=4 -> [249, 499, 749, 999]; t_end=699 -> [174, 349, 524, 699]. Ending below
    T - 1 is a partial inversion: x at ``t_end`` keeps a trace of the image, and the large, least
    accurate steps near t = T are skipped.
    """
    t_end = num_train_timesteps - 1 if t_end is None else int(t_end)
    if not 0 <= t_end < num_train_timesteps:
        raise ValueError(f"t_end must be in [0, {num_train_timesteps - 1}], got {t_end}")
    if not 1 <= steps <= t_end + 1:
        raise ValueError(f"steps must be between 1 and {t_end + 1}, got {steps}")
    return np.round(np.arange(t_end + 1, 0, -(t_end + 1) / steps))[::-1].astype(np.int64) - 1


def _dtype(dm) -> torch.dtype:
    """Floating dtype the sampler runs in: the UNet's (float32 unless the weights were cast, e.g. float64 in tests)."""
    return next(dm.unet.parameters()).dtype


def _alpha(dm, t: int) -> float:
    """Cumulative alpha at t; t = -1 means the clean image (alpha = 1)."""
    return 1.0 if t < 0 else float(dm.alphas_cumprod[t])


def _ddim_step(
    x: torch.Tensor, eps: torch.Tensor, a_from: float, a_to: float, eps_dir: torch.Tensor | None = None
) -> torch.Tensor:
    """Move x (B, C, H, W) from noise level a_from to a_to along the DDIM ODE given eps.

    ``eps_dir`` (default ``eps``) is the noise used in the direction term; Asyrp-style edits
    pass the unedited prediction there and the edited one as ``eps``.
    """
    x0 = (x - math.sqrt(1 - a_from) * eps) / math.sqrt(a_from)
    return math.sqrt(a_to) * x0 + math.sqrt(1 - a_to) * (eps if eps_dir is None else eps_dir)


def _eps_batched(dm, x: torch.Tensor, t: int, batch_size: int | None) -> torch.Tensor:
    if batch_size is None or x.shape[0] <= batch_size:
        return dm.eps(x, t)
    return torch.cat([dm.eps(chunk, t) for chunk in x.split(batch_size)])


@torch.no_grad()
def ddim_invert(dm, x0: torch.Tensor, spec: SamplerSpec, *, batch_size: int | None = None) -> torch.Tensor:
    """Map clean images x0 (B, C, H, W) in model space to x at ``spec.t_end`` by deterministic DDIM inversion."""
    ts = spec.timesteps(dm.num_train_timesteps)
    x = x0.to(dm.device, _dtype(dm))
    prev = -1
    for t in ts:
        eps = _eps_batched(dm, x, int(t), batch_size)
        x = _ddim_step(x, eps, _alpha(dm, prev), _alpha(dm, int(t)))
        prev = int(t)
    return x


@torch.no_grad()
def ddim_render(
    dm,
    xt: torch.Tensor,
    spec: SamplerSpec,
    *,
    delta: torch.Tensor | None = None,
    batch_size: int | None = None,
    fork: bool = True,
) -> torch.Tensor:
    """Denoise x at ``spec.t_end`` (B, C, H, W) to clean images in model space by deterministic DDIM.

    Parameters
    ----------
    spec : SamplerSpec
        Steps, end timestep, edit window and mode. In ``asymmetric`` mode the edited noise
        prediction enters only the predicted-x0 term and the direction term keeps the unedited one
        (two predictions per edited step; with ``fork`` and a UNet that allows it they share one
        down path, see :func:`mid_block_fork`).
    delta : Tensor, optional
        h-space offset, (B, *h_shape) or broadcastable, added for every step with t >= ``spec.t_edit``.
    """
    ts = spec.timesteps(dm.num_train_timesteps)
    x = xt.to(dm.device, _dtype(dm))
    if delta is not None:
        delta = delta.to(dm.device, x.dtype)
        if batch_size is not None and delta.dim() > 0 and delta.shape[0] == x.shape[0] and x.shape[0] > batch_size:
            # Chunked rendering with per-image offsets: recurse per chunk so offsets stay aligned.
            return torch.cat([ddim_render(dm, xc, spec, delta=dc, fork=fork)
                              for xc, dc in zip(x.split(batch_size), delta.split(batch_size))])
    for i in range(len(ts) - 1, -1, -1):
        t, prev = int(ts[i]), int(ts[i - 1]) if i > 0 else -1
        a_t, a_prev = _alpha(dm, t), _alpha(dm, prev)
        if delta is None or t < spec.t_edit:
            eps = _eps_batched(dm, x, t, batch_size)
            x = _ddim_step(x, eps, a_t, a_prev)
            continue
        if spec.asymmetric and fork and can_fork(dm.unet):
            eps_edit, eps_dir = _eps_forked(dm, x, t, batch_size, delta)
        else:
            with mid_block_offset(dm.unet, delta):
                eps_edit = _eps_batched(dm, x, t, batch_size)
            eps_dir = _eps_batched(dm, x, t, batch_size) if spec.asymmetric else None
        x = _ddim_step(x, eps_edit, a_t, a_prev, eps_dir)
    return x


def _eps_pair(dm, x: torch.Tensor, t: int, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(edited, unedited) noise predictions for x (B, C, H, W); one down path when the UNet allows the fork."""
    if can_fork(dm.unet):
        return _eps_forked(dm, x, t, None, delta)
    with mid_block_offset(dm.unet, delta):
        eps_edit = dm.eps(x, t)
    return eps_edit, dm.eps(x, t)


def _eps_forked(dm, x: torch.Tensor, t: int, batch_size: int | None, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(edited, unedited) noise predictions for x (B, C, H, W), one down path per image (see :func:`can_fork`)."""
    per_image = delta.dim() == x.dim() and delta.shape[0] == x.shape[0]  # (B, *h), else broadcast
    step = x.shape[0] if batch_size is None else batch_size
    edits, plains = [], []
    for i in range(0, x.shape[0], step):
        xc = x[i:i + step]
        dc = delta[i:i + step] if per_image else delta
        with mid_block_fork(dm.unet, dc):
            both = dm.eps(xc, t)  # (2b, C, H, W): edited, then unedited
        edits.append(both[: xc.shape[0]])
        plains.append(both[xc.shape[0]:])
    return torch.cat(edits), torch.cat(plains)


def ddim_step_stochastic(x: torch.Tensor, eps: torch.Tensor, a_from: float, a_to: float, eta: float,
                         noise: torch.Tensor) -> torch.Tensor:
    """One DDIM step with noise (Song et al. 2021, eq. 12) from level a_from down to a_to; x, eps, noise (B, C, H, W).

    ``eta = 0`` is the deterministic step; ``eta = 1`` with every timestep is DDPM's ancestral
    step (posterior variance beta-tilde).

    Example
    -------
    >>> x, e = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    >>> bool(torch.equal(ddim_step_stochastic(x, e, 0.5, 0.8, 0.0, torch.randn(1, 1, 2, 2)), _ddim_step(x, e, 0.5, 0.8)))
    True
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be between 0 and 1, got {eta}")
    if a_to < a_from:
        raise ValueError(f"a stochastic step goes towards less noise: alpha {a_from} -> {a_to}")
    sigma = eta * math.sqrt((1 - a_to) / (1 - a_from) * (1 - a_from / a_to))
    x0 = (x - math.sqrt(1 - a_from) * eps) / math.sqrt(a_from)
    return math.sqrt(a_to) * x0 + math.sqrt(max(1 - a_to - sigma**2, 0.0)) * eps + sigma * noise


@torch.no_grad()
def sample(dm, n: int, steps: int = 50, seed: int = 0, batch_size: int = 64, eta: float = 0.0) -> torch.Tensor:
    """Draw n unconditional samples (n, C, H, W) in model space by DDIM from Gaussian noise.

    ``eta = 0`` (the quality gate's sampler) follows the deterministic ODE that explain renders
    with; ``eta > 0`` adds fresh noise at every step (``eta = 1``: ancestral sampling), drawn from
    the same seeded generator after the starting noise.
    """
    g = torch.Generator().manual_seed(seed)
    shape = (n, dm.info.in_channels, dm.info.image_size, dm.info.image_size)
    noise = torch.randn(shape, generator=g)
    spec = SamplerSpec(steps=steps)
    if eta == 0:
        return torch.cat([ddim_render(dm, chunk, spec) for chunk in noise.split(batch_size)])
    ts = spec.timesteps(dm.num_train_timesteps)
    x = noise.to(dm.device, _dtype(dm))  # (n, C, H, W)
    for i in range(len(ts) - 1, -1, -1):
        t, prev = int(ts[i]), int(ts[i - 1]) if i > 0 else -1
        eps = _eps_batched(dm, x, t, batch_size)
        z = torch.randn(shape, generator=g).to(x.device, x.dtype)
        x = ddim_step_stochastic(x, eps, _alpha(dm, t), _alpha(dm, prev), eta, z)
    return x


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-image PSNR in dB between (B, ...) tensors; ``data_range`` 2 for model space [-1, 1]."""
    mse = (a - b).float().pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(data_range**2 / mse)


def ddim_render_differentiable(
    dm, xt: torch.Tensor, delta: torch.Tensor, spec: SamplerSpec, *, checkpoint: bool = True
) -> torch.Tensor:
    """:func:`ddim_render` with autograd through the sampler, for gradients with respect to ``delta``.

    Each DDIM step is checkpointed (``torch.utils.checkpoint``): memory holds one x per step
    instead of every UNet activation of every step, at the price of a second forward pass per step
    during backward (about 3 UNet passes per step in all). In ``asymmetric`` mode both predictions
    of an edited step, the edited and the unedited one, are differentiated: the unedited one
    depends on Δh through x_t, which the earlier edited steps produced.

    Example
    -------
    >>> from diffex.models.diffusion import tiny_model
    >>> dm = tiny_model()
    >>> delta = torch.zeros(1, *h_shape(dm), requires_grad=True)
    >>> ddim_render_differentiable(dm, torch.randn(2, 1, 8, 8), delta, SamplerSpec(steps=5)).sum().backward()
    >>> delta.grad.shape == delta.shape
    True
    """
    from torch.utils.checkpoint import checkpoint as ckpt

    ts = spec.timesteps(dm.num_train_timesteps)
    x = xt.to(dm.device, _dtype(dm))
    delta = delta.to(dm.device, x.dtype)

    def step(x_in, d, t, a_t, a_prev):
        if d is None or not spec.asymmetric:
            with mid_block_offset(dm.unet, d):
                return _ddim_step(x_in, dm.eps(x_in, t), a_t, a_prev)
        # Asyrp: the unedited prediction of the direction term still depends on Δh through x_in,
        # which earlier edited steps produced; it is differentiated like the edited one.
        eps_edit, eps_dir = _eps_pair(dm, x_in, t, d)
        return _ddim_step(x_in, eps_edit, a_t, a_prev, eps_dir)

    with torch.enable_grad():
        for i in range(len(ts) - 1, -1, -1):
            t, prev = int(ts[i]), int(ts[i - 1]) if i > 0 else -1
            a_t, a_prev = _alpha(dm, t), _alpha(dm, prev)
            d = delta if t >= spec.t_edit else None
            x = ckpt(step, x, d, t, a_t, a_prev, use_reentrant=False) if checkpoint else step(x, d, t, a_t, a_prev)
    return x


def edit_offsets(directions: torch.Tensor, strengths: torch.Tensor, scale: float) -> torch.Tensor:
    """All direction x strength offsets, (K, S, *h_shape) = strengths * scale * directions.

    ``scale`` turns relative strengths into h units (diffex uses the mean ‖h‖ of the data).
    """
    directions = directions.float()  # (K, *h)
    strengths = torch.as_tensor(strengths, dtype=torch.float32)  # (S,)
    shape = (1,) * (directions.dim() - 1)
    return directions[:, None] * (strengths.view(1, -1, *shape) * scale)  # (K, S, *h)


@torch.no_grad()
def render_edits(
    dm, xt: torch.Tensor, offsets: torch.Tensor, spec: SamplerSpec, *, batch_size: int = 32, on_chunk=None,
    scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """Render every image under every offset: (N, C, H, W) x (E, *h) -> (N, E, C, H, W).

    With ``scales`` (N, E), image i is rendered under ``scales[i, e] * offsets[e]``: per-image
    strengths along shared directions (diffex's calibrated edits). The N x E pairs are expanded from the cached x_T without copying the inputs per edit and
    rendered in chunks of ``batch_size`` (each chunk one batched DDIM run), so memory is bounded
    by the chunk, not by N x E. ``on_chunk(n_done)`` is called after each chunk (progress).
    """
    n, e = xt.shape[0], offsets.shape[0]
    pair_img = torch.arange(n).repeat_interleave(e)  # (N*E,)
    pair_off = torch.arange(e).repeat(n)  # (N*E,)
    out = torch.empty((n * e, *xt.shape[1:]), dtype=torch.float32)
    for start in range(0, n * e, batch_size):
        sl = slice(start, min(start + batch_size, n * e))
        x = xt[pair_img[sl]]  # (b, C, H, W)
        d = offsets[pair_off[sl]]  # (b, *h)
        if scales is not None:
            d = d * scales[pair_img[sl], pair_off[sl]].to(d).view(-1, *(1,) * (d.dim() - 1))  # (b, *h)
        out[sl] = ddim_render(dm, x, spec, delta=d).cpu()
        if on_chunk is not None:
            on_chunk(sl.stop - sl.start)
    return out.view(n, e, *xt.shape[1:])
