"""The explorer's pictures and the errors its requests can cause, apart from the model that answers them.

:class:`Picture` is one picture the explorer knows (from the folder, or uploaded), :func:`picture_source` reads
what ``deconvviz explore`` was given; the errors carry the HTTP status the app answers with.
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deconvviz.errors import DeconvVizError
from deconvviz.io.images import IMAGE_SUFFIXES, ImageError, check_image, load_image
from deconvviz.io.sources import ImageSource, image_source

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image


class ExploreError(DeconvVizError, ValueError):
    """A request the explorer cannot answer as asked (HTTP 400 unless ``status`` says otherwise)."""

    status = 400


class UnknownPictureError(ExploreError):
    """A picture id the server never gave (HTTP 404)."""

    status = 404


class UploadTooLargeError(ExploreError):
    """An upload over the size limit (HTTP 413)."""

    status = 413


@dataclass
class Picture:
    """One picture the explorer knows, addressed by the id it gave.

    Attributes:
        id: the id (``p`` + a hash of the name for the folder's pictures, ``u`` + a hash of the bytes for uploads).
        name: the name shown (the path relative to the folder, as given, or the upload's file name).
        path: where its file is (an upload's copy lives in the temporary folder).
        index: its place in the scanned folder (None for uploads).
    """

    id: str
    name: str
    path: Path
    index: int | None = None
    size: tuple[int, int] | None = field(default=None, repr=False)

    def entry(self) -> dict[str, Any]:
        """``{"id", "name", "width", "height"}`` (the size read from the file's header once)."""
        if self.size is None:
            from PIL import Image as PILImage

            try:
                with PILImage.open(self.path) as opened:
                    self.size = opened.size
            except (OSError, ValueError, SyntaxError, PILImage.DecompressionBombError):
                self.size = (0, 0)  # an unreadable file still gets its entry; opening it reports the error
        return {"id": self.id, "name": self.name, "width": self.size[0], "height": self.size[1]}


def digest(data: bytes) -> str:
    """A short hash of ``data``, for picture ids."""
    return hashlib.blake2b(data, digest_size=6).hexdigest()


def picture_source(images: str | Path | Sequence[str | Path]) -> ImageSource:
    """A folder or a text file of paths (as ``report`` takes), or picture files given one by one."""
    items = [Path(images)] if isinstance(images, str | Path) else [Path(i) for i in images]
    if len(items) == 1 and (items[0].is_dir() or items[0].suffix.lower() not in IMAGE_SUFFIXES):
        return image_source(items[0])
    for path in items:
        if not path.exists():
            raise ImageError(f"image file not found: {str(path)!r}; check the path")
        if path.is_dir():
            raise ImageError(f"{str(path)!r} is a folder; give one folder, or picture files")
        check_image(path)  # its header: a file that is no picture is refused at launch, not when it is picked
    names = [str(p) for p in items]

    def opener(i: int) -> Any:
        return load_image(items[i])

    return ImageSource(names, f"{len(items)} picture file(s)", opener, items)


def mebibytes(count: int) -> str:
    """A size in bytes in the unit ``--upload-limit`` takes: ``32 MiB``, ``33.6 MiB``, ``0.191 MiB``."""
    value = count / (1 << 20)
    text = f"{value:.1f}".removesuffix(".0") if value >= 1 else f"{value:.3g}"
    return f"{text} MiB"


def png_bytes(picture: Image) -> bytes:
    """A PIL picture as PNG bytes."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


@functools.cache
def heat_table() -> Any:
    """256 colours from black through red and orange to pale yellow (a perceptually ordered heat scale)."""
    import numpy as np

    anchors = np.array(
        [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21], [250, 193, 39]],
        dtype=np.float64,
    )
    anchors = np.vstack([anchors, [252, 255, 164]])
    steps = np.linspace(0, len(anchors) - 1, 256)
    low = np.floor(steps).astype(int).clip(0, len(anchors) - 2)
    t = (steps - low)[:, None]
    return np.rint(anchors[low] * (1 - t) + anchors[low + 1] * t).astype(np.uint8)


__all__ = [
    "ExploreError",
    "Picture",
    "UnknownPictureError",
    "UploadTooLargeError",
    "digest",
    "heat_table",
    "mebibytes",
    "picture_source",
    "png_bytes",
]
