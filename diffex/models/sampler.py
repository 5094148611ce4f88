"""Deterministic DDIM (eta = 0): inversion of real images, rendering from x_T, h-space edits.

Inversion and rendering share one timestep grid (trailing spacing, ``steps`` steps ending at
t = T - 1), so that rendering an inverted x_T reproduces the image up to the discretization error
of the ODE. Nothing is clipped.

h-space is the output of the UNet's mid block. An edit adds an offset ``delta`` (B, *h_shape) to
it at every step with t >= ``t_edit``, through a forward hook on ``unet.mid_block``
(:func:`mid_block_offset`); :func:`record_h` captures h instead.

Example
-------
>>> import torch
>>> from diffex.models.diffusion import DiffusionModel, build_unet, UNetSpec, default_scheduler_config, DiffusionInfo
>>> unet = build_unet(UNetSpec(block_out_channels=(16, 32), norm_num_groups=8), 1, 8)
>>> dm = DiffusionModel(unet, default_scheduler_config(), DiffusionInfo(in_channels=1, image_size=8))
>>> x0 = torch.rand(2, 1, 8, 8) * 2 - 1
>>> xt = ddim_invert(dm, x0, steps=5)
>>> ddim_render(dm, xt, steps=5).shape
torch.Size([2, 1, 8, 8])
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch

DEFAULT_STEPS = 20


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
def ddim_invert(
    dm, x0: torch.Tensor, steps: int = DEFAULT_STEPS, batch_size: int | None = None, t_end: int | None = None
) -> torch.Tensor:
    """Map clean images x0 (B, C, H, W) in model space to x_T by deterministic DDIM inversion."""
    ts = ddim_timesteps(dm.num_train_timesteps, steps, t_end)
    x = x0.to(dm.device, torch.float32)
    prev = -1
    for t in ts:
        eps = _eps_batched(dm, x, int(t), batch_size)
        x = _ddim_step(x, eps, _alpha(dm, prev), _alpha(dm, int(t)))
        prev = int(t)
    return x


@contextlib.contextmanager
def mid_block_offset(unet, delta: torch.Tensor | None) -> Iterator[None]:
    """While active, ``unet.mid_block`` returns ``h + delta`` (delta broadcast to (B, *h_shape))."""
    if delta is None:
        yield
        return
    handle = unet.mid_block.register_forward_hook(lambda _m, _inp, out: out + delta.to(out.dtype))
    try:
        yield
    finally:
        handle.remove()


def can_fork(unet) -> bool:
    """Whether :func:`mid_block_fork` applies: a diffusers UNet2DModel without skip blocks or Fourier time."""
    cfg = getattr(unet, "config", None)
    blocks = list(getattr(unet, "down_blocks", [])) + list(getattr(unet, "up_blocks", []))
    return (getattr(unet, "mid_block", None) is not None and bool(blocks) and cfg is not None
            and getattr(cfg, "time_embedding_type", "positional") != "fourier"
            and not any(hasattr(b, "skip_conv") for b in blocks))


@contextlib.contextmanager
def mid_block_fork(unet, delta: torch.Tensor) -> Iterator[None]:
    """While active, one UNet call on x (B, ...) returns 2B noise predictions: edited, then unedited.

    The down path and the mid block run once; the mid block's output h (B, *h) becomes
    ``cat([h + delta, h])`` (2B, *h) and every up block gets its skip connections and time
    embedding repeated to 2B. This is the Asyrp step's pair of predictions (edited and unedited,
    from the same x_t) at the cost of one down path and two up paths instead of two full passes.
    Only for UNets where :func:`can_fork` is true.
    """
    def fork(_m, _inp, out):
        return torch.cat([out + delta.to(out.dtype), out])

    def widen(_m, args):
        sample, res, emb = args[0], args[1], args[2]
        if sample.shape[0] != 2 * res[0].shape[0]:
            return None
        return (sample, tuple(torch.cat([r, r]) for r in res), torch.cat([emb, emb]), *args[3:])

    handles = [unet.mid_block.register_forward_hook(fork)]
    handles += [b.register_forward_pre_hook(widen) for b in unet.up_blocks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def record_h(unet, store: list) -> Iterator[None]:
    """While active, append each mid-block output (B, *h_shape) to ``store`` (detached)."""
    handle = unet.mid_block.register_forward_hook(lambda _m, _inp, out: store.append(out.detach()))
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def frozen(*modules: torch.nn.Module) -> Iterator[None]:
    """While active, no parameter of ``modules`` requires grad (gradients w.r.t. inputs only)."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


class EvaluationCounter:
    """Counts UNet image-evaluations (one per image per forward pass) while attached.

    Images entering the UNet are counted (``encoder_images``; this includes the forward passes that
    gradient checkpointing recomputes). A forked call (:func:`mid_block_fork`) returns two
    predictions per input image and counts two evaluations in ``images``, although it runs the down
    path once: ``images - encoder_images`` is the number of down paths the fork saved.

    Example
    -------
    >>> with EvaluationCounter(dm.unet) as n:        # doctest: +SKIP
    ...     ddim_invert(dm, x0, steps=20)
    >>> n.images                                      # doctest: +SKIP
    640
    """

    def __init__(self, unet: torch.nn.Module):
        self.unet, self.images, self.encoder_images, self._handles, self._last = unet, 0, 0, [], 0

    def _pre(self, _module, args, kwargs):
        x = args[0] if args else kwargs["sample"]
        self._last = int(x.shape[0])
        self.encoder_images += self._last
        self.images += self._last

    def _post(self, _module, _args, out):
        sample = out[0] if isinstance(out, tuple) else getattr(out, "sample", out)
        self.images += max(0, int(sample.shape[0]) - self._last)  # the second prediction of a forked call

    def __enter__(self) -> EvaluationCounter:
        self._handles = [self.unet.register_forward_pre_hook(self._pre, with_kwargs=True),
                         self.unet.register_forward_hook(self._post)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()


def h_shape(dm) -> tuple[int, ...]:
    """Shape of one image's h (e.g. (128, 4, 4)), found by a dry forward pass."""
    store: list = []
    x = torch.zeros(1, dm.info.in_channels, dm.info.image_size, dm.info.image_size, device=dm.device)
    with torch.no_grad(), record_h(dm.unet, store):
        dm.eps(x, 0)
    return tuple(store[0].shape[1:])


@torch.no_grad()
def ddim_render(
    dm,
    xt: torch.Tensor,
    steps: int = DEFAULT_STEPS,
    batch_size: int | None = None,
    delta: torch.Tensor | None = None,
    t_edit: int = 0,
    asymmetric: bool = False,
    t_end: int | None = None,
    fork: bool = True,
) -> torch.Tensor:
    """Denoise x_T (B, C, H, W) to clean images in model space by deterministic DDIM.

    Parameters
    ----------
    delta : Tensor, optional
        h-space offset, (B, *h_shape) or broadcastable, added for every step with t >= ``t_edit``.
    asymmetric : bool
        Asyrp-style: the edited noise prediction enters only the predicted-x0 term; the direction
        term keeps the unedited one (two noise predictions per edited step; with ``fork`` and a
        UNet that allows it they share one down path, see :func:`mid_block_fork`). Default: symmetric.
    """
    ts = ddim_timesteps(dm.num_train_timesteps, steps, t_end)
    x = xt.to(dm.device, torch.float32)
    if delta is not None:
        delta = delta.to(dm.device, torch.float32)
        if batch_size is not None and delta.dim() > 0 and delta.shape[0] == x.shape[0] and x.shape[0] > batch_size:
            # Chunked rendering with per-image offsets: recurse per chunk so offsets stay aligned.
            return torch.cat([
                ddim_render(dm, xc, steps, None, dc, t_edit, asymmetric, t_end, fork)
                for xc, dc in zip(x.split(batch_size), delta.split(batch_size))
            ])
    for i in range(len(ts) - 1, -1, -1):
        t, prev = int(ts[i]), int(ts[i - 1]) if i > 0 else -1
        a_t, a_prev = _alpha(dm, t), _alpha(dm, prev)
        if delta is None or t < t_edit:
            eps = _eps_batched(dm, x, t, batch_size)
            x = _ddim_step(x, eps, a_t, a_prev)
            continue
        if asymmetric and fork and can_fork(dm.unet):
            eps_edit, eps_dir = _eps_forked(dm, x, t, batch_size, delta)
        else:
            with mid_block_offset(dm.unet, delta):
                eps_edit = _eps_batched(dm, x, t, batch_size)
            eps_dir = _eps_batched(dm, x, t, batch_size) if asymmetric else None
        x = _ddim_step(x, eps_edit, a_t, a_prev, eps_dir)
    return x


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


@torch.no_grad()
def sample(dm, n: int, steps: int = 50, seed: int = 0, batch_size: int = 64) -> torch.Tensor:
    """Draw n unconditional samples (n, C, H, W) in model space by DDIM from Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, dm.info.in_channels, dm.info.image_size, dm.info.image_size)
    noise = torch.randn(shape, generator=g)
    return torch.cat([ddim_render(dm, chunk, steps) for chunk in noise.split(batch_size)])


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-image PSNR in dB between (B, ...) tensors; ``data_range`` 2 for model space [-1, 1]."""
    mse = (a - b).float().pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(data_range**2 / mse)


def ddim_render_differentiable(
    dm,
    xt: torch.Tensor,
    delta: torch.Tensor,
    steps: int = DEFAULT_STEPS,
    t_edit: int = 0,
    asymmetric: bool = False,
    t_end: int | None = None,
    checkpoint: bool = True,
) -> torch.Tensor:
    """:func:`ddim_render` with autograd through the sampler, for gradients with respect to ``delta``.

    Each DDIM step is checkpointed (``torch.utils.checkpoint``): memory holds one x per step
    instead of every UNet activation of every step, at the price of a second forward pass per step
    during backward (about 3 UNet passes per step in all).

    Example
    -------
    >>> delta = torch.zeros(1, *h_shape(dm), requires_grad=True)        # doctest: +SKIP
    >>> ddim_render_differentiable(dm, xt, delta).sum().backward()      # doctest: +SKIP
    """
    from torch.utils.checkpoint import checkpoint as ckpt

    ts = ddim_timesteps(dm.num_train_timesteps, steps, t_end)
    x = xt.to(dm.device, torch.float32)
    delta = delta.to(dm.device, torch.float32)

    def step(x_in, d, t, a_t, a_prev):
        with mid_block_offset(dm.unet, d):
            eps_edit = dm.eps(x_in, t)
        eps_dir = None
        if asymmetric:
            with torch.no_grad():
                eps_dir = dm.eps(x_in.detach(), t)
        return _ddim_step(x_in, eps_edit, a_t, a_prev, eps_dir)

    with torch.enable_grad():
        for i in range(len(ts) - 1, -1, -1):
            t, prev = int(ts[i]), int(ts[i - 1]) if i > 0 else -1
            a_t, a_prev = _alpha(dm, t), _alpha(dm, prev)
            d = delta if t >= t_edit else None
            if checkpoint:
                x = ckpt(step, x, d, t, a_t, a_prev, use_reentrant=False)
            else:
                x = step(x, d, t, a_t, a_prev)
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
    dm,
    xt: torch.Tensor,
    offsets: torch.Tensor,
    steps: int = DEFAULT_STEPS,
    batch_size: int = 32,
    t_edit: int = 0,
    asymmetric: bool = False,
    t_end: int | None = None,
    on_chunk=None,
) -> torch.Tensor:
    """Render every image under every offset: (N, C, H, W) x (E, *h) -> (N, E, C, H, W).

    The N x E pairs are expanded from the cached x_T without copying the inputs per edit and
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
        out[sl] = ddim_render(dm, x, steps, None, d, t_edit, asymmetric, t_end).cpu()
        if on_chunk is not None:
            on_chunk(sl.stop - sl.start)
    return out.view(n, e, *xt.shape[1:])
