"""Reading single images: every supported layout, and a clear error for every malformed one."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage

from diffex.data.dataset import discover, load_images
from diffex.data.io import read_image
from diffex.errors import InputError


def _cells(rng, shape, dtype=np.uint16):
    hi = 60000 if dtype == np.uint16 else 250 if dtype == np.uint8 else 1.0
    return (rng.uniform(0, hi, shape)).astype(dtype)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ------------------------------------------------------------------------------ good layouts
def test_2d_single_channel(tmp_path, rng):
    a = _cells(rng, (20, 24))
    tifffile.imwrite(tmp_path / "a.tif", a)
    img = read_image(tmp_path / "a.tif")
    assert img.data.shape == (1, 20, 24) and img.data.dtype == np.float32
    np.testing.assert_array_equal(img.data[0], a)


def test_cyx_from_ome_with_channel_names(tmp_path, rng):
    a = _cells(rng, (3, 16, 16))
    tifffile.imwrite(tmp_path / "a.ome.tif", a, ome=True, metadata={"axes": "CYX", "Channel": {"Name": ["DNA", "Actin", "Tub"]}})
    img = read_image(tmp_path / "a.ome.tif")
    assert img.channel_names == ("DNA", "Actin", "Tub")
    np.testing.assert_array_equal(img.data, a)


def test_yxc_guessed_from_shape(tmp_path, rng):
    a = _cells(rng, (16, 18, 2))
    tifffile.imwrite(tmp_path / "a.tif", a, photometric="minisblack", planarconfig="contig")
    img = read_image(tmp_path / "a.tif", axes="YXC")
    np.testing.assert_array_equal(img.data, np.moveaxis(a, -1, 0))


def test_multipage_channels(tmp_path, rng):
    pages = [_cells(rng, (16, 16)) for _ in range(2)]
    for name, kw in (("separate.tif", {"contiguous": False}), ("plain.tif", {"metadata": None})):
        with tifffile.TiffWriter(tmp_path / name) as tw:
            for p in pages:
                tw.write(p, **kw)
        img = read_image(tmp_path / name)
        assert img.data.shape == (2, 16, 16)
        np.testing.assert_array_equal(img.data[1], pages[1])


def test_imagej_channel_labels(tmp_path, rng):
    a = _cells(rng, (2, 16, 16))
    tifffile.imwrite(tmp_path / "a.tif", a, imagej=True, metadata={"axes": "CYX", "Labels": ["DAPI", "GFP"]})
    assert read_image(tmp_path / "a.tif").channel_names == ("DAPI", "GFP")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_dtypes(tmp_path, rng, dtype):
    a = _cells(rng, (2, 8, 8), dtype)
    tifffile.imwrite(tmp_path / "a.tif", a, metadata={"axes": "CYX"})
    img = read_image(tmp_path / "a.tif")
    assert img.dtype == np.dtype(dtype).name
    np.testing.assert_allclose(img.data, a.astype(np.float32))


def test_axes_overrides_metadata(tmp_path, rng):
    a = _cells(rng, (8, 8, 3))
    tifffile.imwrite(tmp_path / "a.tif", a, photometric="minisblack", metadata={"axes": "YXS"})
    assert read_image(tmp_path / "a.tif", axes="YXC").data.shape == (3, 8, 8)


def test_png_grey_and_rgb(tmp_path, rng):
    grey = _cells(rng, (10, 12), np.uint8)
    rgb = _cells(rng, (10, 12, 3), np.uint8)
    PILImage.fromarray(grey).save(tmp_path / "g.png")
    PILImage.fromarray(rgb).save(tmp_path / "c.png")
    assert read_image(tmp_path / "g.png").data.shape == (1, 10, 12)
    np.testing.assert_array_equal(read_image(tmp_path / "c.png").data, np.moveaxis(rgb, -1, 0))


def test_jpeg(tmp_path, rng):
    PILImage.fromarray(_cells(rng, (16, 16, 3), np.uint8)).save(tmp_path / "c.jpg", quality=95)
    assert read_image(tmp_path / "c.jpg").data.shape == (3, 16, 16)


# ------------------------------------------------------------------------------ malformed files
def _expect(path, match, **kw):
    with pytest.raises(InputError, match=match) as ei:
        read_image(path, **kw)
    assert str(path) in str(ei.value)


def test_truncated_tiff(tmp_path, rng):
    tifffile.imwrite(tmp_path / "a.tif", _cells(rng, (2, 64, 64)))
    data = (tmp_path / "a.tif").read_bytes()
    (tmp_path / "t.tif").write_bytes(data[: len(data) // 3])
    _expect(tmp_path / "t.tif", "truncated or corrupt")


def test_corrupt_tiff(tmp_path):
    (tmp_path / "c.tif").write_bytes(b"this is not a tiff at all" * 10)
    _expect(tmp_path / "c.tif", "truncated or corrupt")


def test_corrupt_png(tmp_path):
    (tmp_path / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    _expect(tmp_path / "c.png", "truncated or corrupt")


def test_zstack_where_2d_expected(tmp_path, rng):
    tifffile.imwrite(tmp_path / "z.tif", _cells(rng, (7, 16, 16)), imagej=True, metadata={"axes": "ZYX"})
    _expect(tmp_path / "z.tif", "3-D image .* Z axis")


def test_4d_image(tmp_path, rng):
    tifffile.imwrite(tmp_path / "z.tif", _cells(rng, (5, 2, 16, 16)), imagej=True, metadata={"axes": "ZCYX"})
    _expect(tmp_path / "z.tif", "4-D image")


def test_ambiguous_axes_needs_flag(tmp_path, rng):
    tifffile.imwrite(tmp_path / "q.tif", _cells(rng, (9, 16, 16)))
    _expect(tmp_path / "q.tif", "pass --axes")
    assert read_image(tmp_path / "q.tif", axes="CYX").data.shape == (9, 16, 16)


def test_bad_axes_flag(tmp_path, rng):
    tifffile.imwrite(tmp_path / "a.tif", _cells(rng, (2, 8, 8)))
    _expect(tmp_path / "a.tif", "has 2 letters", axes="YX")
    _expect(tmp_path / "a.tif", "not valid", axes="CYW")


def test_nan_and_inf(tmp_path, rng):
    a = rng.uniform(0, 1, (2, 8, 8)).astype(np.float32)
    a[0, 1, 1] = np.nan
    a[1, 2, 2] = np.inf
    tifffile.imwrite(tmp_path / "n.tif", a, metadata={"axes": "CYX"})
    _expect(tmp_path / "n.tif", "2 NaN or infinite")


def test_constant_image(tmp_path):
    tifffile.imwrite(tmp_path / "k.tif", np.full((8, 8), 7, np.uint16))
    _expect(tmp_path / "k.tif", "constant image")


def test_unsupported_dtype(tmp_path):
    tifffile.imwrite(tmp_path / "b.tif", np.arange(64, dtype=np.uint32).reshape(8, 8))
    _expect(tmp_path / "b.tif", "unsupported pixel type uint32")


def test_unreadable_file(tmp_path):
    (tmp_path / "dir.tif").mkdir()  # exists but is not a readable file
    _expect(tmp_path / "dir.tif", "no such file")
    _expect(tmp_path / "missing.tif", "no such file")


def test_unsupported_suffix(tmp_path):
    (tmp_path / "a.bmp").write_bytes(b"BM")
    _expect(tmp_path / "a.bmp", "unsupported file type")


# ------------------------------------------------------------------------------ folders and manifests
def _write_cell(path, rng, shape=(2, 16, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, _cells(rng, shape), photometric="minisblack", metadata={"axes": "CYX"})


def test_folder_discovery_skips_non_images_with_reason(tmp_path, rng, caplog):
    _write_cell(tmp_path / "a" / "1.tif", rng)
    _write_cell(tmp_path / "b" / "sub" / "2.tif", rng)
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "a" / ".DS_Store").write_text("x")
    (tmp_path / "README.md").write_text("x")
    with caplog.at_level(logging.INFO, logger="diffex"):
        recs = discover(tmp_path)
    assert [(r.path.name, r.condition) for r in recs] == [("1.tif", "a"), ("2.tif", "b")]
    assert "notes.txt: not an image file" in caplog.text
    assert "README.md: not inside a condition subfolder" in caplog.text
    assert ".DS_Store" not in caplog.text


def test_empty_folder(tmp_path):
    with pytest.raises(InputError, match="no condition subfolders"):
        discover(tmp_path)


def test_condition_without_images(tmp_path, rng):
    _write_cell(tmp_path / "a" / "1.tif", rng)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.csv").write_text("x")
    with pytest.raises(InputError, match="condition 'b' has no images") as ei:
        discover(tmp_path)
    assert str(tmp_path / "b") in str(ei.value)


def test_manifest(tmp_path, rng):
    _write_cell(tmp_path / "img" / "1.tif", rng)
    _write_cell(tmp_path / "img" / "2.tif", rng)
    (tmp_path / "m.csv").write_text("path,condition,plate,well,extra\nimg/1.tif,ctrl,P1,A01,z\nimg/2.tif,drug,P1,B02,z\n")
    recs = discover(tmp_path / "m.csv")
    assert [(r.condition, r.plate, r.well) for r in recs] == [("ctrl", "P1", "A01"), ("drug", "P1", "B02")]
    assert recs[0].path == tmp_path / "img" / "1.tif"


@pytest.mark.parametrize(
    "text, match",
    [
        ("file,condition\nimg/1.tif,a\n", r"lacks column\(s\) \['path'\]"),
        ("path,condition\nimg/nope.tif,a\n", "line 2: image .*nope.tif does not exist"),
        ("path,condition\nimg/1.tif,\n", "line 2: empty path or condition"),
    ],
)
def test_bad_manifest(tmp_path, rng, text, match):
    _write_cell(tmp_path / "img" / "1.tif", rng)
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(InputError, match=match):
        discover(tmp_path / "m.csv")


def test_mixed_sizes(tmp_path, rng):
    _write_cell(tmp_path / "a" / "1.tif", rng, (2, 16, 16))
    _write_cell(tmp_path / "a" / "2.tif", rng, (2, 20, 20))
    with pytest.raises(InputError, match="mixed image sizes") as ei:
        load_images(discover(tmp_path), show_progress=False)
    assert "2.tif" in str(ei.value) and "1.tif" in str(ei.value)


def test_wrong_channel_count(tmp_path, rng):
    _write_cell(tmp_path / "a" / "1.tif", rng, (2, 16, 16))
    _write_cell(tmp_path / "a" / "2.tif", rng, (3, 16, 16))
    with pytest.raises(InputError, match="2.tif: has 3 channel.* wrong channel count"):
        load_images(discover(tmp_path), show_progress=False)
    with pytest.raises(InputError, match="1.tif: has 2 channel.*model expects 4"):
        load_images(discover(tmp_path), expect_channels=4, show_progress=False)


def test_load_fits_to_size(tmp_path, rng):
    _write_cell(tmp_path / "a" / "1.tif", rng, (2, 64, 64))
    s = load_images(discover(tmp_path), size=32, show_progress=False)
    assert s.raw.shape == (1, 2, 32, 32) and s.original_shape == (64, 64)
    raw = read_image(tmp_path / "a" / "1.tif").data
    np.testing.assert_allclose(s.raw[0, 0, 0, 0], raw[0, :2, :2].mean(), rtol=1e-5)
