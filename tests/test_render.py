"""Rendering: max scaling, colour order, overlays, figures and files (robust scaling: test_viz)."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

import deconvviz as dv
from deconvviz.viz import render
from deconvviz.viz.html import activation_text
from deconvviz.viz.render import RenderError


@pytest.fixture(scope="module")
def projection(tiny_vgg: torch.nn.Module) -> dv.Projection:
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    return dv.DeconvNet(tiny_vgg).project(x, "features.6", top=3)


def test_max_scale_centres_zero_on_grey_and_scales_by_largest_magnitude() -> None:
    image = torch.zeros(3, 2, 2)
    image[0, 0, 0] = 2.0  # the largest magnitude: white in the red channel
    image[1, 0, 1] = -1.0  # half of it, negative: a quarter of the way down from grey
    image[2, 1, 1] = -2.0  # the largest negative magnitude: black
    rgb = render.to_rgb(image, "max")
    assert rgb.dtype == np.uint8
    assert np.array_equal(render.to_rgb(image, "contrast"), rgb)  # the scaling's earlier name
    assert rgb.shape == (2, 2, 3)
    assert rgb[1, 0].tolist() == [128, 128, 128]  # zero is mid-grey
    assert rgb[0, 0, 0] == 255
    assert rgb[0, 1, 1] == round(255 * 0.25)
    assert rgb[1, 1, 2] == 0


def test_max_scale_is_invariant_to_positive_scale_and_minmax_stretches() -> None:
    image = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(render.to_rgb(image, "max"), render.to_rgb(image * 37.5, "max"))
    stretched = render.to_rgb(image + 10.0, "minmax")
    assert stretched.min() == 0
    assert stretched.max() == 255
    # max keeps zero at grey, so an offset changes the picture; minmax does not care about offsets
    assert np.array_equal(stretched, render.to_rgb(image, "minmax"))
    assert not np.array_equal(render.to_rgb(image + 10.0, "max"), render.to_rgb(image, "max"))


def test_blank_and_non_finite_reconstructions_are_grey_not_errors() -> None:
    assert (render.to_rgb(torch.zeros(3, 4, 4)) == 128).all()
    assert (render.to_rgb(torch.zeros(3, 4, 4), "minmax") == 128).all()
    image = torch.zeros(3, 2, 2)
    image[0, 0, 0] = float("nan")
    image[1, 1, 1] = 1.0
    rgb = render.to_rgb(image)
    assert rgb[0, 0, 0] == 128
    assert rgb[1, 1, 1] == 255


def test_a_panel_whose_reconstruction_is_all_zero_says_why(projection: dv.Projection) -> None:
    from deconvviz.viz.figures import layers_figure, projection_figure

    image = projection.image.clone()
    image[1] = 0  # nothing came back although the unit fired: a held op stopped the signal
    activations = projection.activations.clone()
    activations[2] = 0
    image[2] = 0
    silent = dataclasses.replace(projection, image=image, activations=activations, method="guided")

    def texts(axes) -> list[str]:
        return [" ".join(t.get_text().split()) for t in axes.texts]

    for draw in (projection_figure, layers_figure):
        fig, axes = draw(silent) if draw is projection_figure else draw([silent])
        panels = [ax for ax in axes.flat if ax.get_title().startswith("ch ")]
        assert [texts(ax) for ax in panels] == [
            [],
            ["no signal reaches the input under guided"],
            ["activation 0: nothing to project"],
        ]
        fig.clear()


def test_bgr_models_are_shown_in_rgb() -> None:
    image = torch.zeros(3, 1, 1)
    image[0] = 1.0  # first channel of a BGR model is blue
    assert render.to_rgb(image, channel_order="BGR")[0, 0].tolist() == [128, 128, 255]
    assert render.to_rgb(image, channel_order="RGB")[0, 0].tolist() == [255, 128, 128]


def test_single_and_many_channel_reconstructions_become_grey_pictures() -> None:
    one = render.to_rgb(torch.tensor([[[1.0, -1.0]]]))
    assert one.shape == (1, 2, 3)
    assert one[0, 0].tolist() == [255, 255, 255]
    assert one[0, 1].tolist() == [0, 0, 0]
    many = render.to_rgb(torch.ones(5, 2, 2))
    assert (many == 255).all()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: render.to_rgb(torch.zeros(3, 2, 2), "loud"), "scale must be one of robust, max, minmax"),
        (lambda: render.to_rgb(torch.zeros(1, 3, 2, 2)), "expected one image"),
        (lambda: render.to_rgb(torch.zeros(3, 2, 2), channel_order="RGX"), "channel_order"),
        (lambda: render.overlay(np.zeros((2, 2, 3), np.uint8), np.zeros((3, 3, 3), np.uint8)), "overlay"),
    ],
)
def test_bad_options_are_one_line_errors(call, message: str) -> None:
    with pytest.raises(RenderError, match=message) as info:
        call()
    assert isinstance(info.value, dv.DeconvVizError)
    assert "\n" not in str(info.value)


def test_overlay_shows_the_reconstruction_where_it_is_strong_and_the_picture_elsewhere() -> None:
    picture = np.zeros((4, 4, 3), np.uint8)
    picture[:, :2] = 255  # left half white, right half black
    rec = np.full((4, 4, 3), 128, np.uint8)
    rec[0, 3] = (255, 0, 0)  # one strong red pixel on the black half
    out = render.overlay(rec, picture)
    assert out[0, 3].tolist() == [255, 0, 0]
    assert out[3, 0, 0] > out[3, 3, 0]  # the picture's brightness shows through where the unit saw nothing
    assert out[3, 0, 0] == out[3, 0, 1] == out[3, 0, 2]  # ... in grey
    assert np.array_equal(render.overlay(rec, picture, strength=0.0)[0, 3], out[1, 3])


def test_projection_pictures_match_to_rgb(projection: dv.Projection) -> None:
    assert len(projection) == 3
    for i in range(len(projection)):
        expected = render.to_rgb(projection.image[i])
        assert np.array_equal(projection.rgb(i), expected)
        pil = projection.to_pil(i)
        assert pil.mode == "RGB"
        assert pil.size == (16, 16)
        assert np.array_equal(np.asarray(pil), expected)
    with pytest.raises(RenderError, match="out of range"):
        projection.to_pil(3)


def test_projection_channel_order_reaches_the_pictures(projection: dv.Projection) -> None:
    bgr = dataclasses.replace(projection, channel_order="BGR")
    assert np.array_equal(bgr.rgb(0), projection.rgb(0)[..., ::-1])


def test_figure_has_the_input_and_every_reconstruction_labelled(projection: dv.Projection) -> None:
    fig, axes = projection.figure(columns=2)
    assert isinstance(fig, Figure)
    assert axes.shape == (2, 2)
    titles = [ax.get_title() for ax in axes.flat]
    assert titles[0] == "input"
    for i, title in enumerate(titles[1:]):
        assert f"ch {projection.channels[i]}" in title
        assert f"a={activation_text(float(projection.activations[i]))}" in title
    shown = [ax.get_images()[0].get_array() for ax in axes.flat]
    assert np.array_equal(np.asarray(shown[1]), projection.rgb(0))
    assert fig._suptitle is not None
    assert fig._suptitle.get_text() == "features.6"


def test_figure_draws_receptive_field_boxes_when_known(projection: dv.Projection) -> None:
    boxed = dataclasses.replace(projection, boxes=((0, 0, 5, 6), None, (2, 3, 9, 9)))
    _, axes = boxed.figure(box=True, crop=False)  # full-size views, each outlining its field
    patches = [len(ax.patches) for ax in axes.flat]
    assert patches[:4] == [0, 1, 0, 1]
    rect = axes.flat[1].patches[0]
    assert (rect.get_x(), rect.get_y(), rect.get_width(), rect.get_height()) == (-0.5, -0.5, 6, 5)
    _, axes = boxed.figure(crop=False)  # boxes only on request
    assert all(len(ax.patches) == 0 for ax in axes.flat)
    _, axes = boxed.figure()  # by default small fields are cut out and outlined on the input instead
    assert axes.shape == (2, 4)
    assert len(axes[0, 0].patches) == 2
    assert np.asarray(axes[0, 1].get_images()[0].get_array()).shape == (5, 6, 3)
    assert np.asarray(axes[0, 2].get_images()[0].get_array()).shape == (16, 16, 3)  # no box: whole


def test_figure_overlay_changes_the_panels(projection: dv.Projection) -> None:
    _, plain = projection.figure()
    _, over = projection.figure(overlay=True)
    a = np.asarray(plain.flat[1].get_images()[0].get_array())
    b = np.asarray(over.flat[1].get_images()[0].get_array())
    assert a.shape == b.shape
    assert not np.array_equal(a, b)


def test_repr_png_is_a_png_of_the_figure(projection: dv.Projection) -> None:
    data = projection._repr_png_()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    import io

    picture = Image.open(io.BytesIO(data))
    assert picture.size[0] > picture.size[1] > 50  # a row of panels


def test_save_writes_one_png_per_reconstruction(projection: dv.Projection, tmp_path: Path) -> None:
    paths = projection.save(tmp_path / "new" / "folder")
    assert [p.name for p in paths] == [
        f"features.6_{i + 1:02d}_ch{c:04d}.png" for i, c in enumerate(projection.channels)
    ]
    for i, path in enumerate(paths):
        assert np.array_equal(np.asarray(Image.open(path)), projection.rgb(i))
    assert sorted(p.name for p in (tmp_path / "new" / "folder").iterdir()) == sorted(p.name for p in paths)
    with_summary = projection.save(tmp_path / "s", summary=True)
    assert with_summary[-1].name == "features.6.png"
    assert Image.open(with_summary[-1]).size[0] > 100


def test_input_without_inverse_preprocessing_is_stretched(projection: dv.Projection) -> None:
    picture = projection.input_pil()
    assert picture is not None
    assert picture.size == (16, 16)
    values = np.asarray(picture)
    assert values.min() == 0
    assert values.max() == 255


def test_input_uses_the_models_inverse_preprocessing(projection: dv.Projection) -> None:
    seen = []

    def to_image(x: torch.Tensor) -> Image.Image:
        seen.append(tuple(x.shape))
        return Image.new("RGB", (16, 16), (10, 20, 30))

    p = dataclasses.replace(projection, to_image=to_image)
    picture = p.input_pil()
    assert seen == [(1, 3, 16, 16)]
    assert picture is not None
    assert picture.getpixel((0, 0)) == (10, 20, 30)


def test_mosaic_tiles_pictures_in_rows() -> None:
    a = np.zeros((2, 3, 3), np.uint8)
    b = np.full((2, 3, 3), 200, np.uint8)
    out = render.mosaic([a, b, a], columns=2, gap=1, fill=255)
    assert out.shape == (5, 7, 3)
    assert (out[0:2, 0:3] == 0).all()
    assert (out[0:2, 4:7] == 200).all()
    assert (out[3:5, 0:3] == 0).all()
    assert (out[3:5, 4:7] == 255).all()  # empty cell
    assert (out[2] == 255).all()  # gap row
    with pytest.raises(RenderError):
        render.mosaic([a, np.zeros((1, 1, 3), np.uint8)], columns=2)


def test_safe_name_keeps_layer_names_readable() -> None:
    assert render.safe_name("features.29") == "features.29"
    assert render.safe_name("layer4/1 relu") == "layer4_1_relu"
    assert render.safe_name("..") == "layer"


def test_crop_cuts_pictures_to_boxes() -> None:
    picture = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    assert np.array_equal(render.crop(picture, (1, 2, 4, 5)), picture[1:4, 2:5])
    assert np.array_equal(render.crop(picture, None), picture)


def test_crop_mode_shows_each_field_above_its_image_patch(projection: dv.Projection) -> None:
    boxed = dataclasses.replace(projection, boxes=((0, 0, 5, 6), (2, 3, 9, 9), (4, 4, 12, 10)))
    _, axes = boxed.figure(crop=True, columns=4)
    assert axes.shape == (2, 4)  # reconstructions above, patches below
    base = np.asarray(boxed.input_pil())
    for i, (top, left, bottom, right) in enumerate(boxed.boxes or ()):
        shown = np.asarray(axes[0, i + 1].get_images()[0].get_array())
        assert np.array_equal(shown, boxed.rgb(i)[top:bottom, left:right])
        patch = np.asarray(axes[1, i + 1].get_images()[0].get_array())
        assert np.array_equal(patch, base[top:bottom, left:right])
    assert len(axes[0, 0].patches) == 3  # the input outlines every field


def test_layers_figure_has_a_row_per_layer(projection: dv.Projection, tiny_vgg: torch.nn.Module) -> None:
    x = projection.input
    assert x is not None
    shallow = dv.DeconvNet(tiny_vgg).project(x, "features.1", top=4)
    fig, axes = render.layers_figure([shallow, projection], per_layer=3)
    assert axes.shape == (2, 4)
    caption = fig._supxlabel.get_text().replace("\n", " ")  # type: ignore[attr-defined]
    assert "grey = 0" in caption
    assert "deconvnet projection" in caption  # the reverse pass is named on the figure, not only in a manifest
    assert "a: the seeded activation; the first 3 of up to 4 per layer" in caption  # says it shows a part
    assert "unit (row, col)" not in caption  # its panels name no unit: nothing to explain
    titles = [ax.get_title() for ax in axes[:, 1:].flat if ax.get_title()]
    assert titles
    assert all(re.fullmatch(r"ch \d+ a=\S+", t) for t in titles)
    assert titles[0] == f"ch {shallow.channels[0]} a={activation_text(float(shallow.activations[0]))}"
    assert [row[0].get_ylabel() for row in axes] == ["features.1", "features.6"]
    assert np.array_equal(np.asarray(axes[1, 2].get_images()[0].get_array()), projection.rgb(1))
    boxed = dataclasses.replace(projection, boxes=((0, 0, 5, 6), (2, 3, 9, 9), (4, 4, 12, 10)))
    _, axes = render.layers_figure([shallow, boxed], per_layer=3, crop=True)
    assert axes.shape == (3, 4)  # a layer without fields keeps one row: no patch row repeating the input
    assert np.asarray(axes[1, 1].get_images()[0].get_array()).shape == (5, 6, 3)  # cropped
    assert np.asarray(axes[2, 1].get_images()[0].get_array()).shape == (5, 6, 3)  # ... above its patch
    assert np.asarray(axes[0, 1].get_images()[0].get_array()).shape == (16, 16, 3)  # no boxes: whole
    assert [row[0].get_ylabel() for row in axes] == ["features.1", "features.6", ""]
    with pytest.raises(RenderError):
        render.layers_figure([])


def test_written_files_get_the_usual_permissions(projection: dv.Projection, tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        (path,) = projection.save(tmp_path, summary=False)[:1]
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644
