"""Reading one microscopy image into a (C, Y, X) float32 array with channel names.

Supported: TIFF and OME-TIFF (2-D single channel, multi-channel CYX or YXC, channels as pages),
uint8/uint16/int16/float32/float64, and PNG/JPEG (grey or RGB). The channel axis is taken from the
file's metadata; where that cannot tell, from the shape when unambiguous, else from ``axes``.
Anything that is not a clean 2-D multi-channel image raises :class:`~diffex.errors.InputError`
naming the file and the problem.

Example
-------
>>> import numpy as np, tifffile, tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "cell.tif"
>>> tifffile.imwrite(p, np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8))
>>> img = read_image(p, axes="CYX")
>>> img.data.shape, img.channel_names
((2, 8, 8), None)
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffex.errors import InputError

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
IMAGE_SUFFIXES = TIFF_SUFFIXES + RASTER_SUFFIXES
SUPPORTED_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)
# Largest channel count guessed from the shape alone; beyond it `axes` must say.
MAX_GUESSED_CHANNELS = 4


@dataclass(frozen=True)
class Image:
    """One image as read from disk.

    Attributes
    ----------
    data : ndarray, shape (C, Y, X), float32
        Raw intensities (not normalized).
    channel_names : tuple of str or None
        From OME or ImageJ metadata when the file has them.
    dtype : str
        The file's pixel type (``"uint16"`` ...).
    """

    data: np.ndarray
    channel_names: tuple[str, ...] | None
    dtype: str


def is_image_file(path: Path) -> bool:
    """True for a file whose suffix diffex reads (``.tif``, ``.ome.tiff``, ``.png`` ...)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def _normalize_axes(axes: str, path: Path) -> str:
    axes = axes.upper()
    allowed = set("CYXSZTIQ")
    if not axes or set(axes) - allowed or len(set(axes)) != len(axes):
        raise InputError(path, f"--axes {axes!r} is not valid: use letters from C, Y, X (e.g. CYX or YXC)")
    return axes


def _to_cyx(arr: np.ndarray, axes: str | None, user_axes: str | None, path: Path) -> np.ndarray:
    """Reorder ``arr`` to (C, Y, X) from ``user_axes`` (wins) or the file's ``axes``."""
    if user_axes is not None:
        ax = _normalize_axes(user_axes, path)
        if len(ax) != arr.ndim:
            raise InputError(
                path, f"--axes {user_axes!r} has {len(ax)} letters but the image has {arr.ndim} dimensions {arr.shape}"
            )
    else:
        ax = (axes or "").upper().replace("S", "C")
        if len(ax) != arr.ndim:
            ax = ""
    # Drop singleton axes that are not Y or X (e.g. T=1, Z=1 in OME files).
    if ax:
        keep = [i for i, a in enumerate(ax) if a in "YX" or arr.shape[i] != 1]
        arr = arr.reshape([arr.shape[i] for i in keep])
        ax = "".join(ax[i] for i in keep)
    else:
        arr = np.squeeze(arr) if arr.ndim > 2 else arr
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim > 3:
        raise InputError(
            path,
            f"{arr.ndim}-D image of shape {arr.shape} (axes {ax or 'unknown'}); diffex expects 2-D images "
            "with channels: pass a projection or one plane per file",
        )
    if ax and ax.replace("S", "C") in ("CYX", "YXC"):
        return arr if ax.replace("S", "C") == "CYX" else np.moveaxis(arr, -1, 0)
    if ax and any(a in ax for a in "ZT"):
        depth_axis = next(a for a in ax if a in "ZT")
        raise InputError(
            path,
            f"3-D image of shape {arr.shape} with a {depth_axis} axis; diffex expects 2-D images: "
            "pass a projection, or --axes CYX if that axis really holds channels",
        )
    # Axes unknown (plain TIFF pages, 'I'/'Q' axes): guess only when the shape is unambiguous.
    first_small = arr.shape[0] <= MAX_GUESSED_CHANNELS
    last_small = arr.shape[-1] <= MAX_GUESSED_CHANNELS
    if first_small and not last_small:
        return arr
    if last_small and not first_small:
        return np.moveaxis(arr, -1, 0)
    raise InputError(
        path,
        f"3-D image of shape {arr.shape} whose channel axis cannot be told from the file; "
        "pass --axes (CYX or YXC), or store one plane per file if it is a z-stack",
    )


def _read_tiff(path: Path, user_axes: str | None) -> tuple[np.ndarray, tuple[str, ...] | None]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise InputError(path, "TIFF holds no image data")
            series = tif.series[0]
            names = _ome_channel_names(tif) or _imagej_channel_names(tif)
            if len(tif.series) > 1 and all(s.ndim == 2 and s.shape == series.shape for s in tif.series):
                # Pages written one by one as separate 2-D series: stack them, axis unknown.
                arr = np.stack([s.asarray() for s in tif.series])
                axes = "I" + series.axes
            else:
                arr = series.asarray()
                axes = series.axes
    except InputError:
        raise
    except Exception as exc:  # tifffile raises many types for damaged files
        raise InputError(path, f"cannot read TIFF (truncated or corrupt?): {type(exc).__name__}: {exc}") from exc
    return _to_cyx(arr, axes, user_axes, path), names


def _ome_channel_names(tif) -> tuple[str, ...] | None:
    if not tif.is_ome or not tif.ome_metadata:
        return None
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(tif.ome_metadata)
    except ET.ParseError:
        return None
    pixels = root.find(".//{*}Image/{*}Pixels")
    if pixels is None:
        return None
    names = [c.get("Name") for c in pixels.findall("{*}Channel")]
    return tuple(names) if names and all(names) else None


def _imagej_channel_names(tif) -> tuple[str, ...] | None:
    meta = tif.imagej_metadata or {}
    labels = meta.get("Labels")
    if isinstance(labels, (list, tuple)) and labels and all(isinstance(x, str) for x in labels):
        return tuple(labels)
    return None


def _read_raster(path: Path, user_axes: str | None) -> np.ndarray:
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        with PILImage.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(path, f"cannot read image (truncated or corrupt?): {exc}") from exc
    if mode in ("RGBA", "LA"):
        if np.any(arr[..., -1] != arr[..., -1].max()):
            raise InputError(path, f"{mode} image with a non-trivial alpha channel; save it without transparency")
        arr = arr[..., :-1]
    if mode == "P":
        raise InputError(path, "palette (indexed colour) image; save it as greyscale or RGB")
    return _to_cyx(arr, "YXC" if arr.ndim == 3 else "YX", user_axes, path)


def validate_pixels(arr: np.ndarray, path: Path) -> None:
    """Raise for NaN/inf or a constant image."""
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise InputError(path, f"contains {bad} NaN or infinite pixel values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo == hi:
        raise InputError(path, f"constant image (every pixel = {lo:g}); nothing to analyse")


def read_image(path: str | Path, axes: str | None = None) -> Image:
    """Read one image file into (C, Y, X) float32 raw intensities.

    Parameters
    ----------
    path : str or Path
        A ``.tif``/``.tiff``/``.ome.tif``, ``.png`` or ``.jpg`` file.
    axes : str, optional
        Axis order of the stored array when the file's metadata cannot tell (``"CYX"``, ``"YXC"``,
        ``"YX"``). It overrides the metadata.

    Returns
    -------
    Image

    Raises
    ------
    InputError
        Unreadable, truncated or corrupt file; more than 2-D; ambiguous channel axis; an
        unsupported pixel type; NaN/inf; a constant image.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in TIFF_SUFFIXES:
            arr, names = _read_tiff(path, axes)
        elif suffix in RASTER_SUFFIXES:
            arr, names = _read_raster(path, axes), None
        else:
            raise InputError(path, f"unsupported file type {suffix!r}; diffex reads {', '.join(IMAGE_SUFFIXES)}")
    except PermissionError as exc:
        raise InputError(path, f"cannot open file: {exc.strerror}") from exc
    if arr.dtype.type not in SUPPORTED_DTYPES:
        raise InputError(path, f"unsupported pixel type {arr.dtype}; use uint8, uint16, int16 or float32")
    if names is not None and len(names) != arr.shape[0]:
        log.debug("%s: %d channel names for %d channels; ignoring names", path, len(names), arr.shape[0])
        names = None
    validate_pixels(arr, path)
    return Image(data=np.ascontiguousarray(arr, dtype=np.float32), channel_names=names, dtype=str(arr.dtype))


def write_ome_tiff(path: Path, image: np.ndarray, channel_names: tuple[str, ...]) -> None:
    """Write a (C, Y, X) array as an OME-TIFF with channel names.

    The OME UUID is derived from the pixels and channel names (tifffile's default is random), so
    that the same image gives the same bytes.
    """
    import tifffile

    content = hashlib.sha256(np.ascontiguousarray(image).tobytes() + "\0".join(channel_names).encode()).hexdigest()
    # the UUID and everything else in the file follow from the content: same image, same bytes
    tifffile.imwrite(
        path,
        image,
        ome=True,
        photometric="minisblack",
        metadata={"axes": "CYX", "Channel": {"Name": list(channel_names)},
                  "UUID": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_OID, content)}"},
        compression="zlib",
    )
