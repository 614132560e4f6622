"""What the explorer serves, as plain Python: pictures, layers, activations, projections, their steps, top-k hits.

:class:`Explorer` owns the model session, the pictures (a folder's or a list's, plus uploads kept in a temporary
folder), a byte-bounded cache holding one capture per picture, layer and reverse pass, the model worker and the
background top-k scan. The HTTP app (:mod:`deconvviz.explore.app`) is a thin layer over it, and so are the
tests and the benchmark. Every error a request can cause is a :class:`~deconvviz.errors.DeconvVizError` whose
first line is what the command line would print.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deconvviz.core.layers import channels_last, reverse_stops
from deconvviz.core.receptive import receptive_fields
from deconvviz.core.seeds import no_map, position_outside
from deconvviz.errors import DeconvVizError
from deconvviz.explore.cache import ByteCache, default_cache_bytes
from deconvviz.explore.pictures import (
    ExploreError,
    Picture,
    UnknownPictureError,
    UploadTooLargeError,
    digest,
    heat_table,
    mebibytes,
    picture_source,
    png_bytes,
)
from deconvviz.explore.topk import TOP_K, Scanner, check_channel, read_report, topk_answer
from deconvviz.explore.worker import ModelWorker
from deconvviz.io.images import IMAGE_SUFFIXES, ImageError, decode_image, load_image
from deconvviz.io.sources import ImageSource
from deconvviz.methods import get_method
from deconvviz.models.session import resolve_device, session
from deconvviz.models.zoo import load_model

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image

    from deconvviz.core.deconvnet import Captured
    from deconvviz.core.steps import ProjectionSteps
    from deconvviz.io.sources import ImageSource
    from deconvviz.models.session import Session

UPLOAD_LIMIT = 32 << 20
"""The largest upload accepted by default, in bytes."""
THUMBNAIL_MAX = 512
"""The largest thumbnail side a request may ask for."""
THUMBNAILS_KEPT = 16 << 20
"""Bytes of thumbnail PNGs kept, so that paging through the strip decodes each picture once."""
STEP_SIDE = 224
"""A step's picture is enlarged by a whole factor until its longer side reaches this many pixels (as the CLI's)."""
STEPS_KEPT = 512 << 20
"""The most bytes of projection steps kept (at most the capture cache's size), so that paging runs no model."""


class Explorer:
    """The explorer's state and every answer it gives, independent of HTTP.

    Args:
        model: a model name (as ``deconvviz render --model``), a loaded model or a session.
        images: a folder or a text file of picture paths (as ``deconvviz report``), picture files, what
            :func:`picture_source` made of one of those, or None to start with no pictures (uploads only).
        device: where the model runs (``auto``, ``cpu``, ``cuda``, ...).
        checkpoint: a state dict file to load into the model instead of its own weights.
        report: a report folder (``deconvviz report``) to read the top-k hits from instead of scanning.
        cache_bytes: the capture cache's size in bytes (default: an eighth of memory, at most 4 GiB).
        scan: scan the folder for top-k hits in the background (when there is a folder and no report).
        state_root: where scan states are kept between launches (default: the deconvviz cache folder).
        upload_limit: the largest upload, in bytes.
        max_pending: most requests waiting for the model at once.
    """

    def __init__(
        self,
        model: Any = "vgg16",
        images: str | Path | Sequence[str | Path] | ImageSource | None = None,
        *,
        device: str | None = "auto",
        checkpoint: str | Path | None = None,
        report: str | Path | None = None,
        cache_bytes: int | None = None,
        scan: bool = True,
        state_root: str | Path | None = None,
        upload_limit: int = UPLOAD_LIMIT,
        max_pending: int = 16,
    ) -> None:
        self.report = read_report(Path(report)) if report is not None else None
        if images is None and self.report is not None and Path(self.report["folder"]).exists():
            images = self.report["folder"]
        if isinstance(images, ImageSource):
            self.source: ImageSource | None = images
        else:
            self.source = picture_source(images) if images is not None and images != [] else None
        if checkpoint is not None:
            if not isinstance(model, str):
                raise ExploreError("checkpoint= goes with a model name; load your model with it instead")
            model = load_model(model, device=resolve_device(device), checkpoint=checkpoint)
        self.session: Session = session(model, device=device)
        self.session.require_preprocessing(
            "the explorer reads pictures and needs", error=ExploreError
        )  # a bare nn.Module could show nothing: refused before any server starts
        self.net = self.session.net
        self.upload_limit = int(upload_limit)
        self.cache = ByteCache(default_cache_bytes() if cache_bytes is None else int(cache_bytes))
        self.thumbnails = ByteCache(THUMBNAILS_KEPT)
        self.steps_kept = ByteCache(min(STEPS_KEPT, self.cache.limit))
        self.worker = ModelWorker(max_pending=max_pending)
        self._uploads = Path(tempfile.mkdtemp(prefix="deconvviz-explore-"))
        self._lock = threading.Lock()
        self.pictures: dict[str, Picture] = {}
        self.order: list[str] = []
        self._named: dict[str, list[str]] = {}  # a picture's name -> the ids of the pictures of that name
        if self.source is not None:
            assert self.source.paths is not None
            for index, (name, path) in enumerate(zip(self.source.names, self.source.paths, strict=True)):
                self._add(Picture(self._free_id("p" + digest(name.encode())), name, path, index))
        self._layers: list[dict[str, Any]] | None = None
        self._fields: dict[tuple[str, str], Any] = {}  # (method, node) -> receptive field
        self.scanner = Scanner(self, Path(state_root) if state_root is not None else None)
        if scan and self.source is not None and self.report is None:
            self.scanner.start()
        self.closed = False

    # ------------------------------------------------------------------------------------------ pictures

    def _free_id(self, wanted: str) -> str:
        found, n = wanted, 1
        while found in self.pictures:
            n += 1
            found = f"{wanted}-{n}"
        return found

    def _add(self, picture: Picture) -> None:
        self.pictures[picture.id] = picture
        self.order.append(picture.id)
        self._named.setdefault(picture.name, []).append(picture.id)

    def picture(self, image: str | None) -> Picture:
        """The picture with id ``image``, or else the one picture named ``image`` (``cat.jpg``, ``sub/cat.jpg``).

        Raises:
            ExploreError: no id given (HTTP 400).
            UnknownPictureError: no such id, and no picture or several of that name.
        """
        if not image:
            raise ExploreError("give the picture: image=ID (an id as GET /api/images lists them)")
        found = self.pictures.get(image)
        if found is not None:
            return found
        with self._lock:
            named = list(self._named.get(image, ()))
        if len(named) == 1:
            return self.pictures[named[0]]
        problem = f"{len(named)} pictures are named {image!r}" if named else f"no picture has the id or name {image!r}"
        raise UnknownPictureError(f"{problem}; give an id as GET /api/images lists them")

    def images(self, offset: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """The pictures, in order: ``{"id", "name", "width", "height"}`` each (``offset``/``limit`` for a page)."""
        with self._lock:
            ids = self.order[offset : None if limit is None else offset + limit]
        return [self.pictures[i].entry() for i in ids]

    def page_of(self, image: str, limit: int) -> int:
        """The offset of the page of ``limit`` pictures that holds picture ``image`` (pages start at 0, limit, ...)."""
        image = self.picture(image).id
        if limit < 1:
            raise ExploreError(f"limit must be 1 or more to find a picture's page, got {limit}")
        with self._lock:
            index = self.order.index(image)
        return index // limit * limit

    def upload(self, data: bytes, filename: str) -> dict[str, Any]:
        """Add an uploaded picture; its entry.

        The bytes are decoded in memory first (with the limits of ``deconvviz render``); only a picture is kept,
        in the explorer's temporary folder, which is removed when the explorer closes.

        Raises:
            UploadTooLargeError: more bytes than the limit.
            ImageError: not a picture, corrupt, or too large to open safely.
        """
        from PIL import Image as PILImage

        name = Path(filename or "upload").name or "upload"
        if len(data) > self.upload_limit:
            raise UploadTooLargeError(
                f"upload {name!r} is {mebibytes(len(data))}, over the limit of {mebibytes(self.upload_limit)}; "
                "send a smaller picture or start the explorer with a larger --upload-limit"
            )
        try:
            picture = decode_image(data, name)
        except ImageError as exc:
            if not isinstance(exc.__cause__, PILImage.DecompressionBombError):
                raise
            raise ImageError(f"{exc} and upload it again") from exc
        identity = "u" + digest(data)
        with self._lock:
            if identity in self.pictures:
                return self.pictures[identity].entry()
            suffix = Path(name).suffix.lower()
            path = self._uploads / (identity + (suffix if suffix in IMAGE_SUFFIXES else ".png"))
            if suffix in IMAGE_SUFFIXES:
                path.write_bytes(data)
            else:
                picture.save(path, format="PNG")
            entry = Picture(identity, name, path, None, picture.size)
            self._add(entry)
        return entry.entry()

    def load(self, image: str) -> Image:
        """The picture ``image`` as an RGB PIL image (the file read again, with the loader's checks)."""
        return load_image(self.picture(image).path)

    def thumbnail_png(self, image: str, size: int) -> bytes:
        """A PNG of the whole picture, its longest side ``size`` pixels."""
        from PIL import Image as PILImage

        if not 8 <= size <= THUMBNAIL_MAX:
            raise ExploreError(f"size must be between 8 and {THUMBNAIL_MAX} pixels, got {size}")
        key = (image, size)
        found = self.thumbnails.get(key)
        if found is None:
            picture = self.load(image)
            picture.thumbnail((size, size), PILImage.Resampling.BILINEAR)
            found = png_bytes(picture)
            self.thumbnails.put(key, found, len(found))
        return found

    def input_png(self, image: str) -> bytes:
        """A PNG of the picture as the model sees it (resized and cropped)."""
        from deconvviz.viz.pictures import input_to_pil

        captured = self.cache.find(lambda key: key[0] == image)
        x = captured.x if captured is not None else self.session.preprocess(self.load(image))
        return png_bytes(
            input_to_pil(x.detach().cpu(), getattr(self.session.model, "to_image", None), self.net.channel_order)
        )

    # -------------------------------------------------------------------------------------------- layers

    def layers(self) -> list[dict[str, Any]]:
        """Every projectable layer, input to output: ``{"name", "node", "shape", "receptive_field"}`` (on the worker).

        A node that returns a tuple (multi-head attention, ``torch.max`` over a dimension) is left out: its items
        are layers of their own; so are nodes that hold their channels last (``core.layers.channels_last``) and
        those whose reverse pass cannot reach the picture (``core.layers.reverse_stops``).

        ``name`` is the layer's first alias (else its node name); ``shape`` is its output for the model's input
        size without the batch dimension; ``receptive_field`` is ``{"size", "stride", "whole_image"}`` (None
        where the geometry is not known).
        """
        if self._layers is None:
            self._layers = self._work_out_layers()
        return self._layers

    @property
    def layers_known(self) -> list[dict[str, Any]] | None:
        """:meth:`layers` if already worked out (no model work needed to answer), else None."""
        return self._layers

    def _work_out_layers(self) -> list[dict[str, Any]]:
        import torch

        net = self.net
        size = int(self.session.model.preprocessing.size) if hasattr(self.session.model, "preprocessing") else 224
        hidden = channels_last(net)  # (N, H, W, C) inside a block: a "channel" there would be a row
        offered = [node for node in net.layers if node not in hidden]
        probe = torch.zeros(1, 3, size, size)
        found = net.activations(probe, offered)
        shapes = {n: list(a.shape[1:]) for n, a in found.items() if isinstance(a, torch.Tensor)}
        tensors = [node for node in offered if node in shapes]
        stops = reverse_stops(net, probe, tensors)  # above an op nothing mirrors: a click could show nothing
        nodes = [node for node in tensors if node not in stops]
        fields: dict[str, Any] = {}
        for node in nodes:
            try:
                fields[node] = self._field(node)
            except DeconvVizError:  # an op without a known geometry: the field is not known
                fields[node] = None
        names: dict[str, str] = {}
        for alias, node in net.aliases.items():
            names.setdefault(node, alias)
        out = []
        for node in nodes:
            field_ = fields[node]
            described = (
                None
                if field_ is None
                else {
                    "size": None if field_.size is None else list(field_.size),
                    "stride": None if field_.stride is None else list(field_.stride),
                    "whole_image": bool(field_.whole_image),
                }
            )
            out.append(
                {"name": names.get(node, node), "node": node, "shape": shapes[node], "receptive_field": described}
            )
        return out

    def _field(self, node: str, method: str | None = None) -> Any:
        """The layer's receptive field under ``method`` (a held gate widens it only under the gradient)."""
        key = (get_method(method).name, node)
        if key not in self._fields:
            self._fields[key] = receptive_fields(self.net, [node], method=method)[node]
        return self._fields[key]

    def resolve(self, layer: str | None) -> str:
        """The node name of a layer alias or node name (LayerNotFoundError lists close names)."""
        if not layer:
            raise ExploreError("give the layer: layer=NAME (an alias or node name, as GET /api/layers lists them)")
        return self.net.resolve(layer)

    # ------------------------------------------------------------------------------------------ captures

    def captured(self, image: str, layer: str, method: str | None = None) -> Captured:
        """The capture of picture ``image`` at ``layer`` for ``method``: from the cache, else one forward pass.

        Must run on the model worker (or with :attr:`ModelWorker.model` held).
        """
        rules = get_method(method)
        node = self.resolve(layer)
        self.picture(image)
        key = (image, node, rules.name)
        found = self.cache.get(key)
        if found is None:
            x = self.session.preprocess(self.load(image))
            found = self.net.capture(x, node, method=rules)
            self.cache.put(key, found, found.nbytes())
        return found

    def activations(self, image: str, layer: str, method: str | None = None) -> dict[str, Any]:
        """Per channel of ``layer`` on picture ``image``: its peak value and where, strongest first."""
        captured = self._any_capture(image, layer, method)
        act = captured.activation[0].detach().float()
        flat = act.reshape(act.shape[0], -1)
        peaks, where = flat.max(dim=1)
        width = int(act.shape[-1]) if act.dim() == 3 else 1
        order = sorted(range(len(peaks)), key=lambda c: (-float(peaks[c]), c))
        channels = []
        for c in order:
            position = list(divmod(int(where[c]), width)) if act.dim() == 3 else None
            channels.append({"channel": c, "peak": float(peaks[c]), "position": position})
        return {
            "image": image,
            "layer": layer,
            "node": captured.node_name,
            "shape": list(act.shape),
            "max": float(peaks.max()) if len(peaks) else 0.0,
            "size": [int(captured.x.shape[-2]), int(captured.x.shape[-1])],
            "channels": channels,
        }

    def _any_capture(self, image: str, layer: str, method: str | None) -> Captured:
        """A capture of the picture and layer for any reverse pass (activations do not depend on it)."""
        found = self.cached(image, layer)
        return found if found is not None else self.captured(image, layer, method)

    def cached(self, image: str, layer: str) -> Captured | None:
        """A capture of the picture and layer already in the cache, for any reverse pass, or None."""
        node = self.resolve(layer)
        self.picture(image)
        return self.cache.find(lambda key: key[0] == image and key[1] == node)

    def activation_png(self, image: str, layer: str, channel: int, captured: Captured | None = None) -> bytes:
        """Channel ``channel``'s activation map as a heat map PNG, one pixel per unit.

        Black is 0 or less; the layer's largest activation on this picture is the brightest. ``captured`` (from
        :meth:`cached`) saves the model worker: reading a kept activation runs no model.
        """
        import numpy as np
        from PIL import Image as PILImage

        captured = captured if captured is not None else self._any_capture(image, layer, None)
        act = captured.activation[0].detach().float().cpu()
        check_channel(channel, int(act.shape[0]), layer)
        top = float(act.max())
        values = act[channel].reshape(act.shape[1], -1) if act.dim() == 3 else act[channel].reshape(1, 1)
        scaled = (values.clamp(min=0) / top).numpy() if top > 0 else np.zeros(tuple(values.shape))
        index = np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)
        return png_bytes(PILImage.fromarray(heat_table()[index]))

    def unit(
        self, image: str, layer: str, channel: int, position: tuple[int, int] | None, method: str | None
    ) -> dict[str, Any]:
        """The unit a projection would seed: ``{"channel", "position", "activation", "box", "inside"}``.

        The default unit is the channel's strongest (as ``deconvviz render --channels`` seeds it).
        """
        captured = self._any_capture(image, layer, method)
        act = captured.activation[0]
        check_channel(channel, int(act.shape[0]), layer)
        if act.dim() != 3:
            if position is not None:
                raise ExploreError(no_map(layer))
            return {
                "channel": channel,
                "position": None,
                "activation": float(act[channel]),
                "box": None,
                "size": [int(captured.x.shape[-2]), int(captured.x.shape[-1])],
            }
        height, width = int(act.shape[1]), int(act.shape[2])
        if position is None:
            flat = int(act[channel].reshape(-1).argmax())
            position = divmod(flat, width)
        row, col = position
        if not (0 <= row < height and 0 <= col < width):
            raise ExploreError(position_outside((row, col), height, width, layer))
        box = None
        try:
            found = self._field(captured.node_name, method)
            if not found.whole_image:
                box = [int(v) for v in found.box(row, col, tuple(captured.x.shape[-2:]))]
        except DeconvVizError:
            box = None
        return {
            "channel": channel,
            "position": [int(row), int(col)],
            "activation": float(act[channel, row, col]),
            "box": box,
            "size": [int(captured.x.shape[-2]), int(captured.x.shape[-1])],
        }

    def projection(
        self, image: str, layer: str, channel: int, position: tuple[int, int] | None = None, method: str | None = None
    ) -> Any:
        """The :class:`~deconvviz.Projection` of one unit (default: the channel's strongest), from the cache."""
        return self._unit_capture(image, layer, channel, position, method).project(channel, position=position)

    def _unit_capture(
        self, image: str, layer: str, channel: int, position: tuple[int, int] | None, method: str | None
    ) -> Captured:
        """The capture to project one unit from, once the channel and position are known to be in range."""
        captured = self.captured(image, layer, method)
        act = captured.activation
        check_channel(channel, int(act.shape[1]), layer)
        if position is not None and act.dim() == 4:
            height, width = int(act.shape[2]), int(act.shape[3])
            if not (0 <= position[0] < height and 0 <= position[1] < width):
                raise ExploreError(position_outside(position, height, width, layer))
        return captured

    def projection_png(
        self,
        image: str,
        layer: str,
        channel: int,
        position: tuple[int, int] | None = None,
        method: str | None = None,
        scale: str | None = None,
    ) -> bytes:
        """The reconstruction as a PNG: pixel for pixel ``Projection.to_pil(0, scale)`` of the same unit."""
        from deconvviz.viz.scaling import Scaling

        chosen = Scaling.of(scale)  # an unknown scale fails before any work
        return png_bytes(self.projection(image, layer, channel, position, method).to_pil(0, chosen))

    # ------------------------------------------------------------------------------------------- the way down

    def steps(
        self, image: str, layer: str, channel: int, position: tuple[int, int] | None = None, method: str | None = None
    ) -> ProjectionSteps:
        """The steps of one unit's projection (``project(..., steps=True)``), kept so that paging runs no model.

        Must run on the model worker, like :meth:`captured`.
        """
        rules = get_method(method)
        key = (image, self.resolve(layer), channel, position, rules.name)
        found = self.steps_kept.get(key)
        if found is None:
            captured = self._unit_capture(image, layer, channel, position, rules.name)
            found = captured.project(channel, position=position, steps=True).steps
            assert found is not None
            size = sum(t.element_size() * t.nelement() for s in found for t in (s.signal, s.switches) if t is not None)
            self.steps_kept.put(key, found, size)
        return found

    def steps_list(
        self, image: str, layer: str, channel: int, position: tuple[int, int] | None = None, method: str | None = None
    ) -> dict[str, Any]:
        """The steps of one unit, seed first, input last, without their signals (what the page pages through).

        ``{"layer", "node", "channel", "position", "method", "region", "steps": [...]}``; each step is ``{"index",
        "node", "layer" (its alias, or None), "name", "ops", "kind", "shape", "switches", "enlarged", "box"}``:
        ``switches`` is true for an unpooling step, ``enlarged`` the whole factor its picture is enlarged by, and
        ``box`` (``top, left, bottom, right`` in the step's own map) the part of the map the unit reaches, as the
        steps figure crops it (None where the unit reaches nearly all of it; ``region`` is the same on the input).
        """
        from deconvviz.viz.steps import region, scaled

        found = self.steps(image, layer, channel, position, method)
        seeded = found.positions[0]
        reached = region(found)
        size = tuple(found[-1].shape[-2:])

        def box(shape: tuple[int, ...]) -> list[int] | None:
            if reached is None or len(shape) != 3:
                return None
            return list(scaled(reached, (int(size[0]), int(size[1])), (shape[1], shape[2])))

        return {
            "layer": layer,
            "node": found.node,
            "channel": found.channels[0],
            "position": None if seeded is None else [int(v) for v in seeded],
            "method": found.method,
            "region": None if reached is None else list(reached),
            "steps": [
                {
                    "index": s.index,
                    "node": s.node,
                    "layer": s.alias,
                    "name": s.name,
                    "ops": [found.name_of(o) for o in s.ops],
                    "kind": s.kind,
                    "shape": list(s.shape),
                    "switches": s.switches is not None,
                    "enlarged": _enlargement(s.shape),
                    "box": box(s.shape),
                }
                for s in found
            ],
        }

    def step_png(
        self,
        image: str,
        layer: str,
        channel: int,
        step: int,
        position: tuple[int, int] | None = None,
        method: str | None = None,
        scale: str | None = None,
    ) -> bytes:
        """Step ``step``'s picture as a PNG, the one ``deconvviz steps`` writes as ``steps/NN-kind-node.png``.

        The signal summed over channels (white 0, red above, blue below), or for the last step of a picture-shaped
        input the reconstruction as ``render`` shows it; enlarged by a whole factor (nearest neighbour) so that
        its longer side reaches 224 pixels.
        """
        import numpy as np
        from PIL import Image as PILImage

        from deconvviz.viz.scaling import Scaling, to_rgb
        from deconvviz.viz.steps import colour, plane

        chosen = Scaling.of(scale)  # an unknown scale fails before any work
        found = self.steps(image, layer, channel, position, method)
        if not 0 <= step < len(found):
            raise ExploreError(
                f"step {step} is out of range: this projection has {len(found)} steps, 0 to {len(found) - 1}"
            )
        signal = found[step].signal[0]
        if step == len(found) - 1 and signal.dim() == 3 and signal.shape[0] in (1, 3):
            order = found.projection.channel_order if found.projection is not None else "RGB"
            picture = to_rgb(signal, chosen, channel_order=order)
        else:
            picture = colour(plane(signal))
        factor = _enlargement(tuple(found[step].shape))
        return png_bytes(PILImage.fromarray(np.ascontiguousarray(picture.repeat(factor, 0).repeat(factor, 1))))

    # ---------------------------------------------------------------------------------------------- top-k

    def topk(self, layer: str, channel: int, method: str | None = None) -> dict[str, Any]:
        """The channel's strongest hits over the folder (report, or scan: boxes under ``method``), or scan progress.

        Each hit's ``position`` is its unit's ``[row, col]``, None on a layer without a 2-D map (as :meth:`unit`
        gives it); messages name the layer as given.
        """
        return topk_answer(self, layer, channel, method)

    # ---------------------------------------------------------------------------------------------- close

    def close(self) -> None:
        """Stop the scan and the worker, and remove the uploads' temporary folder. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        self.scanner.stop()
        self.worker.stop()  # drops waiting requests, so a scan waiting for them goes on to its stop
        self.scanner.join()
        self.cache.clear()
        self.thumbnails.clear()
        self.steps_kept.clear()
        shutil.rmtree(self._uploads, ignore_errors=True)

    def __enter__(self) -> Explorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _enlargement(shape: tuple[int, ...]) -> int:
    """The whole factor a step's picture is enlarged by: its longer side reaches :data:`STEP_SIDE` pixels."""
    sides = shape[-2:] if len(shape) in (2, 3) else (1, max(1, int(math.prod(shape))))
    return max(1, -(-STEP_SIDE // max(sides)))


__all__ = ["TOP_K", "Explorer"]
