"""Read pictures from disk as RGB PIL images, with a one-line error for anything that is not one.

Transparent pixels are laid over white (a logo on a transparent background stays a logo on white rather
than on whatever colour the hidden pixels happen to hold), EXIF orientation is applied so that a phone
photo stands the way it was taken, and 16-bit or floating-point greyscale is brought to 8 bits.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from deconvviz.errors import DeconvVizError, first_line

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
"""File suffixes (lower case) that deconvviz treats as pictures when it looks through a folder."""


_NOT_A_PICTURE = "{!r} is not a picture Pillow can read; use a JPEG, PNG, WebP, BMP or TIFF file"


class ImageError(DeconvVizError, ValueError):
    """A path that does not lead to a readable picture."""


class LargeImageWarning(UserWarning):
    """A picture so large that reading it takes a lot of memory (Pillow's decompression-bomb warning, in one line)."""


def load_image(path: str | os.PathLike[str]) -> Image.Image:
    """Read a picture file as an RGB image.

    Args:
        path: a picture file (JPEG, PNG, WebP, BMP, TIFF, ... anything Pillow reads).

    Returns:
        An RGB ``PIL.Image.Image`` held in memory (the file is closed).

    Raises:
        ImageError: the path is missing, a folder, unreadable, or not a picture Pillow can decode;
            the message names the path and the problem.

    Example:
        >>> img = load_image("examples/cat.jpg")  # doctest: +SKIP
        >>> img.mode, img.size  # doctest: +SKIP
        ('RGB', (451, 300))
    """
    image = _read(Path(path), decode=True)
    assert image is not None  # decoded
    return image


def check_image(path: str | os.PathLike[str]) -> None:
    """Check that a file is a picture from its header alone, without decoding it (fast over many files).

    Raises:
        ImageError: what :func:`load_image` raises for a missing, unreadable or non-picture file (a corrupt body
            shows only when the picture is decoded).
    """
    _read(Path(path), decode=False)


def _read(p: Path, *, decode: bool) -> Image.Image | None:
    """The picture at ``p`` (``decode``), or None once its header reads; the errors of :func:`load_image`."""
    if not p.exists():
        raise ImageError(f"image file not found: {str(p)!r}; check the path")
    if p.is_dir():
        raise ImageError(
            f"{str(p)!r} is a folder, not an image file; pass picture files, or run `deconvviz report {p}` for a "
            "report over a folder of pictures"
        )
    try:
        # Opened without blocking and checked to be a regular file before Pillow reads it: a FIFO or a device
        # given as a picture is refused at once instead of waiting forever for data.
        descriptor = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(descriptor, "rb") as handle:  # noqa: PTH123 - a file object over the descriptor checked above
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise ImageError(f"{str(p)!r} is not a regular file (a pipe, socket or device); pass a picture file")
            if decode:
                return _decode(handle, str(p))
            try:
                Image.open(handle).close()
            except UnidentifiedImageError as exc:
                raise ImageError(_NOT_A_PICTURE.format(str(p))) from exc
            return None
    except ImageError:
        raise
    except PermissionError as exc:
        raise ImageError(f"cannot read image {str(p)!r}: permission denied") from exc
    except OSError as exc:
        raise ImageError(f"image {str(p)!r} is corrupt or truncated ({first_line(exc)}); re-export it") from exc


def decode_image(data: bytes, name: str) -> Image.Image:
    """Decode a picture held in memory (an upload) as an RGB image, with the limits and messages of :func:`load_image`.

    Args:
        data: the file's bytes.
        name: what to call it in messages (the file name it came with).

    Returns:
        An RGB ``PIL.Image.Image``.

    Raises:
        ImageError: not a picture Pillow can decode, corrupt, or too large to open safely (a decompression bomb).
    """
    return _decode(io.BytesIO(data), name)


def _decode(handle: BinaryIO, label: str) -> Image.Image:
    """Decode an open picture file; ``label`` names it in messages."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            with Image.open(handle) as opened:
                opened.load()
                image = as_rgb(ImageOps.exif_transpose(opened) or opened)
    except UnidentifiedImageError as exc:
        raise ImageError(_NOT_A_PICTURE.format(label)) from exc
    except Image.DecompressionBombError as exc:
        most = 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6  # Pillow refuses pictures over twice its limit
        raise ImageError(
            f"image {label!r} is too large to open safely ({first_line(exc)}); resize it below {most:.3g} megapixels"
        ) from exc
    except PermissionError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data surfaces as any of these
        raise ImageError(f"image {label!r} is corrupt or truncated ({first_line(exc)}); re-export it") from exc
    for warning in caught:
        if issubclass(warning.category, Image.DecompressionBombWarning):
            megapixels = image.width * image.height / 1e6
            warnings.warn(
                f"{label!r} is a {megapixels:.0f}-megapixel picture; reading it takes a lot of memory",
                LargeImageWarning,
                stacklevel=3,
            )
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return image


def as_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow image as RGB: transparent pixels over white, 16-bit and float greyscale down to 8 bits.

    An RGB image is returned as it is (not copied).
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _to_8bit(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _to_8bit(image: Image.Image) -> Image.Image:
    """Greyscale with more than 8 bits (16-bit PNG/TIFF, float TIFF) as an 8-bit ``L`` image."""
    import numpy as np  # only here, so that importing this module stays light

    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        # floats are taken as 0..1 when they fit there, else as 0..255
        values = values * 255.0 if np.nanmax(values, initial=0.0) <= 1.0 else values
    elif np.max(values, initial=0.0) > 255.0:
        values = values / 257.0  # 65535 -> 255
    values = np.nan_to_num(values, nan=0.0)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
