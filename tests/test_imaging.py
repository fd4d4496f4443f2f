"""Tests for xrayvision.dicom.imaging: DICOM pixels to 8-bit greyscale PNG."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import MPEG2MPML, ExplicitVRLittleEndian

from xrayvision.dicom.imaging import Rendered, RenderError, render_png, to_grey8

data_store = pytest.importorskip("data_store")
DATA = Path(data_store.__file__).parent / "data"


# --------------------------------------------------------------------------
# Helpers


def data_file(name: str) -> Path:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"pydicom-data file {name} not available")
    return path


def read(name: str) -> Dataset:
    return pydicom.dcmread(data_file(name))


def png_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L"
        return np.asarray(image).astype(np.int16)


def temp_files(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def make_ds(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    **elements: object,
) -> Dataset:
    """A minimal in-memory image dataset (Explicit VR Little Endian)."""
    pixels = np.ascontiguousarray(pixels)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = pixels.shape[2] if pixels.ndim == 3 else 1
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def ramp12(rows: int = 8) -> np.ndarray:
    """Rows of 0..4095: a 12-bit ramp in uint16."""
    return np.tile(np.arange(4096, dtype=np.uint16), (rows, 1))


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window, straight onto 0..255 (reference)."""
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.clip(y, 0, 255)


# --------------------------------------------------------------------------
# Raw vs compressed, photometric interpretation, size


def test_rg1_raw_and_jpeg2000_lossless_render_the_same(tmp_path: Path) -> None:
    raw = render_png(data_file("RG1_UNCR.dcm"), tmp_path / "raw.png")
    j2k = render_png(data_file("RG1_J2KR.dcm"), tmp_path / "j2k.png")
    assert raw == j2k
    a, b = png_pixels(tmp_path / "raw.png"), png_pixels(tmp_path / "j2k.png")
    assert a.shape == b.shape == (raw.height, raw.width)
    assert np.abs(a - b).mean() <= 1.0
    assert np.array_equal(a, b)  # lossless: identical pixels, identical PNG


def test_monochrome1_is_inverted_after_windowing(tmp_path: Path) -> None:
    mono1 = read("RG1_UNCR.dcm")
    assert mono1.PhotometricInterpretation == "MONOCHROME1"
    mono2 = copy.deepcopy(mono1)
    mono2.PhotometricInterpretation = "MONOCHROME2"

    assert np.array_equal(to_grey8(mono1), 255 - to_grey8(mono2))

    render_png(mono1, tmp_path / "m1.png")
    render_png(mono2, tmp_path / "m2.png")
    a, b = png_pixels(tmp_path / "m1.png"), png_pixels(tmp_path / "m2.png")
    assert a.shape == b.shape
    # Exact at full size (above); resampling rounds each image on its own, so a level or two may differ.
    diff = np.abs(a - (255 - b))
    assert diff.max() <= 3 and diff.mean() < 0.6
    assert a.std() > 10  # a real image, not a constant


def test_long_side_resized_to_default_896_keeping_aspect(tmp_path: Path) -> None:
    ds = read("RG1_UNCR.dcm")  # 1841 wide x 1955 high
    result = render_png(ds, tmp_path / "out.png")
    assert isinstance(result, Rendered)
    assert result.height == 896
    assert result.width == round(ds.Columns * 896 / ds.Rows)
    with Image.open(tmp_path / "out.png") as image:
        assert image.size == (result.width, result.height)


def test_custom_max_side_on_landscape_image(tmp_path: Path) -> None:
    ds = make_ds(np.tile(np.arange(1000, dtype=np.uint16), (400, 1)), bits_stored=10)
    result = render_png(ds, tmp_path / "out.png", max_side=250)
    assert (result.width, result.height) == (250, 100)


def test_small_image_is_not_upscaled(tmp_path: Path) -> None:
    result = render_png(data_file("emri_small.dcm"), tmp_path / "small.png")
    assert (result.width, result.height) == (64, 64)
    with Image.open(tmp_path / "small.png") as image:
        assert image.size == (64, 64)


# --------------------------------------------------------------------------
# Modality LUT and VOI


def test_window_centre_width_is_honoured() -> None:
    ds = make_ds(ramp12(), bits_stored=12, WindowCenter=2048, WindowWidth=1024)
    grey = to_grey8(ds)
    assert grey.shape == (8, 4096) and grey.dtype == np.uint8
    row = grey[0].astype(int)
    assert (row[:1536] == 0).all()  # below the window
    assert (row[2560:] == 255).all()  # above the window
    assert np.abs(row - linear_window(np.arange(4096), 2048, 1024)).max() <= 1


def test_rescale_is_applied_before_the_window() -> None:
    # Modality values are 2 * stored - 1000, so the window [2000, 4000] in
    # modality units covers stored values 1500..2500.  Ignoring the rescale
    # would put it at stored 2000..4000 instead.
    ds = make_ds(
        ramp12(),
        bits_stored=12,
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=3000,
        WindowWidth=2000,
    )
    row = to_grey8(ds)[0].astype(int)
    assert (row[:1500] == 0).all()
    assert (row[2500:] == 255).all()
    assert abs(row[2000] - 127.5) <= 1
    expected = linear_window(2.0 * np.arange(4096) - 1000, 3000, 2000)
    assert np.abs(row - expected).max() <= 1

    ignoring_rescale = linear_window(np.arange(4096), 3000, 2000)
    assert np.abs(row - ignoring_rescale).max() > 100


def test_window_output_is_mapped_exactly_not_stretched() -> None:
    # All pixels sit inside a wide window: they must come out mid-grey, not
    # stretched to 0..255 as a min/max normalisation would do.
    pixels = np.tile(np.arange(1000, 1201, dtype=np.uint16), (4, 1))
    ds = make_ds(pixels, bits_stored=12, WindowCenter=1100, WindowWidth=1000)
    row = to_grey8(ds)[0].astype(int)
    expected = linear_window(np.arange(1000, 1201), 1100, 1000)
    assert np.abs(row - expected).max() <= 1
    assert 95 <= row.min() and row.max() <= 160


def test_signed_ct_window_in_hounsfield_units() -> None:
    hu = np.array([[-1000, -160, 40, 240, 1000, 3000]], dtype=np.int16)
    stored = (hu + 1024).astype(np.int16)
    ds = make_ds(
        stored,
        bits_stored=16,
        RescaleSlope=1,
        RescaleIntercept=-1024,
        WindowCenter=40,
        WindowWidth=400,
    )
    row = to_grey8(ds)[0].astype(int)
    assert row[0] == 0 and row[1] == 0  # at or below the window's low edge
    assert abs(row[2] - 128) <= 1
    assert row[3] == 255 and row[4] == 255 and row[5] == 255


def test_sigmoid_window() -> None:
    ds = make_ds(
        ramp12(),
        bits_stored=12,
        WindowCenter=2048,
        WindowWidth=512,
        VOILUTFunction="SIGMOID",
    )
    row = to_grey8(ds)[0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert abs(row[2048] - 128) <= 1
    assert (np.diff(row) >= 0).all()


def test_first_of_several_windows_is_used() -> None:
    ds = make_ds(
        ramp12(), bits_stored=12, WindowCenter=[1000, 3000], WindowWidth=[500, 500]
    )
    row = to_grey8(ds)[0].astype(int)
    assert np.abs(row - linear_window(np.arange(4096), 1000, 500)).max() <= 1


def test_no_voi_uses_robust_percentile_window() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(1000, 2001, size=(200, 200), dtype=np.uint16)
    pixels[:2, :2] = 4095  # a few hot pixels must not set the window
    grey = to_grey8(make_ds(pixels, bits_stored=12))
    assert grey[0, 0] == 255
    body = grey[10:, 10:]
    assert body.min() == 0 and body.max() == 255
    assert 100 <= body.mean() <= 155


def test_invalid_window_falls_back_to_percentile_window() -> None:
    ds = make_ds(ramp12(), bits_stored=12, WindowCenter=2048, WindowWidth=0)
    row = to_grey8(ds)[0]
    assert row[0] == 0 and row[-1] == 255


def test_degenerate_images_do_not_fail() -> None:
    flat = np.full((32, 32), 700, dtype=np.uint16)
    assert (to_grey8(make_ds(flat, bits_stored=12)) == 0).all()
    mono1 = make_ds(flat, bits_stored=12, photometric="MONOCHROME1")
    assert (to_grey8(mono1) == 255).all()
    one_level = make_ds(flat, bits_stored=12, WindowCenter=700, WindowWidth=1)
    assert to_grey8(one_level).shape == (32, 32)

    two_levels = flat.copy()
    two_levels[0, 0] = 900  # percentile window collapses to one value
    grey = to_grey8(make_ds(two_levels, bits_stored=12))
    assert grey[0, 0] == 255 and grey[1, 1] == 0


def test_float_pixel_data_with_nan() -> None:
    values = np.linspace(-5, 5, 64 * 64, dtype=np.float32).reshape(64, 64)
    values[0, 0] = np.nan
    ds = make_ds(np.zeros((64, 64), dtype=np.uint32))
    del ds.PixelData
    del ds.BitsStored, ds.HighBit, ds.PixelRepresentation
    ds.FloatPixelData = values.tobytes()
    grey = to_grey8(ds)
    assert grey.shape == (64, 64) and grey.dtype == np.uint8
    assert grey[0, 0] == 0 and grey.max() == 255


def test_voi_lut_sequence_and_modality_lut_files_render(tmp_path: Path) -> None:
    for name in ("vlut_04.dcm", "mlut_18.dcm"):
        result = render_png(data_file(name), tmp_path / f"{name}.png")
        assert (result.width, result.height) == (512, 512)
        pixels = png_pixels(tmp_path / f"{name}.png")
        assert pixels.std() > 10, name
        assert pixels.min() < 30 and pixels.max() > 225, name


def test_voi_lut_output_range_comes_from_the_descriptor() -> None:
    # A 16-bit VOI LUT whose entries only reach 0x7FFF: exact mapping gives
    # at most mid-grey (a min/max stretch would give white).
    lut_item = Dataset()
    lut_item.LUTDescriptor = [256, 0, 16]
    lut_item.LUTData = [v * 128 for v in range(256)]
    ds = make_ds(np.tile(np.arange(256, dtype=np.uint8), (4, 1)))
    ds.VOILUTSequence = [lut_item]
    row = to_grey8(ds)[0].astype(int)
    expected = np.arange(256) * 128 * 255 / 65535
    assert np.abs(row - expected).max() <= 1
    assert row.max() <= 128


def test_voi_lut_with_8_bit_entries_and_more_than_256_entries() -> None:
    # pydicom 3.0's apply_voi wraps table indices >= 256 for 8-bit entries.
    lut_item = Dataset()
    lut_item.LUTDescriptor = [4096, 0, 8]
    lut_item.LUTData = [v // 16 for v in range(4096)]
    ds = make_ds(ramp12(), bits_stored=12)
    ds.VOILUTSequence = [lut_item]
    row = to_grey8(ds)[0].astype(int)
    assert np.array_equal(row, np.arange(4096) // 16)


def test_voi_lut_sequence_takes_precedence_over_window() -> None:
    lut_item = Dataset()
    lut_item.LUTDescriptor = [4096, 0, 16]
    lut_item.LUTData = [v * 16 for v in range(4096)]
    ds = make_ds(ramp12(), bits_stored=12, WindowCenter=100, WindowWidth=10)
    ds.VOILUTSequence = [lut_item]
    row = to_grey8(ds)[0].astype(int)
    assert np.abs(row - np.arange(4096) * 16 * 255 / 65535).max() <= 1


# --------------------------------------------------------------------------
# Codecs and colour


@pytest.mark.parametrize(
    "name",
    [
        "emri_small_jpeg_ls_lossless.dcm",
        "emri_small_RLE.dcm",
        "JPEG-LL.dcm",
        "SC_rgb.dcm",
    ],
)
def test_codecs_and_colour_decode_to_2d_uint8(name: str) -> None:
    ds = read(name)
    grey = to_grey8(ds)
    assert grey.dtype == np.uint8
    assert grey.shape == (ds.Rows, ds.Columns)
    assert grey.std() > 1


def test_rgb_is_reduced_to_luminance() -> None:
    rgb = np.array(
        [[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]]],
        dtype=np.uint8,
    )
    grey = to_grey8(make_ds(rgb, photometric="RGB"))
    assert grey.tolist() == [[76, 150, 29, 255, 0]]


def test_ybr_multiframe_and_palette_inputs(tmp_path: Path) -> None:
    multi = read("color3d_jpeg_baseline.dcm")  # YBR_FULL_422, 120 frames
    assert to_grey8(multi).shape == (multi.Rows, multi.Columns)
    ybr = to_grey8(read("SC_ybr_full_uncompressed.dcm"))
    rgb = to_grey8(read("SC_rgb.dcm"))
    assert np.abs(ybr.astype(int) - rgb.astype(int)).max() <= 2
    # Headerless file (no "DICM", no file meta) with a palette colour LUT.
    result = render_png(data_file("OT-PAL-8-face.dcm"), tmp_path / "face.png")
    assert (result.width, result.height) == (640, 480)
    assert png_pixels(tmp_path / "face.png").std() > 10


# --------------------------------------------------------------------------
# Failures and atomic writes


def assert_render_fails(source: Path | Dataset, tmp_path: Path, match: str) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    target = out_dir / "image.png"
    with pytest.raises(RenderError, match=match) as info:
        render_png(source, target)
    assert str(info.value) and len(str(info.value)) < 200
    assert not target.exists()
    assert temp_files(out_dir) == []


def test_truncated_pixel_data_raises_render_error(tmp_path: Path) -> None:
    ds = read("RG3_UNCR.dcm")
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    assert_render_fails(ds, tmp_path, "cannot decode pixel data")
    with pytest.raises(RenderError):
        to_grey8(ds)


def test_truncated_file_raises_render_error(tmp_path: Path) -> None:
    whole = data_file("RG3_UNCR.dcm").read_bytes()
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(whole[: len(whole) // 2])
    assert_render_fails(broken, tmp_path, ".")

    j2k = data_file("RG1_J2KR.dcm").read_bytes()
    broken_j2k = tmp_path / "broken_j2k.dcm"
    broken_j2k.write_bytes(j2k[: len(j2k) - 400_000])
    assert_render_fails(broken_j2k, tmp_path, ".")


def test_truncated_jpeg2000_codestream_raises_render_error(tmp_path: Path) -> None:
    ds = read("emri_small_jpeg_2k_lossless.dcm")
    ds.NumberOfFrames = 1
    fragments = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=10))
    ds.PixelData = pydicom.encaps.encapsulate([fragments[0][: len(fragments[0]) // 3]])
    assert_render_fails(ds, tmp_path, "cannot decode JPEG 2000")


def test_missing_pixel_data_raises_render_error(tmp_path: Path) -> None:
    ds = read("emri_small.dcm")
    del ds.PixelData
    assert_render_fails(ds, tmp_path, "no pixel data")


def test_missing_file_raises_render_error(tmp_path: Path) -> None:
    assert_render_fails(tmp_path / "does-not-exist.dcm", tmp_path, "file not found")


def test_non_dicom_file_raises_render_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not a DICOM file\n" * 40)
    assert_render_fails(junk, tmp_path, ".")


def test_unsupported_transfer_syntax_raises_render_error(tmp_path: Path) -> None:
    ds = read("emri_small.dcm")
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    assert_render_fails(ds, tmp_path, "unsupported transfer syntax")


def test_bad_dimensions_raise_render_error(tmp_path: Path) -> None:
    ds = read("emri_small.dcm")
    ds.Rows = 0
    assert_render_fails(ds, tmp_path, ".")


def test_atomic_write_replaces_target_completely(tmp_path: Path) -> None:
    target = tmp_path / "image.png"
    target.write_bytes(b"old contents")
    result = render_png(data_file("RG3_UNCR.dcm"), target)
    assert temp_files(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.png"]
    with Image.open(target) as image:
        image.verify()
    with Image.open(target) as image:
        assert image.format == "PNG"
        assert image.size == (result.width, result.height)
        image.load()


def test_failed_write_leaves_old_target_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "image.png"
    target.write_bytes(b"old contents")

    def failing_save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        fp.write(b"\x89PNG partial")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(RenderError, match="cannot write PNG: disk full"):
        render_png(data_file("emri_small.dcm"), target)
    assert target.read_bytes() == b"old contents"
    assert temp_files(tmp_path) == []


def test_missing_target_directory_raises_render_error(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match="cannot write PNG"):
        render_png(data_file("emri_small.dcm"), tmp_path / "nope" / "image.png")


def test_max_side_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        render_png(data_file("emri_small.dcm"), tmp_path / "x.png", max_side=0)
