"""CT readers on the real DICOM and NIfTI files that pydicom and nibabel ship, and the bad-input errors."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import tifffile

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")
from pydicom.data import get_testdata_file  # noqa: E402

from diffex.data.ct_io import read_ct, read_dicom_series  # noqa: E402
from diffex.errors import InputError  # noqa: E402

NIB_DATA = os.path.join(os.path.dirname(nib.__file__), "tests", "data")
CT_SMALL = get_testdata_file("CT_small.dcm")


def test_dicom_ct_to_hu_with_spacing():
    ds = pydicom.dcmread(CT_SMALL)
    ct = read_ct(CT_SMALL)
    # HU = stored x slope + intercept, computed here from the raw element values
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(ct.hu[0], expected.astype(np.float32))
    assert ct.hu.dtype == np.float32 and ct.modality == "CT"
    assert ct.spacing == pytest.approx((5.0, 0.661468, 0.661468))
    assert ct.hu.min() == pytest.approx(128 - 1024) and ct.hu.max() == pytest.approx(2191 - 1024)


def _series(tmp_path, n=4, gap=2.5, spacing=None, orientation=None):
    folder = tmp_path / "series"
    folder.mkdir()
    for i in range(n):
        ds = pydicom.dcmread(CT_SMALL)
        ds.ImagePositionPatient = [0.0, 0.0, 10.0 + gap * (n - 1 - i)]  # written in reverse order on purpose
        ds.PixelData = (ds.pixel_array + 100 * i).astype(ds.pixel_array.dtype).tobytes()
        if spacing is not None and i == n - 1:
            ds.PixelSpacing = spacing
        if orientation is not None and i == n - 1:
            ds.ImageOrientationPatient = orientation
        ds.save_as(folder / f"slice{i}.dcm")
    return folder


def test_dicom_series_is_ordered_by_position(tmp_path):
    ct = read_dicom_series(_series(tmp_path))
    assert ct.hu.shape == (4, 128, 128) and ct.spacing[0] == pytest.approx(2.5)
    base = pydicom.dcmread(CT_SMALL).pixel_array.astype(np.float32) - 1024
    # slice i was written at the (n-1-i)-th position: ascending position order is slices 3, 2, 1, 0
    for z, i in enumerate((3, 2, 1, 0)):
        np.testing.assert_array_equal(ct.hu[z], base + 100 * i)


@pytest.mark.parametrize("kind, match", [("spacing", "mixed spacing"), ("orientation", "mixed orientation")])
def test_mixed_series_is_refused(tmp_path, kind, match):
    kw = {"spacing": [0.7, 0.7]} if kind == "spacing" else {"orientation": [0, 1, 0, 0, 0, -1]}
    with pytest.raises(InputError, match=match) as err:
        read_ct(_series(tmp_path, **kw))
    assert "slice3.dcm" in str(err.value)


def test_uneven_slice_gaps_are_refused(tmp_path):
    folder = _series(tmp_path)
    ds = pydicom.dcmread(folder / "slice0.dcm")
    ds.ImagePositionPatient = [0.0, 0.0, 30.0]
    ds.save_as(folder / "slice0.dcm")
    with pytest.raises(InputError, match="uneven"):
        read_ct(folder)


def test_dicom_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(InputError, match="without pixel data") as e:
        read_ct(get_testdata_file("rtplan.dcm"))
    assert "rtplan.dcm" in str(e.value)
    with pytest.raises(InputError, match="modality is MR, not CT.*--modality mr"):
        read_ct(get_testdata_file("MR_small.dcm"))
    mr = read_ct(get_testdata_file("MR_small.dcm"), modality="mr")  # asked for: read without HU
    assert mr.modality == "MR" and mr.hu.shape == (1, 64, 64)
    ds = pydicom.dcmread(CT_SMALL)
    del ds.RescaleSlope
    ds.save_as(tmp_path / "noslope.dcm")
    with pytest.raises(InputError, match="RescaleSlope missing"):
        read_ct(tmp_path / "noslope.dcm")
    ds = pydicom.dcmread(CT_SMALL)
    ds.RescaleIntercept = -4000
    ds.save_as(tmp_path / "offscale.dcm")
    with pytest.raises(InputError, match=r"outside \[-2000, 4000\]") as e:
        read_ct(tmp_path / "offscale.dcm")
    assert "offscale.dcm" in str(e.value)


def test_compressed_dicom_without_decoder_names_the_package(tmp_path):
    """A real JPEG-LS stream (pydicom's test file) declared as CT: no JPEG-LS decoder is installed here."""
    ds = pydicom.dcmread(get_testdata_file("JPEGLSNearLossless_16.dcm"))
    try:
        ds.pixel_array
        pytest.skip("a JPEG-LS decoder is installed")
    except Exception:
        pass
    ds.Modality, ds.RescaleSlope, ds.RescaleIntercept = "CT", 1, -1024
    ds.save_as(tmp_path / "jpegls.dcm")
    with pytest.raises(InputError, match="compressed .*JPEG-LS.*pip install pylibjpeg") as e:
        read_ct(tmp_path / "jpegls.dcm")
    assert "jpegls.dcm" in str(e.value)


def test_nifti_volume_and_orientation():
    path = os.path.join(NIB_DATA, "anatomical.nii")
    img = nib.as_closest_canonical(nib.load(path))
    ref = img.get_fdata()  # (X, Y, Z) RAS
    ct = read_ct(path, modality="mr")  # an MR volume: read without the HU range check
    assert ct.hu.shape == (ref.shape[2], ref.shape[1], ref.shape[0]) and ct.spacing == (2.0, 2.0, 2.0)
    # voxel (x, y, z) of RAS shows at row Y-1-y (anterior on top), column X-1-x (patient right on the left)
    x, y, z = 5, 7, 3
    assert ct.hu[z, ref.shape[1] - 1 - y, ref.shape[0] - 1 - x] == pytest.approx(ref[x, y, z])


def test_nifti_4d_and_oblique_are_refused(tmp_path):
    with pytest.raises(InputError, match="4-D NIfTI") as e:
        read_ct(os.path.join(NIB_DATA, "functional.nii"))
    assert "functional.nii" in str(e.value)
    affine = np.eye(4)
    c, s = np.cos(0.3), np.sin(0.3)
    affine[:2, :2] = [[c, -s], [s, c]]
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 2), np.int16), affine), tmp_path / "oblique.nii.gz")
    with pytest.raises(InputError, match="oblique affine"):
        read_ct(tmp_path / "oblique.nii.gz")


def test_nifti_ct_in_hu_via_header_scaling(tmp_path):
    stored = np.arange(4 * 5 * 2, dtype=np.int16).reshape(4, 5, 2) * 10
    img = nib.Nifti1Image(stored, np.diag([0.8, 0.8, 2.5, 1.0]))
    img.header.set_slope_inter(1.0, -1024.0)
    nib.save(img, tmp_path / "ct.nii.gz")
    ct = read_ct(tmp_path / "ct.nii.gz")
    assert ct.spacing == pytest.approx((2.5, 0.8, 0.8))
    assert ct.hu.min() == pytest.approx(-1024.0) and ct.hu.max() == pytest.approx(390.0 - 1024.0)


def test_hu_tiff_with_offset(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", np.array([[0, 1024, 2024]], np.uint16))
    ct = read_ct(tmp_path / "s.tif", hu_offset=1024, spacing=(0.7, 0.7))
    np.testing.assert_array_equal(ct.hu[0], [[-1024, 0, 1000]])
    with pytest.raises(InputError, match="declared HU offset"):
        read_ct(tmp_path / "s.tif")
    tifffile.imwrite(tmp_path / "f.tif", np.zeros((4, 4), np.float32))
    with pytest.raises(InputError, match="must be 16-bit"):
        read_ct(tmp_path / "f.tif", hu_offset=0, spacing=(1, 1))


def test_missing_path_is_named(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_ct(tmp_path / "nothing.dcm")
    shutil.copy(os.path.join(NIB_DATA, "standard.nii.gz"), tmp_path / "broken.dcm")
    with pytest.raises(InputError, match="not a readable DICOM"):
        read_ct(tmp_path / "broken.dcm")


@pytest.mark.parametrize("affine, spacing", [
    (np.diag([-0.7, -0.9, 2.5, 1.0]), (2.5, 0.9, 0.7)),  # LPS storage, anisotropic in-plane
    (np.array([[0, 0.9, 0, 0], [0.7, 0, 0, 0], [0, 0, 2.5, 0], [0, 0, 0, 1.0]]), (2.5, 0.7, 0.9)),  # i runs along y, j along x
])
def test_nifti_orientation_and_spacing_from_the_affine(tmp_path, affine, spacing):
    """Two marked voxels: the more anterior one shows higher up, the one further to the patient's right further left."""
    data = np.full((10, 12, 3), -1000, np.int16)
    world = lambda ijk: (affine @ np.array([*ijk, 1.0]))[:3]  # noqa: E731
    a, b = (2, 3, 1), (7, 9, 1)
    data[a], data[b] = 100, 200
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "v.nii.gz")
    ct = read_ct(tmp_path / "v.nii.gz")
    assert ct.spacing == pytest.approx(spacing)
    (za, ya, xa), (zb, yb, xb) = np.argwhere(ct.hu == 100)[0], np.argwhere(ct.hu == 200)[0]
    wa, wb = world(a), world(b)
    assert za == zb == 1
    assert (ya < yb) == (wa[1] > wb[1])  # rows run anterior (+y in RAS) to posterior
    assert (xa < xb) == (wa[0] > wb[0])  # columns run patient right (+x) to left
    # distances in mm are kept: the pixel offset times the spacing equals the world offset
    assert abs(yb - ya) * ct.spacing[1] == pytest.approx(abs(wb[1] - wa[1]))
    assert abs(xb - xa) * ct.spacing[2] == pytest.approx(abs(wb[0] - wa[0]))


def test_2d_nifti_not_stored_in_ras(tmp_path):
    data = np.arange(20, dtype=np.int16).reshape(4, 5) - 1000
    nib.save(nib.Nifti1Image(data, np.diag([-0.7, -0.9, 2.5, 1.0])), tmp_path / "s.nii.gz")
    ct = read_ct(tmp_path / "s.nii.gz")
    assert ct.hu.shape == (1, 5, 4) and ct.spacing[1:] == pytest.approx((0.9, 0.7))
    # stored L->R, P->A: shown right-to-left and anterior-first, i.e. the stored array transposed as is
    np.testing.assert_array_equal(ct.hu[0], data.T)


def test_declared_and_undeclared_padding_become_air(tmp_path):
    ds = pydicom.dcmread(CT_SMALL)
    arr = ds.pixel_array.copy()
    arr[:4] = 0
    ds.PixelData, ds.PixelPaddingValue = arr.tobytes(), 0  # declared: stored 0 (-1024 HU) is padding
    ds.save_as(tmp_path / "declared.dcm")
    ct = read_ct(tmp_path / "declared.dcm")
    assert (ct.hu[0, :4] == -1000).all() and (ct.hu[0, 4:] == arr[4:].astype(np.float32) - 1024).all()
    ds = pydicom.dcmread(CT_SMALL)
    ds.RescaleIntercept = -3024
    arr = np.full_like(ds.pixel_array, 2000)
    arr[:4] = 0  # an undeclared constant fill of -3024 HU outside the field of view
    ds.PixelData = arr.tobytes()
    ds.save_as(tmp_path / "undeclared.dcm")
    ct = read_ct(tmp_path / "undeclared.dcm")
    assert (ct.hu[0, :4] == -1000).all() and (ct.hu[0, 4:] == -1024).all()
    arr[:2] = 1  # two different values below -2000: not a fill, an error
    ds.PixelData = arr.tobytes()
    ds.save_as(tmp_path / "bad.dcm")
    with pytest.raises(InputError, match="outside"):
        read_ct(tmp_path / "bad.dcm")


def test_series_skips_non_dicom_files(tmp_path):
    folder = _series(tmp_path, n=3)
    (folder / "README").write_text("not dicom")
    (folder / "slice0.dcm").rename(folder / "1.2.840.10008.1")  # a UID-named file without suffix
    ct = read_ct(folder)
    assert ct.hu.shape == (3, 128, 128)
