"""Top-k search over a folder: equals brute force, deterministic, tolerant of bad files, flat in memory."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyVGG, make_tiny_vgg
from PIL import Image
from reference import relative_error

import deconvviz as dv
from deconvviz.analysis.topk.scan import top_k
from deconvviz.analysis.topk.tracker import TopKTracker
from deconvviz.io.sources import SearchError, find_images


@dataclass
class Stand:
    """The parts of a loaded model that the search uses: module, aliases, preprocessing, inverse.

    The tests compare the batched scan with one-image-at-a-time code, which run the same convolutions through
    different kernels (batch size and instruction set pick the algorithm). In float32 those differ by ~1e-6
    relative; in float64 by ~1e-15, so the module is float64 and results can be held to 1e-12.
    """

    module: TinyVGG
    side: int = 16
    name: str = "tiny"
    layers: dict[str, str] = field(
        default_factory=lambda: {"conv1": "features.1", "conv2": "features.6", "pool2": "features.7"}
    )

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        small = image.convert("RGB").resize((self.side, self.side), Image.BILINEAR)
        array = torch.from_numpy(np.asarray(small, dtype=np.float64) / 255.0 - 0.5)
        return array.permute(2, 0, 1)[None].to(next(self.module.parameters()).dtype)

    def to_image(self, x: torch.Tensor) -> Image.Image:
        x = x[0] if x.dim() == 4 else x
        array = ((x.permute(1, 2, 0) + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        return Image.fromarray(array)


def _write_images(folder: Path, count: int, side: int = 16, seed: int = 0) -> list[Path]:
    generator = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        sub = folder / ("a" if i % 3 else "b")  # a nested folder: the scan is recursive
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"img{i:03d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(generator.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    _write_images(root, 13)
    (root / "broken.jpg").write_bytes(b"this is not a jpeg")
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image, not scanned")
    return root


@pytest.fixture(scope="module")
def stand() -> Stand:
    return Stand(make_tiny_vgg(dtype=torch.float64))


def _brute_force(
    stand: Stand, folder: Path, layer: str, k: int, *, inside: bool = False
) -> dict[int, list[tuple[float, str, tuple[int, int]]]]:
    """Per channel, its top ``k`` (value, picture, unit), one picture at a time; ``inside``: of the units whose
    whole receptive field lies in the picture only (each checked by its own box)."""
    net = dv.DeconvNet(stand.module, aliases=stand.layers)
    field_ = dv.receptive_field(net, layer)
    per_channel: dict[int, list[tuple[float, str, tuple[int, int]]]] = {}
    for path in find_images(folder):
        try:
            x = stand.preprocess(Image.open(path))
        except OSError:
            continue
        act = net.activations(x, [layer])[layer][0]
        width = act.shape[-1]
        if inside:
            side = x.shape[-1]
            boxes = [field_.box(*divmod(i, width), x.shape, clip=False) for i in range(act[0].numel())]
            seen = torch.tensor([t >= 0 and le >= 0 and b <= side and r <= side for t, le, b, r in boxes])
            act = act.flatten(1).masked_fill(~seen, -math.inf).view_as(act)
        for channel in range(act.shape[0]):
            flat = act[channel].flatten()
            where = int(flat.argmax())  # the first of equals, in row-major order
            per_channel.setdefault(channel, []).append(
                (float(flat[where]), path.relative_to(folder).as_posix(), divmod(where, width))
            )
    # Strongest first; ties keep scan order (Python's sort is stable); an activation of 0 or less is no hit.
    return {c: [h for h in sorted(hits, key=lambda h: -h[0])[:k] if h[0] > 0] for c, hits in per_channel.items()}


def test_inside_ranks_only_units_whose_field_lies_in_the_picture(stand, folder) -> None:
    result = top_k(folder, stand, layers=["conv1", "conv2", "pool2"], k=4, channels="all", inside=True)
    assert result.inside
    assert result.everywhere == ()
    for layer in ("conv1", "conv2", "pool2"):
        for channel, expected in _brute_force(stand, folder, layer, 4, inside=True).items():
            got = [(h.value, h.image, h.position) for h in result.hits[layer][channel]]
            assert [g[1:] for g in got] == [e[1:] for e in expected], (layer, channel)
            assert np.allclose([g[0] for g in got], [e[0] for e in expected], rtol=1e-12, atol=0)
            assert not any(h.edge for h in result.hits[layer][channel])  # no hit reaches into the padding
    assert result.to_dict()["inside"] is True
    # 8 px pictures: no unit of conv2 or pool2 sees only the picture, so those layers rank all their units
    small = Stand(stand.module, side=8)
    found = top_k(folder, small, layers=["conv1", "conv2", "pool2"], k=2, channels="first2", inside=True)
    assert found.everywhere == ("conv2", "pool2")
    head = top_k(folder, small, layers=["classifier.1"], k=1, channels="first2", inside=True)
    assert head.everywhere == ()  # its units see the whole picture: nothing to restrict, nothing to say
    anywhere = top_k(folder, small, layers=["conv2"], k=2, channels="first2")
    assert [(h.image, h.position) for h in found.hits["conv2"][0]] == [
        (h.image, h.position) for h in anywhere.hits["conv2"][0]
    ]


@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_equals_brute_force(stand, folder, batch_size) -> None:
    result = top_k(folder, stand, layers=["conv2", "pool2"], k=4, batch_size=batch_size)
    for layer in ["conv2", "pool2"]:
        expected = _brute_force(stand, folder, layer, 4)
        assert result.channels(layer) == sorted(expected)
        for channel, hits in expected.items():
            got = [(h.value, h.image, h.position) for h in result.hits[layer][channel]]
            assert [g[1:] for g in got] == [e[1:] for e in hits], (layer, channel)
            assert np.allclose([g[0] for g in got], [e[0] for e in hits], rtol=1e-12, atol=0)


def test_deterministic_and_counts_unreadable_files(stand, folder) -> None:
    first = top_k(folder, stand, layers=["conv1"], k=3, channels="first2")
    second = top_k(folder, stand, layers=["conv1"], k=3, channels="first2", batch_size=5)
    # Two batch sizes run different kernels: everything but the values must be identical, and the values (float64)
    # agree to rounding.
    again = top_k(folder, stand, layers=["conv1"], k=3, channels="first2")
    assert first.to_dict() == again.to_dict()  # the same call twice: bit for bit
    one, other = first.to_dict(), second.to_dict()
    values = [[h.pop("value") for hits in d["layers"][0]["channels"].values() for h in hits] for d in (one, other)]
    assert one == other
    assert np.allclose(values[0], values[1], rtol=1e-12, atol=0)
    assert len(first.images) == 15  # 13 pictures + 2 bad files with image suffixes; notes.txt is not one
    assert sorted(image for image, _ in first.skipped) == ["broken.jpg", "empty.png"]
    assert all(error and "\n" not in error for _, error in first.skipped)
    assert first.channels("conv1") == [0, 1]


def test_crops_are_the_projection_inside_the_receptive_field(stand, folder) -> None:
    result = top_k(folder, stand, layers=["conv2"], k=2, channels=[3])
    net = dv.DeconvNet(stand.module, aliases=stand.layers)
    field_ = dv.receptive_field(net, "conv2")
    for hit in result.hits["conv2"][3]:
        x = stand.preprocess(Image.open(folder / hit.image))
        full = net.project(x, layer="conv2", channel=3, position=hit.position).image[0]
        top, left, bottom, right = hit.box
        assert hit.box == field_.box(*hit.position, x.shape)
        assert relative_error(hit.reconstruction, full[:, top:bottom, left:right]) <= 1e-12
        outside = full.clone()
        outside[:, top:bottom, left:right] = 0
        assert outside.abs().max() == 0  # nothing of the projection is lost by cropping
        assert torch.equal(hit.patch, x[0, :, top:bottom, left:right])


def test_hits_whose_field_reaches_into_the_padding_are_marked_edge(stand, folder) -> None:
    result = top_k(folder, stand, layers=["conv2"], k=9, channels="all")
    field_ = dv.receptive_field(dv.DeconvNet(stand.module, aliases=stand.layers), "conv2")
    hits = [hit for kept in result.hits["conv2"].values() for hit in kept]
    flags = {hit.edge for hit in hits}
    assert flags == {True, False}  # both kinds occur among the hits on 16 px pictures
    for hit in hits:
        top, left, bottom, right = field_.box(*hit.position, (16, 16), clip=False)
        assert hit.edge == (top < 0 or left < 0 or bottom > 16 or right > 16)
    listed = result.to_dict()["layers"][0]["channels"]
    assert [h["edge"] for c in listed for h in listed[c]] == [h.edge for h in hits if h.value > 0]
    channel, rank = next((c, r) for c, kept in result.hits["conv2"].items() for r, h in enumerate(kept) if h.edge)
    _fig, axes = result.figure("conv2", channel)
    assert axes[rank // result.grid_side, rank % result.grid_side].get_title().endswith(" edge")


def test_figure_has_the_papers_layout_and_save_writes_everything(stand, folder, tmp_path) -> None:
    result = top_k(folder, stand, layers=["conv2"], k=9, channels="first2")
    _fig, axes = result.figure("conv2", 1)
    assert axes.shape == (3, 6)  # 3x3 reconstructions beside 3x3 patches
    assert sum(1 for ax in axes.flat if ax.images) == 18
    out = result.save(tmp_path / "grids")
    assert sorted(p.name for p in out.glob("*.png")) == ["conv2_ch0000.png", "conv2_ch0001.png"]
    manifest = json.loads((out / "topk.json").read_text())
    assert manifest["layers"][0]["node"] == "features.6"
    assert len(manifest["layers"][0]["channels"]["1"]) == 9


def test_fewer_images_than_k(stand, tmp_path) -> None:
    _write_images(tmp_path, 2)
    result = top_k(tmp_path, stand, layers=["conv1"], k=9, channels="first1")
    assert len(result.hits["conv1"][0]) == 2
    result.figure("conv1", 0)


def test_the_figure_shows_only_hits_that_fired_and_labels_each(stand, folder) -> None:
    import dataclasses

    result = top_k(folder, stand, layers=["conv2"], k=4, channels="first1")
    hits = result.hits["conv2"][0]
    assert len(hits) == 4
    assert all(hit.value > 0 for hit in hits)
    fig, axes = result.figure("conv2", 0)
    assert fig._suptitle.get_text().endswith(f"top 4 of {len(result.images)} images")
    assert axes[0, 0].get_title().startswith("a=")
    assert axes[0, 2].get_title() == hits[0].image.rsplit("/", 1)[-1]
    # A channel's map of zeros still has a position of its maximum: that is not a hit, and is not drawn.
    result.hits["conv2"][0] = (*hits[:2], *(dataclasses.replace(hit, value=0.0) for hit in hits[2:]))
    fig, axes = result.figure("conv2", 0)
    assert sum(1 for ax in axes.flat if ax.images) == 4
    assert f"top 2 of {len(result.images)} images (it fires on no other)" in fig._suptitle.get_text()
    listed = result.to_dict()["layers"][0]["channels"]["0"]  # topk.json and a report's manifest list hits only
    assert [h["value"] for h in listed] == [hits[0].value, hits[1].value]
    result.hits["conv2"][0] = tuple(dataclasses.replace(hit, value=0.0) for hit in hits)
    fig, axes = result.figure("conv2", 0)
    assert not any(ax.images for ax in axes.flat)
    assert f"fires on none of the {len(result.images)} images" in fig._suptitle.get_text()


def test_bad_folders_and_choices(stand, tmp_path) -> None:
    with pytest.raises(SearchError, match="folder not found"):
        top_k(tmp_path / "missing", stand)
    with pytest.raises(SearchError, match="no images in"):
        top_k(tmp_path, stand)
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(SearchError, match=r"could be read \(the first: bad\.png: .*\); give pictures deconvviz can"):
        top_k(tmp_path, stand, layers=["conv1"])
    with pytest.raises(SearchError, match=r"could be read \(the first: bad\.png: .*\); give pictures deconvviz can"):
        top_k(tmp_path, stand)  # the default layers read the first picture first
    _write_images(tmp_path, 1)
    with pytest.raises(ValueError, match="unknown layer 'conv9'"):
        top_k(tmp_path, stand, layers=["conv9"])
    with pytest.raises(SearchError, match="channel 99 is out of range"):
        top_k(tmp_path, stand, layers=["conv1"], channels=[99])
    with pytest.raises(SearchError, match="k must be at least 1"):
        top_k(tmp_path, stand, layers=["conv1"], k=0)


def test_tracker_keeps_the_earlier_image_on_ties() -> None:
    tracker = TopKTracker(channels=1, k=2)
    tracker.update(torch.tensor([[[1.0, 5.0]], [[5.0, 0.0]]]), torch.tensor([0, 1]))
    tracker.update(torch.tensor([[[5.0, 2.0]]]), torch.tensor([2]))
    assert tracker.images.tolist() == [[0, 1]]
    assert tracker.positions.tolist() == [[1, 0]]


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    sys.path.insert(0, {tests!r})
    from test_search import Stand
    from conftest import make_tiny_vgg
    from deconvviz.analysis.topk.scan import top_k
    stand = Stand(make_tiny_vgg(), side=192)
    top_k(sys.argv[1], stand, layers=["conv1", "conv2"], k=9, channels="first2", batch_size=8)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """
)


@pytest.mark.slow
def test_memory_stays_flat_in_the_number_of_images(tmp_path) -> None:
    # Each 192x192 image's conv1 + conv2 activations take ~880 kB: keeping them for 4N = 320 images instead of
    # N = 80 would add ~210 MB, far above 10 % of the process's own footprint (torch alone is ~0.5 GB).
    small, large = tmp_path / "n", tmp_path / "4n"
    _write_images(small, 80, side=96)
    _write_images(large, 320, side=96, seed=1)
    script = _MEMORY_SCRIPT.format(tests=str(Path(__file__).parent))
    peaks = []
    for folder in (small, large):
        done = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, check=True)
        peaks.append(int(done.stdout.strip().splitlines()[-1]))
    assert peaks[1] <= peaks[0] * 1.10, f"peak RSS {peaks[0]} kB for N images, {peaks[1]} kB for 4N"


def test_method_projects_the_hits_with_that_reverse_pass(stand, folder) -> None:
    net = dv.DeconvNet(stand.module, aliases=stand.layers)
    default = top_k(folder, stand, layers=["conv2"], k=2, channels=[3])
    assert default.method == "deconvnet"
    for method in ("guided", "gradient"):
        result = top_k(folder, stand, layers=["conv2"], k=2, channels=[3], method=method)
        assert result.method == method
        assert result.to_dict()["method"] == method
        for hit, plain in zip(result.hits["conv2"][3], default.hits["conv2"][3], strict=True):
            assert (hit.image, hit.position) == (plain.image, plain.position)  # the scan does not depend on it
            x = stand.preprocess(Image.open(folder / hit.image))
            full = net.project(x, layer="conv2", channel=3, position=hit.position, method=method).image[0]
            top, left, bottom, right = hit.box
            assert relative_error(hit.reconstruction, full[:, top:bottom, left:right]) <= 1e-12
        assert any(
            not torch.equal(h.reconstruction, p.reconstruction)
            for h, p in zip(result.hits["conv2"][3], default.hits["conv2"][3], strict=True)
        )
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        top_k(folder, stand, layers=["conv2"], k=2, channels=[3], method="nope")


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[dict[str, str | None]] = []
        self.words: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))

    def handle_data(self, data: str) -> None:
        self.words.append(data)


def test_a_result_shows_its_strongest_hits_in_a_notebook(stand, folder, monkeypatch) -> None:
    from deconvviz.viz import html as html_module

    monkeypatch.setattr(html_module, "OVERVIEW_CHANNELS", 3)
    result = top_k(folder, stand, layers=["conv1", "conv2"], k=3, channels=None)
    result = dataclasses.replace(result, folder="<script>alert(1)</script>")
    page = _Page()
    page.feed(result._repr_html_())
    assert "script" not in page.tags  # names are text, never markup
    assert "<script>alert(1)</script>" in "".join(page.words)
    expected = []
    for layer in ("conv1", "conv2"):
        for channel in list(result.hits[layer])[:3]:
            best = result.hits[layer][channel][0]
            if best.value > 0:
                expected += [tuple(best.reconstruction.shape[1:]), tuple(best.patch.shape[1:])]
    assert len(page.images) == len(expected) > 0
    for attributes, (height, width) in zip(page.images, expected, strict=True):
        data = str(attributes["src"]).removeprefix("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(data))) as picture:
            assert picture.size == (width, height)  # the crop itself, at its own size (these are small)
    words = " ".join(page.words)
    assert f"and {len(result.hits['conv2']) - 3} more" in words  # conv2 has 8 channels
    assert "and 1 more" in words  # conv1 has 4


def test_scan_options_are_checked_once_and_give_the_command_line_flags() -> None:
    from deconvviz.analysis.topk.options import ScanOptions
    from deconvviz.io.sources import SearchError

    options = ScanOptions.of(["conv2", "conv3"], k=4, channels=[1, 2], batch_size=3, limit=10, resume=True)
    assert options.layers == ("conv2", "conv3")
    assert options.channels == (1, 2)
    assert options.argv() == [
        "--top", "4", "--batch-size", "3", "--seed", "0", "--save-every", "60.0",
        "--layers", "conv2,conv3", "--channels", "1,2", "--limit", "10", "--resume",
    ]  # fmt: skip
    assert options.but(limit=None).limit is None
    assert options.but(inside=True, channels="random3", limit=None).argv()[-3:] == ["random3", "--resume", "--inside"]
    for bad, words in (({"k": 0}, "k must be"), ({"batch_size": 0}, "batch_size"), ({"save_every": -1}, "save_every")):
        with pytest.raises(SearchError, match=words):
            ScanOptions.of(**bad)
    with pytest.raises(SearchError, match="k must be"):
        options.but(k=0)
    with pytest.raises(TypeError, match="unknown scan option"):
        ScanOptions.of(batchsize=3)


def test_a_count_of_channels_means_the_strongest_and_first_n_the_first(stand, folder) -> None:
    every = top_k(folder, stand, layers=["conv2"], k=1, channels="all")
    peaks = {c: hits[0].value for c, hits in every.hits["conv2"].items()}
    strongest = sorted(peaks, key=lambda c: (-peaks[c], c))[:3]
    assert top_k(folder, stand, layers=["conv2"], k=1, channels=3).channels("conv2") == strongest
    assert top_k(folder, stand, layers=["conv2"], k=1, channels="strongest3").channels("conv2") == strongest
    assert top_k(folder, stand, layers=["conv2"], k=1, channels="first3").channels("conv2") == [0, 1, 2]
    with pytest.raises(SearchError, match="'first<N>', 'strongest<N>', 'random<N>'"):
        top_k(folder, stand, layers=["conv2"], channels="most3")


def test_random_channels_are_a_seeded_draw_the_same_in_every_run(stand, folder) -> None:
    every = top_k(folder, stand, layers=["conv1", "conv2"], k=2, channels="all")
    draws = {
        seed: top_k(folder, stand, layers=["conv1", "conv2"], k=2, channels="random3", seed=seed) for seed in range(6)
    }
    for seed, found in draws.items():
        for layer in ("conv1", "conv2"):
            chosen = found.channels(layer)
            assert len(chosen) == 3
            assert chosen == sorted(set(chosen))  # by index, no channel twice
            for c in chosen:  # only the choice of channels differs
                assert [(h.value, h.image, h.position) for h in found.hits[layer][c]] == [
                    (h.value, h.image, h.position) for h in every.hits[layer][c]
                ]
        again = top_k(folder, stand, layers=["conv1", "conv2"], k=2, channels="random3", seed=seed)
        assert again.channels("conv2") == found.channels("conv2")
    assert len({tuple(found.channels("conv2")) for found in draws.values()}) > 1  # the seed draws another subset
    assert any(found.channels("conv1") != found.channels("conv2") for found in draws.values())  # drawn per layer
    assert top_k(folder, stand, layers=["conv1"], k=1, channels="random99").channels("conv1") == list(range(4))


def test_the_earlier_argument_order_still_works_and_warns_once(stand, folder) -> None:
    import deconvviz.errors

    deconvviz.errors._WARNED.discard("top_k(model, data)")
    with pytest.deprecated_call(match=r"top_k\(model, data\) is deprecated"):
        old = dv.top_k(stand, folder, layers=["conv2"], k=1, channels=[1])
    new = dv.top_k(folder, stand, layers=["conv2"], k=1, channels=[1])
    assert old.hits["conv2"][1][0].value == new.hits["conv2"][1][0].value


def test_progress_bar_and_a_session_as_the_other_analyses_take_them(stand, folder, capsys) -> None:
    pytest.importorskip("tqdm")
    from deconvviz.models.session import session

    plain = dv.top_k(folder, stand, layers=["conv2"], k=1, channels=[1])
    barred = dv.top_k(folder, session(stand), layers=["conv2"], k=1, channels=[1], progress="bar")
    assert barred.hits["conv2"][1][0].value == plain.hits["conv2"][1][0].value
    assert "top-k scan" in capsys.readouterr().err  # tqdm draws on stderr outside a notebook
    with pytest.raises(dv.DeconvVizError, match=r"progress takes a callable \(stage, done, total\), 'bar' or None"):
        dv.top_k(folder, stand, layers=["conv2"], k=1, channels=[1], progress="bars")


def test_a_choice_of_channels_reads_the_same_everywhere() -> None:
    from deconvviz.analysis.topk.options import RandomChannels, channel_spec

    assert channel_spec("first3") == (3, None)
    assert channel_spec("strongest4") == (None, 4)
    assert channel_spec(" 5 ") == (None, 5)
    assert channel_spec("all") == (None, None)
    assert channel_spec("Random6") == (RandomChannels(6), None)
    assert channel_spec([7, 2]) == ((7, 2), None)
    for none in ("first0", "strongest0", "random0", "0"):
        with pytest.raises(SearchError, match=f"channels {none!r} chooses no channel; give a count of at least 1"):
            channel_spec(none)
    with pytest.raises(
        SearchError, match="channels must be a count, 'first<N>', 'strongest<N>', 'random<N>', 'all' or a list"
    ):
        channel_spec("foo")
