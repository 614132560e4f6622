"""Where a scan's images come from: a folder tree, a text file of paths, or a ``torch.utils.data.Dataset``.

Every source is an ordered, indexable list of images with a stable name per image (the path relative to
the folder or as written in the list, or ``#index`` for a data set), so that scans are deterministic, can be
split into shards by index and resumed by position. ``limit`` keeps the first images and ``sample`` a seeded
random subset (kept in source order), for a quick look at a large data set.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deconvviz.errors import DeconvVizError
from deconvviz.io.atomic import MARKER, owned
from deconvviz.io.images import IMAGE_SUFFIXES, load_image

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image
    from torch import Tensor

Data = Any
"""What a scan accepts: a folder, a text file of image paths (one per line), or a torch Dataset."""


class SearchError(DeconvVizError, ValueError):
    """A folder, path list, data set, layer or channel choice that a top-k search cannot work with."""


class ImageSource:
    """An ordered list of images to scan.

    Args:
        names: one stable name per image (what reports and manifests show).
        description: where the images come from (a folder, a list file, a data set), for reports.
        opener: ``opener(i)`` the ``i``-th picture: a PIL image, or a ``(C, H, W)``/``(1, C, H, W)`` tensor that
            is already model input.
        paths: the image files, where the images are files (``None`` for a data set).
    """

    def __init__(
        self,
        names: Sequence[str],
        description: str,
        opener: Callable[[int], Any],
        paths: Sequence[Path] | None = None,
    ) -> None:
        self.names = list(names)
        self.description = description
        self._opener = opener
        self.paths = list(paths) if paths is not None else None
        self._where: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"ImageSource({self.description!r}, {len(self)} images)"

    def open(self, index: int) -> Image | Tensor:
        """The ``index``-th picture as the source gives it (a PIL image, or a tensor already in input space)."""
        return self._opener(index)

    def prepare(self, index: int, preprocess: Callable[[Any], Tensor]) -> Tensor:
        """The ``index``-th picture as one ``(C, H, W)`` model input on the CPU."""
        import torch

        item = self.open(index)
        if isinstance(item, torch.Tensor):
            x = item if item.dim() == 4 else item[None]
        else:
            x = preprocess(item)
        if x.dim() != 4 or x.shape[0] != 1:
            raise SearchError(f"image {self.names[index]!r} is not one picture: got a tensor of shape {tuple(x.shape)}")
        return x[0].cpu()

    def index(self, name: str) -> int:
        """The position of the image called ``name``."""
        if self._where is None:
            self._where = {n: i for i, n in enumerate(self.names)}
        return self._where[name]

    def digest(self) -> str:
        """A fingerprint of the image list (names and where they come from), for resumable state."""
        h = hashlib.blake2b(digest_size=16)
        h.update(self.description.encode())
        for name in self.names:
            h.update(b"\0" + name.encode())
        return h.hexdigest()

    def subset(self, indices: Sequence[int]) -> ImageSource:
        """The images at ``indices`` (in that order)."""
        keep = list(indices)
        paths = self.paths
        return ImageSource(
            [self.names[i] for i in keep],
            self.description,
            _Subset(self._opener, keep),
            [paths[i] for i in keep] if paths is not None else None,
        )


# Openers are small classes rather than closures, so that a source can be sent to DataLoader workers started by
# spawn or forkserver (the default start method of Python 3.14 on Linux) as well as by fork.


class _Subset:
    def __init__(self, opener: Callable[[int], Any], keep: list[int]) -> None:
        self.opener, self.keep = opener, keep

    def __call__(self, index: int) -> Any:
        return self.opener(self.keep[index])


class _Files:
    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths

    def __call__(self, index: int) -> Any:
        return _open_file(self.paths[index])


class _Items:
    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __call__(self, index: int) -> Any:
        item = self.dataset[index]
        if isinstance(item, tuple | list):  # (image, target) as torchvision's data sets give them
            item = item[0]
        return item


def image_source(data: Data, *, limit: int | None = None, sample: int | None = None, seed: int = 0) -> ImageSource:
    """The images of ``data``, in a stable order.

    Args:
        data: a folder (scanned recursively, e.g. ImageNet's class folders; files in sorted relative-path
            order), a text file of image paths (one per line, relative to the file's own folder unless absolute;
            blank lines and lines starting with ``#`` are skipped), a ``torch.utils.data.Dataset`` whose items are
            PIL images, tensors in the model's input space, or ``(image, target)`` pairs, or an
            :class:`ImageSource`.
        limit: keep only the first ``limit`` images.
        sample: keep a random ``sample`` of the images (after ``limit``), drawn with ``seed``, in source order.
        seed: the seed of ``sample``.

    Raises:
        SearchError: a missing folder or list, no images, a list naming missing files, or a bad limit/sample.
    """
    if isinstance(data, ImageSource):
        source = data
    elif isinstance(data, str | os.PathLike):
        path = Path(data)
        if not path.exists():
            raise SearchError(
                f"folder not found: {str(path)!r} (give a folder of images or a text file of image paths)"
            )
        source = _folder(path) if path.is_dir() else _list_file(path)
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        source = _dataset(data)
    else:
        raise SearchError(
            f"cannot scan a {type(data).__name__}: give a folder, a text file of image paths or a torch Dataset"
        )
    for name, value in (("limit", limit), ("sample", sample)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SearchError(f"{name} must be a positive number of images, got {value!r}")
    if limit is not None and limit < len(source):
        source = source.subset(range(limit))
    if sample is not None and sample < len(source):
        import torch

        generator = torch.Generator().manual_seed(int(seed))
        chosen = sorted(torch.randperm(len(source), generator=generator)[:sample].tolist())
        source = source.subset(chosen)
    return source


def find_images(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (recursively), in a stable order (sorted relative paths).

    Folders that deconvviz wrote (results, reports, their staging and scan state: see
    :data:`deconvviz.io.MARKER`) are not looked into, so a report kept inside its own input folder never scans
    its own pictures.

    Raises:
        SearchError: the folder does not exist, is not a folder, is a deconvviz result, or holds no image files.
    """
    root = Path(folder)
    if not root.exists():
        raise SearchError(f"folder not found: {str(root)!r}")
    if not root.is_dir():
        raise SearchError(f"not a folder: {str(root)!r} (give a folder of images)")
    if owned(root):
        raise SearchError(f"{str(root)!r} is a folder deconvviz wrote; give the folder of the pictures themselves")
    found: list[Path] = []
    for parent, dirs, files in os.walk(root):  # os.walk: one listing per folder, fast on 1000 class folders
        base = Path(parent)
        dirs[:] = sorted(d for d in dirs if not (base / d / MARKER).is_file())
        found.extend(base / f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES)
    paths = sorted(found, key=lambda p: p.relative_to(root).as_posix())
    if not paths:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise SearchError(f"no images in {str(root)!r} (looked recursively for {suffixes})")
    return paths


def _open_file(path: Path) -> Image:
    return load_image(path)


def _folder(root: Path) -> ImageSource:
    paths = find_images(root)
    return ImageSource([p.relative_to(root).as_posix() for p in paths], str(root), _Files(paths), paths)


def _list_file(listing: Path) -> ImageSource:
    if listing.suffix.lower() in IMAGE_SUFFIXES:
        raise SearchError(f"{str(listing)!r} is a picture, not a folder or a list of images; give its folder")
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SearchError(f"cannot read the image list {str(listing)!r} ({exc}); give a UTF-8 text file") from exc
    names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise SearchError(f"the image list {str(listing)!r} names no images (one path per line)")
    base = listing.parent
    paths = [Path(n) if Path(n).is_absolute() else base / n for n in names]
    missing = [n for n, p in zip(names, paths, strict=True) if not p.is_file()]
    if missing:
        raise SearchError(
            f"{len(missing)} file(s) in the image list {str(listing)!r} do not exist, the first: {missing[0]!r} "
            "(paths are relative to the list's folder)"
        )
    return ImageSource(names, str(listing), _Files(paths), paths)


def _dataset(dataset: Any) -> ImageSource:
    count = len(dataset)
    if count < 1:
        raise SearchError("the data set is empty")
    width = len(str(count - 1))
    return ImageSource([f"#{i:0{width}d}" for i in range(count)], f"{type(dataset).__name__}", _Items(dataset))


__all__ = ["Data", "ImageSource", "SearchError", "find_images", "image_source"]
