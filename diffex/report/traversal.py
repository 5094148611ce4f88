"""Writing counterfactual traversals: ImageJ hyperstacks, composite PNG grids, animated GIFs.

Display ranges are fixed per channel (the diffusion model's normalization range), never per image,
so that brightness differences between frames are real differences of the renders.

Example
-------
>>> import tempfile, tifffile
>>> path = Path(tempfile.mkdtemp()) / "a.tif"
>>> frames = np.zeros((3, 2, 8, 8), np.float32)                  # (F, C, H, W)
>>> write_hyperstack(path, frames, ["DNA", "Actin"], [-1.0, 0.0, 1.0])
>>> tifffile.imread(path).shape
(3, 2, 8, 8)
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from diffex.fsutil import atomic_file

BRIGHTER = np.array([1.0, 0.25, 0.2])  # difference maps: colour of a brighter render
DARKER = np.array([0.25, 0.6, 1.0])  # and of a darker one
PALETTE = np.array([[0.25, 0.45, 1.0], [0.2, 1.0, 0.3], [1.0, 0.2, 0.9], [1.0, 0.85, 0.2], [0.2, 0.9, 1.0]])


def write_hyperstack(path: str | Path, frames: np.ndarray, channel_names: list[str], strengths: list[float]) -> None:
    """Save (F, C, H, W) raw intensities as an ImageJ hyperstack (frames x channels), atomically.

    Values are stored as float32 so that nothing is clipped; the strengths go in the ImageJ
    'Labels' (one per plane) and in the description.
    """
    import tifffile

    frames = np.asarray(frames, dtype=np.float32)
    f, c = frames.shape[:2]
    labels = [f"{channel_names[j]} s={strengths[i]:+.2f}" for i in range(f) for j in range(c)]
    path = Path(path)
    buf = io.BytesIO()
    tifffile.imwrite(buf, frames, imagej=True, metadata={"axes": "TCYX", "Labels": labels,
                                                         "Info": f"diffex traversal; strengths {list(map(float, strengths))}"})
    with atomic_file(path, "wb") as fh:
        fh.write(buf.getvalue())


def composite(raw: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(C, H, W) raw -> (H, W, 3) uint8 false-colour composite with fixed per-channel ranges."""
    c = raw.shape[0]
    norm = np.clip((raw - low[:, None, None]) / (high - low)[:, None, None], 0, 1)  # (C, H, W)
    rgb = np.einsum("chw,ck->hwk", norm, PALETTE[np.arange(c) % len(PALETTE)])
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def difference_map(raw: np.ndarray, reference: np.ndarray, low: np.ndarray, high: np.ndarray, scale: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8: summed normalized change over channels; red = brighter, blue = darker.

    Full colour is a change of ``scale`` times the channel's display range (or more).
    """
    d = ((raw - reference) / (high - low)[:, None, None]).sum(0)  # (H, W)
    d = np.clip(d / scale, -1, 1)
    rgb = np.clip(d, 0, 1)[..., None] * BRIGHTER + np.clip(-d, 0, 1)[..., None] * DARKER  # (H, W, 3)
    return (rgb * 255).astype(np.uint8)


def _upscale(im: np.ndarray, factor: int) -> np.ndarray:
    return im.repeat(factor, 0).repeat(factor, 1)


def grid_png(path: str | Path, renders: np.ndarray, references: np.ndarray, low, high, scale: int = 3) -> None:
    """PNG: per image one row of composites along the traversal and one row of difference maps.

    renders (N, F, C, H, W) raw; references (N, C, H, W) the reconstructions.
    """
    from PIL import Image

    low, high = np.asarray(low, float), np.asarray(high, float)
    n, f, _, h, w = renders.shape
    pad = 2
    canvas = np.full((n * 2 * (h * scale + pad), f * (w * scale + pad), 3), 255, np.uint8)
    for i in range(n):
        for j in range(f):
            y0, x0 = 2 * i * (h * scale + pad), j * (w * scale + pad)
            canvas[y0 : y0 + h * scale, x0 : x0 + w * scale] = _upscale(composite(renders[i, j], low, high), scale)
            y1 = y0 + h * scale + pad
            canvas[y1 : y1 + h * scale, x0 : x0 + w * scale] = _upscale(difference_map(renders[i, j], references[i], low, high), scale)
    with atomic_file(path, "wb") as fh:
        Image.fromarray(canvas).save(fh, format="PNG", optimize=True)


def animated_gif(path: str | Path, renders: np.ndarray, low, high, scale: int = 3, ms: int = 200) -> None:
    """GIF going back and forth along the traversal; images (N, F, C, H, W) side by side."""
    from PIL import Image

    low, high = np.asarray(low, float), np.asarray(high, float)
    n, f = renders.shape[:2]
    frames = []
    for j in list(range(f)) + list(range(f - 2, 0, -1)):
        row = np.concatenate([_upscale(composite(renders[i, j], low, high), scale) for i in range(n)], axis=1)
        frames.append(Image.fromarray(row))
    with atomic_file(path, "wb") as fh:
        frames[0].save(fh, format="GIF", save_all=True, append_images=frames[1:], duration=ms, loop=0)


def safe_name(text: str) -> str:
    """File-name-safe version of an attribute name."""
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)
    return keep.strip("_")[:60] or "attribute"


