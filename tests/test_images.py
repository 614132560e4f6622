"""Reading pictures: every mode becomes RGB, every bad path a one-line ImageError."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deconvviz.errors import DeconvVizError
from deconvviz.io.images import IMAGE_SUFFIXES, ImageError, as_rgb, load_image

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _pattern(size: tuple[int, int] = (12, 8)) -> np.ndarray:
    w, h = size
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".webp"])
def test_lossless_formats_round_trip_exactly(tmp_path: Path, suffix: str) -> None:
    pixels = _pattern()
    path = tmp_path / f"p{suffix}"
    Image.fromarray(pixels).save(path, **({"lossless": True} if suffix == ".webp" else {}))
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == (12, 8)
    np.testing.assert_array_equal(np.asarray(image), pixels)


def test_str_path_and_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "p.JPG"
    Image.fromarray(_pattern((40, 30))).save(path, format="JPEG")
    image = load_image(str(path))
    assert image.mode == "RGB"
    assert image.size == (40, 30)


def test_file_is_closed_and_image_stays_usable(tmp_path: Path) -> None:
    path = tmp_path / "p.png"
    Image.fromarray(_pattern()).save(path)
    image = load_image(path)
    path.unlink()  # would fail on some platforms, and the pixels would be lost, if the file were still open
    assert np.asarray(image).shape == (8, 12, 3)


def test_alpha_is_laid_over_white(tmp_path: Path) -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red where visible
    rgba[:2, :, 3] = 255  # top half opaque, bottom half fully transparent
    path = tmp_path / "a.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    out = np.asarray(load_image(path))
    np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(out[3, 3], [255, 255, 255])


def test_half_transparent_pixel_is_blended() -> None:
    rgba = Image.new("RGBA", (1, 1), (0, 0, 0, 128))
    value = np.asarray(as_rgb(rgba))[0, 0]
    assert np.all(np.abs(value.astype(int) - 127) <= 1)


def test_palette_with_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 40, 50, 60] + [0] * (256 * 3 - 6))
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    path = tmp_path / "p.png"
    image.save(path, transparency=1)
    out = np.asarray(load_image(path))
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])


def test_greyscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    path = tmp_path / "g.png"
    Image.fromarray(grey).save(path)
    out = np.asarray(load_image(path))
    assert out.shape == (6, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)
    out = np.asarray(load_image(path))[0, :, 0]
    np.testing.assert_array_equal(out, [0, 100, 255])


def test_float_greyscale_in_unit_range() -> None:
    image = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert image.mode == "F"
    out = np.asarray(as_rgb(image))[0, :, 0]
    np.testing.assert_array_equal(out, [0, 128, 255])


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.fromarray(_pattern((40, 20)))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert load_image(path).size == (20, 40)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"not found: .*nope\.jpg"):
        load_image(tmp_path / "nope.jpg")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path)


def test_text_file_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("not a picture\n")
    with pytest.raises(ImageError, match="not a picture") as info:
        load_image(path)
    assert "\n" not in str(info.value)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError):
        load_image(path)


def test_truncated_png(tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    Image.fromarray(_pattern((64, 64))).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="corrupt or truncated") as info:
        load_image(path)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "locked.png"
    Image.fromarray(_pattern()).save(path)
    path.chmod(0)
    try:
        with pytest.raises(ImageError, match="permission denied"):
            load_image(path)
    finally:
        path.chmod(0o644)


def test_error_types() -> None:
    assert issubclass(ImageError, DeconvVizError)
    assert issubclass(ImageError, ValueError)


def test_suffixes() -> None:
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"} == set(IMAGE_SUFFIXES)
    assert all(s == s.lower() and s.startswith(".") for s in IMAGE_SUFFIXES)


def test_rgb_is_returned_as_is() -> None:
    image = Image.new("RGB", (3, 3), (1, 2, 3))
    assert as_rgb(image) is image


@pytest.mark.parametrize("name", ["cat.jpg", "coffee.jpg", "astronaut.jpg", "rocket.jpg"])
def test_example_photos_load(name: str) -> None:
    path = EXAMPLES / name
    assert path.suffix in IMAGE_SUFFIXES
    assert path.stat().st_size < 150_000
    image = load_image(path)
    assert image.mode == "RGB"
    assert min(image.size) >= 224
