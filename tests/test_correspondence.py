"""Correspondence (Table 1): hand-computed Delta, the measure against a direct computation, parts files."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import register_tiny_model
from PIL import Image
from typer.testing import CliRunner

import deconvviz as dv
from deconvviz.analysis.correspondence import CorrespondenceResult, PartsError, map_box, sign_distances
from deconvviz.cli import app
from deconvviz.io.atomic import MARKER

MODEL = "tiny-correspondence"


@pytest.fixture(scope="module", autouse=True)
def tiny_model() -> None:
    register_tiny_model(MODEL)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("dogs")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = folder / f"dog{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def parts_file(folder: Path, photos: list[Path], **changes: list[int]) -> Path:
    boxes = {p.name: {"eye": [4, 4, 12, 12], "nose": [20, 24, 30, 32]} for p in photos}
    for name, box in changes.items():
        boxes[name.replace("_", ".")]["eye"] = box
    path = folder / "parts.json"
    path.write_text(json.dumps({"parts": ["eye", "nose"], "images": boxes}))
    return path


def test_sign_distances_by_hand() -> None:
    eps = torch.tensor([[1.0, -1.0, 0.0, 2.0], [3.0, 1.0, 0.0, -1.0], [0.0, -2.0, 5.0, 1.0]])
    # signs: [+ - 0 +], [+ + 0 -], [0 - + +]: pairs (0,1) differ at 2 of 4, (0,2) at 2 of 4, (1,2) at all 4.
    assert sign_distances(eps).tolist() == [0.5, 0.5, 1.0]


def test_table_mean_and_std_by_hand() -> None:
    d = torch.tensor([0.5, 0.5, 1.0], dtype=torch.float64)
    result = CorrespondenceResult(
        model="m",
        images=("a", "b", "c"),
        parts=("eye",),
        layers=("l5",),
        distances={("eye", "l5"): d, ("random", "l5"): torch.tensor([0.25, 0.75], dtype=torch.float64)},
        boxes={},
    )
    assert result.mean("eye", "l5") == pytest.approx(2 / 3, abs=1e-15)
    assert result.std("eye", "l5") == pytest.approx(math.sqrt(1 / 18), abs=1e-15)
    assert result.rows == ["eye", "random"]
    assert "0.667 ± 0.236" in result.table()
    assert "random" in result.table().splitlines()[-1]
    assert result.to_csv().splitlines()[0] == "part,layer,mean,std,pairs"
    assert result.to_csv().splitlines()[1].endswith(",3")
    pair = dataclasses.replace(  # two pictures: one pair, one value, no spread to show
        result, images=("a", "b"), distances={("eye", "l5"): d[:1], ("random", "l5"): d[1:2]}
    )
    lines = pair.table().splitlines()
    assert "±" not in "".join(lines[:-1])
    assert "0.500" in lines[2]
    assert lines[-1] == "a value of one image pair has no spread: give three or more pictures for mean ± std"


def test_box_follows_the_resize_and_centre_crop() -> None:
    pre = dv.Preprocessing(size=32)
    assert map_box((4, 4, 12, 12), (40, 40), pre) == (3, 3, 10, 10)
    # 80 x 40 -> 64 x 32, crop 16 px off the left: x 20..40 -> 16..32 -> 0..16.
    assert map_box((20, 0, 40, 10), (80, 40), pre) == (0, 0, 16, 8)
    assert map_box((0, 0, 10, 10), (80, 40), pre) == (0, 0, 0, 8)  # wholly in the cropped-away margin


def test_a_box_the_crop_cuts_is_occluded_inside_it_with_a_warning(tmp_path: Path) -> None:
    from deconvviz.analysis.correspondence import PartCutWarning

    pre = dv.Preprocessing(size=32)
    assert map_box((10, 0, 30, 10), (80, 40), pre, clip=False) == (-8, 0, 8, 8)
    assert map_box((10, 0, 30, 10), (80, 40), pre) == (0, 0, 8, 8)
    rng = np.random.default_rng(1)
    wide = []
    for i in range(2):  # 80 x 40: the model's 32 x 32 centre crop leaves 16 px off each side, once resized
        wide.append(tmp_path / f"wide{i}.png")
        Image.fromarray(rng.integers(0, 256, (40, 80, 3), dtype=np.uint8)).save(wide[-1])
    boxes = {"eye": [10, 0, 30, 10], "nose": [36, 20, 44, 28]}
    parts = dv.load_parts({"parts": ["eye", "nose"], "images": {p.name: boxes for p in wide}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = dv.correspondence(wide, parts, model=MODEL, device="cpu", random=0)
    said = [str(w.message) for w in caught if issubclass(w.category, PartCutWarning)]
    assert said == [
        f"box 'eye' of 'wide{i}.png' reaches past the centre crop the model sees: only 50% of it is occluded; "
        "move the part into the middle of the picture or crop it first"
        for i in range(2)
    ]
    assert result.boxes["wide0.png"]["eye"] == (0, 0, 8, 8)
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / "wide0.png").write_bytes(wide[0].read_bytes())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PartCutWarning)
        with pytest.raises(dv.AnalysisError, match=r"two pictures are named 'wide0\.png'; .* so rename one"):
            dv.correspondence([wide[0], twin / "wide0.png"], parts, model=MODEL, device="cpu", random=0)


def test_delta_matches_a_direct_computation(photos: list[Path], tmp_path: Path) -> None:
    result = dv.correspondence(
        photos, parts_file(tmp_path, photos), model=MODEL, layers="conv3,pool2", random=2, device="cpu"
    )
    session = dv.session(MODEL, device="cpu")
    for layer in ("conv3", "pool2"):
        for part in ("eye", "nose"):
            eps = []
            for photo in photos:
                x = session.preprocess(photo)
                left, top, right, bottom = result.boxes[photo.name][part]
                y = x.clone()
                y[:, :, top:bottom, left:right] = 0
                acts = session.net.activations(torch.cat([x, y]), [layer])[layer].double()
                eps.append((acts[0] - acts[1]).flatten())
            signs = [e.sign() for e in eps]
            pairs = [float((signs[i] != signs[j]).double().mean()) for i in range(3) for j in range(i + 1, 3)]
            assert result.distances[(part, layer)].tolist() == pairs
            assert result.mean(part, layer) == pytest.approx(sum(pairs) / 3, abs=1e-15)
        assert result.distances[("random", layer)].numel() == 2 * 2 * 3  # draws x parts x pairs
    assert result.boxes[photos[0].name]["eye"] == (3, 3, 10, 10)
    # Random boxes keep each part's size and stay inside the input.
    for draw in result.random_boxes:
        for photo in photos:
            for part, (left, top, right, bottom) in draw[photo.name].items():
                want = result.boxes[photo.name][part]
                assert (right - left, bottom - top) == (want[2] - want[0], want[3] - want[1])
                assert 0 <= left
                assert right <= 32
                assert 0 <= top
                assert bottom <= 32


def test_save_writes_table_csv_figure(photos: list[Path], tmp_path: Path) -> None:
    result = dv.correspondence(photos, parts_file(tmp_path, photos), model=MODEL, random=1, device="cpu")
    folder = result.save(tmp_path / "out")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [MARKER, "correspondence.png", "delta.csv", "manifest.json", "table.txt"]
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == "correspondence"
    assert set(manifest["delta"]) == {"eye", "nose", "random"}
    assert manifest["box_order"].startswith("left, top, right, bottom")  # the parts file's order, said


def test_no_random_draws_leave_the_baseline_out(photos: list[Path], tmp_path: Path) -> None:
    result = dv.correspondence(photos, parts_file(tmp_path, photos), model=MODEL, random=0, device="cpu")
    assert result.rows == ["eye", "nose"]
    folder = result.save(tmp_path / "out")  # the figure too: no bar for a baseline that was not drawn
    assert "random" not in (folder / "table.txt").read_text()
    assert set(json.loads((folder / "manifest.json").read_text())["delta"]) == {"eye", "nose"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dog1_png": [30, 30, 45, 38]}, "lies outside the 40x40 image"),
        ({"dog1_png": [-1, 0, 5, 5]}, "lies outside the 40x40 image"),
        ({"dog1_png": [5, 5, 5, 9]}, "is empty"),
    ],
)
def test_cli_bad_box_is_one_line_exit_2_nothing_written(
    photos: list[Path], tmp_path: Path, change: dict[str, list[int]], message: str
) -> None:
    parts = parts_file(tmp_path, photos, **change)
    out = tmp_path / "out"
    args = ["correspondence", *map(str, photos), "--parts", str(parts), "--model", MODEL, "--device", "cpu"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_parts_file_problems(photos: list[Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PartsError, match="not valid JSON"):
        dv.load_parts(bad)
    with pytest.raises(PartsError, match="has no box for 'nose'"):
        dv.load_parts(
            {"images": {"a.jpg": {"eye": [0, 0, 2, 2], "nose": [1, 1, 3, 3]}, "b.jpg": {"eye": [0, 0, 2, 2]}}}
        )
    parts = dv.load_parts({"images": {"other.jpg": {"eye": [0, 0, 2, 2]}}})
    with pytest.raises(PartsError, match=r"no parts for image 'dog0\.png'"):
        dv.correspondence(photos, parts, model=MODEL, device="cpu")


def test_cli_prints_the_table(photos: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["correspondence", *map(str, photos), "--parts", str(parts_file(tmp_path, photos)), "--model", MODEL]
    result = CliRunner().invoke(app, [*args, "--device", "cpu", "--random", "1", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[0].split()[0] == "part"
    assert (out / "delta.csv").is_file()


def test_the_shipped_parts_file_fits_its_photos() -> None:
    examples = Path(__file__).resolve().parents[1] / "examples"
    parts = dv.load_parts(examples / "faces.json")
    assert parts.names == ("right eye", "left eye", "nose")
    assert len(parts.boxes) == 3
    pre = dv.Preprocessing(size=224)
    for name, boxes in parts.boxes.items():
        width, height = Image.open(examples / name).size
        for part, (left, top, right, bottom) in boxes.items():
            assert 0 <= left < right <= width, (name, part)
            assert 0 <= top < bottom <= height, (name, part)
            mapped = map_box(boxes[part], (width, height), pre)
            assert mapped[2] - mapped[0] == pytest.approx((right - left) * 224 / min(width, height), abs=2)
            assert mapped[3] - mapped[1] == pytest.approx((bottom - top) * 224 / min(width, height), abs=2)
        left_eye, right_eye = boxes["left eye"], boxes["right eye"]
        assert right_eye[2] <= left_eye[0]  # the subject's right eye is on the left of the picture
        assert boxes["nose"][1] > max(right_eye[1], left_eye[1])  # the nose lies below the eyes
