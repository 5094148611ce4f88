"""CT manifest and patches: slice and centre picked, resampled to the spacing, patient ids carried as replicates."""

from __future__ import annotations

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")

from diffex.data.ct_load import CTGeometry, load_ct_patches, read_ct_manifest  # noqa: E402
from diffex.errors import DiffexError, InputError  # noqa: E402


def _volume(tmp_path):
    """A 6-slice NIfTI at 0.5 mm in-plane: air, and a 4 mm disk of +40 HU on slice 3 around voxel (y, x) = (20, 30)."""
    hu = np.full((6, 48, 64), -1000.0, np.float32)  # (Z, Y, X) as diffex shows it
    yy, xx = np.mgrid[:48, :64]
    hu[3][(yy - 20) ** 2 + (xx - 30) ** 2 <= 4**2] = 40.0
    # back to the file's RAS (X, Y, Z) layout: undo diffex's row/column flips
    data = hu[:, ::-1, ::-1].transpose(2, 1, 0)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data).astype(np.int16), np.diag([0.5, 0.5, 2.0, 1.0])), tmp_path / "vol.nii.gz")
    return tmp_path / "vol.nii.gz"


def test_patch_is_centred_on_the_lesion_at_the_spacing(tmp_path):
    _volume(tmp_path)
    (tmp_path / "m.csv").write_text("path,condition,patient_id,slice,center_y,center_x\n"
                                    "vol.nii.gz,malignant,P1,3,20,30\nvol.nii.gz,benign,P2,1,,\n")
    recs = read_ct_manifest(tmp_path / "m.csv")
    assert [(r.patient_id, r.slice, r.center) for r in recs] == [("P1", 3, (20.0, 30.0)), ("P2", 1, None)]
    s = load_ct_patches(recs, CTGeometry(spacing_mm=1.0, size=16, windows=("lung", "mediastinum")), show_progress=False)
    assert s.raw.shape == (2, 2, 16, 16) and s.channel_names == ("lung", "mediastinum")
    assert [r.replicate for r in s.records] == ["P1", "P2"] and s.conditions == ["benign", "malignant"]
    lesion = s.raw[0, 0] > -500
    area_mm2 = lesion.sum() * 1.0  # 1 mm pixels
    assert area_mm2 == pytest.approx(np.pi * 2.0**2, rel=0.35)  # a 4 mm disk at 1 mm: 12.6 mm^2, coarse pixels
    # voxel (20, 30) at 0.5 mm has its centre at (20.5, 30.5) x 0.5 mm = index (9.75, 14.75) at 1 mm; the patch
    # starts at floor(9.75 - 8 + 1) = 2 and floor(14.75 - 8 + 1) = 7, so the disk's centre is at (7.75, 7.75)
    w = s.raw[0, 0] + 1000.0  # intensity above air, symmetric about the disk's centre
    cy, cx = (w.sum(1) @ np.arange(16)) / w.sum(), (w.sum(0) @ np.arange(16)) / w.sum()
    assert (cy, cx) == pytest.approx((7.75, 7.75), abs=0.05)
    assert (s.raw[1, 0] == -1000).all()  # slice 1 is air: inside the lung window
    assert (s.raw[1, 1] == -125).all()  # and clipped to the mediastinum window's low end
    assert np.array_equal(s.raw[0, 1], np.clip(s.raw[0, 0], -125.0, 225.0))  # one HU patch, one window per channel


def test_ct_manifest_and_patch_errors(tmp_path):
    _volume(tmp_path)
    cases = {
        "vol.nii.gz,a,P1,,,\n": "needs a slice or center_z",
        "vol.nii.gz,a,P1,9,,\n": "slice 9 is outside",
        "vol.nii.gz,a,P1,3,2,30\n": "leaves the",
        "vol.nii.gz,a,P1,3,20,\n": "both center_y and center_x",
        "vol.nii.gz,a,P1,x,,\n": "slice 'x' is not a number",
        "gone.dcm,a,P1,,,\n": "does not exist",
    }
    for row, match in cases.items():
        (tmp_path / "m.csv").write_text("path,condition,patient_id,slice,center_y,center_x\n" + row)
        with pytest.raises(InputError, match=match):
            load_ct_patches(read_ct_manifest(tmp_path / "m.csv"), CTGeometry(spacing_mm=1.0, size=16), show_progress=False)
    with pytest.raises(DiffexError, match="unknown HU window"):
        CTGeometry(windows=("brain",))


def test_hu_tiff_rows_declare_offset_and_spacing(tmp_path):
    """A 16-bit TIFF slice with its offset and spacing in the manifest gives the same HU patch as the NIfTI it was cut from."""
    import tifffile

    from diffex.data.source import record_digest

    _volume(tmp_path)
    hu = np.full((48, 64), -1000.0, np.float32)
    yy, xx = np.mgrid[:48, :64]
    hu[(yy - 20) ** 2 + (xx - 30) ** 2 <= 4**2] = 40.0  # slice 3 of _volume, as diffex shows it
    tifffile.imwrite(tmp_path / "s3.tif", (hu + 1024).astype(np.uint16))
    (tmp_path / "m.csv").write_text("path,condition,patient_id,slice,center_y,center_x,hu_offset,spacing_mm\n"
                                    "s3.tif,malignant,P1,,20,30,1024,0.5\nvol.nii.gz,malignant,P2,3,20,30,,\n")
    recs = read_ct_manifest(tmp_path / "m.csv")
    assert recs[0].hu_tiff == (1024.0, 0.5) and recs[1].hu_tiff is None
    geo = CTGeometry(spacing_mm=1.0, size=16, windows=("mediastinum",))
    s = load_ct_patches(recs, geo, show_progress=False)
    np.testing.assert_array_equal(s.raw[0], s.raw[1])
    assert s.raw[0].max() == pytest.approx(40.0, abs=1e-3)  # the disk, resampled
    # another declared offset is another image: its cache key differs
    other = recs[0].as_record().__class__(**{**vars(recs[0].as_record()), "hu_tiff": (0.0, 0.5)})
    assert record_digest(other, "f") != record_digest(recs[0].as_record(), "f")
    assert record_digest(recs[1].as_record(), "f") == record_digest(recs[1].as_record().__class__(
        **{**vars(recs[1].as_record()), "hu_tiff": None}), "f")


@pytest.mark.parametrize("row, match", [
    ("s.tif,a,P1,,,,,\n", "does not say how its values map to HU: give hu_offset"),
    ("s.tif,a,P1,,,,1024,\n", "give hu_offset"),
    ("s.tif,a,P1,,,,1024,0\n", "spacing_mm must be > 0"),
    ("s.tif,a,P1,,,,1024,x\n", "spacing_mm 'x' is not a number"),
    ("vol.nii.gz,a,P1,3,,,1024,0.5\n", "apply to 16-bit TIFF files only"),
])
def test_hu_tiff_declaration_errors_name_the_line(tmp_path, row, match):
    import tifffile

    _volume(tmp_path)
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((8, 8), np.uint16))
    (tmp_path / "m.csv").write_text("path,condition,patient_id,slice,center_y,center_x,hu_offset,spacing_mm\n" + row)
    with pytest.raises(InputError, match=match) as e:
        read_ct_manifest(tmp_path / "m.csv")
    assert "m.csv" in str(e.value) and "line 2" in str(e.value)
