"""One feature map in other pictures: its strongest units across a folder, projected (the paper's Fig. 7).

Beside the projection of the occluded picture's strongest feature map, Zeiler & Fergus show "visualizations of
this map from other images": what the same unit responds to elsewhere, so that the occlusion maps can be read
as "this map is an eye detector" rather than a single picture's coincidence. A folder is scanned once at the
followed layer (every channel's strongest units kept, as :func:`~deconvviz.top_k` keeps them); each occluded
picture then has its own map's hits projected, the picture itself left out when it is in the folder.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deconvviz.analysis.base import AnalysisError
from deconvviz.analysis.progress import Progress

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from torch import Tensor

    from deconvviz.analysis.topk.scan import ScanResult
    from deconvviz.io.sources import Data
    from deconvviz.models.session import Session


@dataclass(frozen=True)
class OtherPicture:
    """A feature map's strongest unit in another picture, projected to pixels.

    Attributes:
        image: the picture's name in the scanned folder.
        value: the unit's activation.
        position: ``(row, col)`` of the unit in the map.
        box: ``(top, left, bottom, right)``: the unit's receptive field in that picture as the model sees it.
        reconstruction: ``(C, h, w)``: the projection cut to ``box``, in the model's input space.
        patch: ``(h, w, 3)`` uint8: the picture cut to ``box``.
    """

    image: str
    value: float
    position: tuple[int, int]
    box: tuple[int, int, int, int]
    reconstruction: Tensor = field(repr=False)
    patch: np.ndarray = field(repr=False)


@dataclass
class OtherPictures:
    """A folder scanned at one layer: every channel's strongest units, ready to project one map's."""

    found: ScanResult
    k: int
    current: Session

    @classmethod
    def scan(
        cls, current: Session, data: Data, layer: str, k: int, *, progress: Progress | None = None
    ) -> OtherPictures:
        """Scan ``data`` at ``layer``, keeping ``k + 1`` units per channel (one may be the occluded picture's).

        Raises:
            AnalysisError: ``k`` that is not a whole number of at least 1, a model without preprocessing.
            SearchError: a missing or empty folder, or one without a readable picture.
        """
        from deconvviz.analysis.topk.scan import scan
        from deconvviz.io.sources import image_source

        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise AnalysisError(f"the other pictures shown per map must be a whole number of at least 1, got {k!r}")
        current.require_preprocessing("other pictures need", error=AnalysisError)
        source = image_source(data)  # a missing or empty folder fails here, before any work
        report = None
        if progress is not None:
            progress(0, len(source.names), "other pictures")
            report = lambda stage, done, total: progress(done, total, "other pictures")  # noqa: E731
        found = scan(source, current.model, [layer], k + 1, None, progress=report)
        return cls(found=found, k=k, current=current)

    @property
    def folder(self) -> str:
        """The scanned folder (or list file) as given."""
        return self.found.source.description

    @property
    def count(self) -> int:
        """How many pictures were scanned (readable or not)."""
        return len(self.found.names)

    def besides(self, leave_out: str | None) -> int:
        """How many scanned pictures there are besides ``leave_out`` (a picture file, or None)."""
        return self.count - len(self._left_out(leave_out))

    def _left_out(self, leave_out: str | None) -> set[str]:
        return set(self._names_by_file.get(Path(leave_out).resolve(), [])) if leave_out is not None else set()

    @functools.cached_property
    def _names_by_file(self) -> dict[Path, list[str]]:
        names: dict[Path, list[str]] = {}
        for name, path in zip(self.found.names, self.found.source.paths or [], strict=False):
            names.setdefault(Path(path).resolve(), []).append(name)
        return names

    def of(self, channel: int, *, method: str, leave_out: str | None = None) -> tuple[OtherPicture, ...]:
        """The ``k`` strongest units of ``channel`` in the scanned pictures, projected with ``method``.

        Units that do not fire (activation 0) are left out: fewer than ``k``, or none, where the map is silent.

        Args:
            channel: the feature map.
            method: the reverse pass.
            leave_out: a picture file not to show (the occluded picture, when it is in the folder).
        """
        import numpy as np

        from deconvviz.analysis.topk.keep import keep_channels
        from deconvviz.analysis.topk.scan import project_hits
        from deconvviz.viz.render import input_to_pil

        layer = self.found.layers[0]
        one = keep_channels(self.found, {layer: [channel]})
        hits = project_hits(one, batch_size=8, method=method)[layer][channel]
        skip = self._left_out(leave_out)
        to_image: Any = getattr(self.current.model, "to_image", None)
        return tuple(
            OtherPicture(
                image=hit.image,
                value=hit.value,
                position=hit.position,
                box=hit.box,
                reconstruction=hit.reconstruction,
                patch=np.asarray(input_to_pil(hit.patch, to_image, self.current.channel_order)),
            )
            for hit in [h for h in hits if h.image not in skip and h.value > 0][: self.k]
        )


__all__ = ["OtherPicture", "OtherPictures"]
