"""Hooks on a diffusers UNet: h-space offsets and recording, the Asyrp fork, frozen weights, evaluation counts.

h-space is the output of the UNet's mid block. :func:`mid_block_offset` adds an offset to it,
:func:`record_h` captures it, :func:`mid_block_fork` returns edited and unedited predictions from
one down path, :class:`EvaluationCounter` counts noise predictions and down paths.

Example
-------
>>> import torch
>>> from diffex.models.diffusion import tiny_model
>>> dm = tiny_model()
>>> h_shape(dm)
(32, 4, 4)
>>> with torch.no_grad(), mid_block_offset(dm.unet, torch.ones(32, 4, 4)):
...     eps = dm.eps(torch.zeros(1, 1, 8, 8), 500)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


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
        for handle in handles:
            handle.remove()


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

    ``predictions`` counts noise predictions (one per image per forward pass, two per image for a
    forked call, :func:`mid_block_fork`); ``down_paths`` counts images entering the UNet, i.e. the
    down paths actually run (this includes the forward passes that gradient checkpointing
    recomputes). ``predictions - down_paths`` is the number of down paths the fork saved.

    Example
    -------
    >>> from diffex.models.diffusion import tiny_model
    >>> from diffex.models.sampler import SamplerSpec, ddim_invert
    >>> dm = tiny_model()
    >>> with EvaluationCounter(dm.unet) as n:
    ...     _ = ddim_invert(dm, torch.zeros(2, 1, 8, 8), SamplerSpec(steps=5))
    >>> n.predictions, n.down_paths
    (10, 10)
    """

    def __init__(self, unet: torch.nn.Module):
        self.unet, self.predictions, self.down_paths, self._handles, self._last = unet, 0, 0, [], 0

    def _pre(self, _module, args, kwargs):
        x = args[0] if args else kwargs["sample"]
        self._last = int(x.shape[0])
        self.down_paths += self._last
        self.predictions += self._last

    def _post(self, _module, _args, out):
        sample = out[0] if isinstance(out, tuple) else getattr(out, "sample", out)
        self.predictions += max(0, int(sample.shape[0]) - self._last)  # the second prediction of a forked call

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
    dtype = next(dm.unet.parameters()).dtype
    x = torch.zeros(1, dm.info.in_channels, dm.info.image_size, dm.info.image_size, device=dm.device, dtype=dtype)
    with torch.no_grad(), record_h(dm.unet, store):
        dm.eps(x, 0)
    return tuple(store[0].shape[1:])
