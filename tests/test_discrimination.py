"""Discrimination (Table 7): the linear fits against independent solvers, labels, splits, the command."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import register_tiny_model
from PIL import Image
from typer.testing import CliRunner

import deconvviz as dv
from deconvviz.analysis.labels import LabelError, read_labels
from deconvviz.analysis.linear import class_accuracies, fit_linear, objective, standardise
from deconvviz.cli import app
from deconvviz.io.atomic import MARKER

MODEL = "tiny-discrimination"
COLOURS = ("blue", "green", "red")


@pytest.fixture(scope="module", autouse=True)
def tiny_model() -> None:
    register_tiny_model(MODEL)


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six noisy pictures per class, each class brighter in one colour channel."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for c, name in enumerate(("red", "green", "blue")):
        (root / name).mkdir()
        for i in range(6):
            a = rng.integers(0, 256, (36, 36, 3)).astype(float)
            a[..., c] = a[..., c] * 0.3 + 160
            Image.fromarray(a.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def problem(seed: int = 0, n: int = 60, d: int = 5, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = torch.randn(classes, d, generator=generator, dtype=torch.float64)
    x = centres[y] + 1.5 * torch.randn(n, d, generator=generator, dtype=torch.float64)
    return x, y


@pytest.mark.parametrize(("n", "d"), [(60, 5), (30, 80)])  # more pictures than features, and fewer
def test_softmax_fit_equals_scikit_learn(n: int, d: int) -> None:
    linear_model = pytest.importorskip("sklearn.linear_model")
    x, y = problem(n=n, d=d)
    l2 = 0.05
    weight, bias = fit_linear(x, y, 3, linear="softmax", l2=l2, tolerance=1e-11)
    # scikit-learn minimises 1/2 ||W||^2 + C * sum of losses, i.e. our mean loss + l2/2 ||W||^2 with C = 1/(N l2);
    # the bias is not penalised in either, and is fixed only up to a constant shared by the classes.
    reference = linear_model.LogisticRegression(C=1 / (len(y) * l2), tol=1e-12, max_iter=10_000)
    reference.fit(x.numpy(), y.numpy())
    assert np.allclose(weight.numpy(), reference.coef_.T, atol=1e-6)
    b = bias.numpy() - bias.numpy().mean()
    assert np.allclose(b, reference.intercept_ - reference.intercept_.mean(), atol=1e-6)


@pytest.mark.parametrize(("n", "d"), [(60, 5), (24, 60)])
def test_svm_fit_equals_an_independent_solver(n: int, d: int) -> None:
    optimize = pytest.importorskip("scipy.optimize")
    x, y = problem(seed=1, n=n, d=d)
    l2, n = 0.02, len(y)
    weight, bias = fit_linear(x, y, 3, linear="svm", l2=l2, tolerance=1e-11)
    xs = x.numpy()
    for c in range(3):
        t = np.where(y.numpy() == c, 1.0, -1.0)

        def loss(p: np.ndarray, t: np.ndarray = t) -> tuple[float, np.ndarray]:
            w, b = p[:-1], p[-1]
            margin = np.maximum(0.0, 1.0 - t * (xs @ w + b))
            value = (margin**2).sum() / n + 0.5 * l2 * w @ w
            g = -2.0 * margin * t / n
            return value, np.append(xs.T @ g + l2 * w, g.sum())

        found = optimize.minimize(
            loss, np.zeros(d + 1), jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 0}
        )
        assert np.allclose(weight[:, c].numpy(), found.x[:-1], atol=1e-5)
        assert bias[c].item() == pytest.approx(found.x[-1], abs=1e-5)


@pytest.mark.parametrize("linear", ["softmax", "svm"])
def test_fit_is_a_stationary_point(linear: str) -> None:
    x, y = problem(seed=2, d=12)
    weight, bias = fit_linear(x, y, 3, linear=linear, l2=0.01, tolerance=1e-11)
    w, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    signs = torch.where(torch.nn.functional.one_hot(y, 3) > 0, 1.0, -1.0).double()
    objective(x, y, signs, w, b, linear, 0.01).backward()
    assert w.grad is not None
    assert b.grad is not None
    assert float(w.grad.abs().max()) < 1e-7
    assert float(b.grad.abs().max()) < 1e-7


def test_a_warm_start_reaches_the_same_optimum() -> None:
    x, y = problem(seed=3, n=20, d=50)
    cold = fit_linear(x, y, 3, l2=0.01, tolerance=1e-11)
    warm = fit_linear(x, y, 3, l2=0.01, tolerance=1e-11, start=fit_linear(x, y, 3, l2=1.0))
    assert torch.allclose(cold[0], warm[0], atol=1e-8)
    assert torch.allclose(cold[1], warm[1], atol=1e-8)


def test_class_accuracies_by_hand() -> None:
    scores = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 0, 1, 1])  # class 0: right, wrong, right; class 1: wrong, right
    assert class_accuracies(scores, y, 2).tolist() == pytest.approx([2 / 3, 1 / 2])


def test_standardise_uses_the_training_statistics_and_keeps_constant_features() -> None:
    train = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    fitted, other = standardise(train, torch.tensor([[2.0, 7.0]]))
    assert fitted.tolist() == [[-1.0, 0.0], [1.0, 0.0]]
    assert other.tolist() == [[0.0, 2.0]]
    assert fitted.dtype == torch.float64


def test_colour_classes_are_told_apart(colours: Path) -> None:
    result = dv.discrimination(colours, MODEL, layers="conv1,conv3", splits=3, grid=2)
    assert result.classes == COLOURS
    assert result.counts == (6, 6, 6)
    assert result.train == 3  # half the smallest class
    assert result.features == {"conv1": 4 * 4, "conv3": 8 * 4}  # channels x grid^2
    assert result.accuracies["conv1"].shape == (3, 3)
    assert result.mean("conv1") == 1.0  # the mean colour alone separates them
    assert result.chance == pytest.approx(1 / 3)
    assert all(len(result.penalties[layer]) == 3 for layer in result.layers)
    assert result.best == "conv1" or result.mean("conv3") == 1.0
    assert "chance 33.3 %" in result.table()
    assert result.table().splitlines()[0].split() == ["layer", "features", "Softmax", "accuracy", "%", "L2"]


def test_shuffled_labels_stay_near_chance(colours: Path) -> None:
    labels = ["a", "b", "c"] * 6  # sorted paths: blue 0..5, green 0..5, red 0..5 -> every class mixes colours
    result = dv.discrimination(colours, MODEL, layers="conv1", labels=labels, splits=5, l2=0.1)
    assert result.classes == ("a", "b", "c")
    assert result.mean("conv1") < 0.75


def test_batches_do_not_change_the_result(colours: Path) -> None:
    one = dv.discrimination(colours, MODEL, layers="pool1", batch_size=1, splits=2, l2=0.1, linear="svm")
    many = dv.discrimination(colours, MODEL, layers="pool1", batch_size=7, splits=2, l2=0.1, linear="svm")
    assert torch.allclose(one.accuracies["pool1"], many.accuracies["pool1"])
    assert one.penalties == many.penalties == {"pool1": (0.1, 0.1)}


class Coloured(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Tensors already in input space, with targets and class names, like torchvision's data sets."""

    classes = ("dark", "light")

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.targets = [i % 2 for i in range(8)]
        self.items = [torch.randn(3, 32, 32, generator=generator) + 2.0 * t for t in self.targets]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.items[index], self.targets[index]


def test_a_data_set_brings_its_targets() -> None:
    result = dv.discrimination(Coloured(), MODEL, layers="conv1", splits=2, l2=0.1)
    assert result.classes == ("dark", "light")
    assert result.counts == (4, 4)
    assert result.mean("conv1") == 1.0


def test_a_list_file_takes_each_picture_s_folder(colours: Path, tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{colours / c / f'{i}.png'}\n" for c in ("red", "blue") for i in range(4)))
    result = dv.discrimination(listing, MODEL, layers="conv1", splits=1, l2=0.1)
    assert result.classes == ("blue", "red")
    assert result.counts == (4, 4)


@pytest.mark.parametrize(
    ("arrange", "options", "message"),
    [
        ("flat", {}, "in no class: put each class's pictures in a folder named after the class"),
        ("one", {}, "of one class ('red')"),
        ("single", {}, "class 'green' has one picture"),
        ("full", {"train": 6}, "--train 6 leaves none to test; give --train 5 or fewer"),
        ("full", {"labels": ["a", "b"]}, "2 labels for 18 pictures"),
        ("full", {"linear": "tree"}, "unknown linear model 'tree'"),
        ("full", {"grid": 0}, "grid must be a positive whole number"),
        ("full", {"l2": -1.0}, "the L2 penalty must be a positive number"),
        ("full", {"layers": "conv9"}, "conv9"),
    ],
)
def test_bad_input_is_one_clear_error(
    colours: Path, tmp_path: Path, arrange: str, options: dict[str, object], message: str
) -> None:
    data = colours
    if arrange != "full":
        data = tmp_path / "data"
        pictures = sorted(colours.glob("*/*.png"))
        if arrange == "flat":
            data.mkdir()
            for i, p in enumerate(pictures[:4]):
                (data / f"{i}.png").write_bytes(p.read_bytes())
        else:
            (data / "red").mkdir(parents=True)
            for p in sorted((colours / "red").glob("*.png")):
                (data / "red" / p.name).write_bytes(p.read_bytes())
            if arrange == "single":
                (data / "green").mkdir()
                (data / "green" / "0.png").write_bytes((colours / "green" / "0.png").read_bytes())
    with pytest.raises(dv.DeconvVizError, match=None) as caught:
        dv.discrimination(data, MODEL, **options)  # type: ignore[arg-type]
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_result_folder(colours: Path, tmp_path: Path) -> None:
    result = dv.discrimination(colours, MODEL, layers="conv1,conv3", splits=2)
    folder = result.save(tmp_path / "out", arguments={"layers": "conv1,conv3"})
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["accuracy.csv", "discrimination.png", "manifest.json", "table.txt", MARKER]
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == "discrimination"
    assert manifest["classes"] == {"blue": 6, "green": 6, "red": 6}
    assert manifest["layers"]["conv1"]["mean"] == result.mean("conv1")
    assert manifest["best"] == result.best
    rows = (folder / "accuracy.csv").read_text().splitlines()
    assert rows[0] == "layer,split,class,accuracy,l2"
    assert len(rows) == 1 + 2 * 2 * 3
    assert Image.open(folder / "discrimination.png").size[0] > 300
    assert result._repr_png_().startswith(b"\x89PNG")
    fig, (curve, classes) = result.figure()
    assert fig.get_size_inches()[0] <= 10.0  # a notebook's width
    chance = [line.get_ydata()[0] for line in curve.get_lines() if line.get_label() == "chance"]
    assert chance == [pytest.approx(100 / 3)]
    cells = np.asarray(classes.get_images()[0].get_array())
    assert cells.shape == (3, 2)  # classes x layers
    assert cells[:, 0].tolist() == pytest.approx((100 * result.accuracies["conv1"].mean(0)).tolist())


def test_command_line(colours: Path, tmp_path: Path) -> None:
    out = tmp_path / "d"
    runner = CliRunner()
    done = runner.invoke(
        app,
        [
            "discrimination",
            str(colours),
            "-m",
            MODEL,
            "-l",
            "conv1",
            "--splits",
            "2",
            "--linear",
            "svm",
            "-o",
            str(out),
        ],
    )
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    assert lines[0].split()[:3] == ["layer", "features", "SVM"]
    assert lines[-2].startswith("conv1 separates the 3 classes best: 100.0 %")
    assert lines[-1] == f"wrote {out}"
    assert json.loads((out / "manifest.json").read_text())["arguments"]["linear"] == "svm"

    bad = tmp_path / "bad"
    failed = runner.invoke(app, ["discrimination", str(colours / "red"), "-m", MODEL, "-o", str(bad)])
    assert failed.exit_code != 0
    assert "in no class" in failed.output
    assert len(failed.output.strip().splitlines()) == 1
    assert not bad.exists()


@pytest.mark.slow
def test_the_shipped_digits_example_runs(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "digits"
    script = root / "examples" / "digits_discrimination.py"
    command = [sys.executable, str(script), "--out", str(out), "--per-class", "4", "--model", "squeezenet1_1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, cwd=root)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (out / "images").iterdir()) == [str(d) for d in range(10)]
    manifest = json.loads((out / "discrimination" / "manifest.json").read_text())
    assert manifest["classes"] == {str(d): 4 for d in range(10)}
    assert manifest["train_per_class"] == 2
    assert "separates the 10 classes best" in done.stdout


def test_per_class_keeps_a_seeded_choice_of_each_class(colours: Path) -> None:
    def read(seed: int) -> tuple[list[str], dv.DiscriminationResult]:
        seen: list[str] = []
        options = {"layers": "conv1", "per_class": 4, "splits": 1, "l2": 0.1, "batch_size": 1, "seed": seed}
        result = dv.discrimination(colours, MODEL, progress=lambda d, t, what: seen.append(what), **options)
        return [w for w in seen if w.endswith(".png")], result

    pictures, one = read(0)
    again, _ = read(0)
    other, _ = read(1)
    assert one.counts == (4, 4, 4)
    assert one.train == 2
    assert sorted({p.split("/")[0] for p in pictures}) == list(COLOURS)
    assert all(sum(p.startswith(c + "/") for p in pictures) == 4 for c in COLOURS)
    assert pictures == again
    assert pictures != other


def test_a_labels_file_names_pictures_by_path_or_file_name(colours: Path, tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    lines = ["picture\tclass"]  # a header names no picture
    for c in ("red", "blue"):
        for i in range(4):
            (flat / f"{c}{i}.png").write_bytes((colours / c / f"{i}.png").read_bytes())
            lines.append(f"{c}{i}.png\t{c} things")
    labels = tmp_path / "labels.tsv"
    labels.write_text("\n".join(lines) + "\n")
    result = dv.discrimination(flat, MODEL, layers="conv1", labels=labels, splits=1, l2=0.1)
    assert result.classes == ("blue things", "red things")
    assert result.counts == (4, 4)
    mapped = dv.discrimination(flat, MODEL, layers="conv1", labels=read_labels(labels), splits=1, l2=0.1)
    assert torch.equal(mapped.accuracies["conv1"], result.accuracies["conv1"])
    # by path relative to the folder, comma-separated, with CSV quoting
    by_path = tmp_path / "by-path.csv"
    by_path.write_text("".join(f'{c}/{i}.png,"{c}, {i % 2}"\n' for c in COLOURS for i in range(6)))
    parity = dv.discrimination(colours, MODEL, layers="conv1", labels=by_path, splits=1, l2=0.1)
    assert parity.classes == tuple(f"{c}, {p}" for c in COLOURS for p in (0, 1))

    (flat / "stray.png").write_bytes((colours / "red" / "5.png").read_bytes())
    with pytest.raises(LabelError, match=r"no class for picture 'stray\.png' in the labels; add a line"):
        dv.discrimination(flat, MODEL, labels=labels)
    broken = tmp_path / "broken.csv"
    broken.write_text("a.png,red\nb.png\n")
    with pytest.raises(LabelError, match="line 2: expected 'picture,class'"):
        read_labels(broken)
    with pytest.raises(LabelError, match="does not exist"):
        read_labels(tmp_path / "missing.csv")


def test_the_command_reads_a_labels_file(colours: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("".join(f"{c}/{i}.png,{'warm' if c == 'red' else 'cold'}\n" for c in COLOURS for i in range(6)))
    out = tmp_path / "out"
    arguments = ["discrimination", str(colours), "-m", MODEL, "-l", "conv1", "--labels", str(labels), "--splits", "1"]
    done = CliRunner().invoke(app, [*arguments, "-o", str(out)])
    assert done.exit_code == 0, done.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == {"cold": 12, "warm": 6}
    assert manifest["arguments"]["labels"] == str(labels)
    # one split has no spread: the score alone, and a line that says so
    row = next(line for line in done.stdout.splitlines() if line.startswith("conv1 "))
    assert "±" not in row
    assert "one split, so no spread: --splits N (splits=N) averages N random splits" in done.stdout
    one = CliRunner().invoke(app, ["discrimination", str(colours), "-m", MODEL, "--per-class", "1", "-o", str(out)])
    assert one.exit_code == 2
    assert "--per-class 1 (per_class=1) keeps one picture of each class" in one.stderr


def test_many_classes_are_drawn_as_the_curve_alone() -> None:
    layers = ("a", "b")
    classes = tuple(f"class {i}" for i in range(41))
    accuracies = {layer: torch.full((2, 41), 0.5, dtype=torch.float64) for layer in layers}
    result = dv.DiscriminationResult(
        model="m",
        data="d",
        classes=classes,
        counts=(4,) * 41,
        layers=layers,
        features=dict.fromkeys(layers, 8),
        linear="svm",
        train=2,
        grid=2,
        seed=0,
        accuracies=accuracies,
        penalties=dict.fromkeys(layers, (1.0, 1.0)),
    )
    _, (curve, per_class) = result.figure()
    assert per_class is None
    assert curve.get_lines()
    assert result.table().splitlines()[2].split()[:3] == ["a", "8", "50.0"]
    assert result.best == "a"  # the shallowest of equals
    assert result.setting == "41 classes, 2 training pictures each"
    assert dataclasses.replace(result, train=1).setting == "41 classes, 1 training picture each"


def test_a_curve_tests_every_size_on_the_same_pictures(colours: Path) -> None:
    options = {"layers": "conv1,conv3", "splits": 2, "linear": "svm"}
    curve = dv.discrimination(colours, MODEL, train=[3, 1, 1, 2], **options)  # type: ignore[arg-type]
    assert isinstance(curve, dv.DiscriminationCurve)
    assert curve.sizes == (1, 2, 3)
    assert curve.tested == (3, 3, 3)
    assert [r.train for r in curve.results] == [1, 2, 3]
    # the largest size is the single run of that size (the same splits, folds and penalties) ...
    single = dv.discrimination(colours, MODEL, train=3, **options)  # type: ignore[arg-type]
    for layer in curve.layers:
        assert torch.equal(curve.result(3).accuracies[layer], single.accuracies[layer])
        assert curve.result(3).penalties[layer] == single.penalties[layer]
    # ... and every size is tested on the 3 pictures per class beyond it: accuracies in thirds, where a single run
    # with one training picture tests on five
    for result in curve.results:
        thirds = 3 * result.accuracies["conv1"]
        assert torch.equal(thirds, thirds.round())
    fifths = 5 * dv.discrimination(colours, MODEL, train=1, **options).accuracies["conv1"]  # type: ignore[arg-type]
    assert torch.equal(fifths, fifths.round())
    with pytest.raises(dv.DeconvVizError, match="no result with 4 training pictures per class; the sizes are 1,2,3"):
        curve.result(4)


def test_a_curve_s_table_files_and_figure(colours: Path, tmp_path: Path) -> None:
    curve = dv.discrimination(colours, MODEL, layers="conv1,conv3", train=[1, 2], splits=2, l2=0.1)
    lines = curve.table().splitlines()
    assert lines[0] == "Softmax accuracy % by training pictures per class"
    assert lines[1].split() == ["layer", "features", "1", "2"]
    assert lines[3].split()[:3] == ["conv1", "16", f"{100 * curve.result(1).mean('conv1'):.1f}"]
    assert lines[-1] == "chance 33.3 %: 3 classes, every size tested on the same 4 pictures per class"
    assert curve.summary().startswith("1 training picture per class: conv")
    folder = curve.save(tmp_path / "curve")
    rows = (folder / "accuracy.csv").read_text().splitlines()
    assert rows[0] == "train,layer,split,class,accuracy,l2"
    assert len(rows) == 1 + 2 * 2 * 2 * 3  # sizes x layers x splits x classes
    assert rows[1].startswith("1,conv1,0,blue,")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == "discrimination-curve"
    assert manifest["train_per_class"] == [1, 2]
    assert manifest["tested_per_class"] == {"blue": 4, "green": 4, "red": 4}
    assert manifest["layers"]["conv3"]["mean"] == [curve.result(n).mean("conv3") for n in (1, 2)]
    _fig, ax = curve.figure()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["conv1", "conv3", "chance"]
    drawn = next(c for c in ax.containers if c.get_label() == "conv3")
    assert drawn.lines[0].get_ydata().tolist() == pytest.approx([100 * curve.result(n).mean("conv3") for n in (1, 2)])
    assert curve._repr_png_().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ([1, 6], "--train 1,6 leaves none to test beyond 6; give --train 5 or fewer"),
        ([], "train must name one size or more"),
        ([0, 2], "each training size must be a positive whole number, got 0"),
        ("2", "train must be a positive whole number, got '2'"),
    ],
)
def test_bad_training_sizes_are_one_clear_error(colours: Path, train: object, message: str) -> None:
    with pytest.raises(dv.DeconvVizError) as caught:
        dv.discrimination(colours, MODEL, train=train)  # type: ignore[call-overload]
    assert message in str(caught.value)


def test_the_command_draws_a_curve(colours: Path, tmp_path: Path) -> None:
    out = tmp_path / "c"
    runner = CliRunner()
    arguments = ["discrimination", str(colours), "-m", MODEL, "-l", "conv1", "--splits", "1", "--l2", "0.1"]
    done = runner.invoke(app, [*arguments, "--train", "1,3", "-o", str(out)])
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    assert lines[0] == "Softmax accuracy % by training pictures per class"
    assert lines[-2].startswith("1 training picture per class: conv1 ")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["arguments"]["train"] == [1, 3]
    for bad in ("0", "1,x", ""):
        failed = runner.invoke(app, [*arguments, "--train", bad, "-o", str(tmp_path / "bad")])
        assert failed.exit_code == 2, failed.output
        assert "--train takes training pictures per class" in failed.output
        assert len(failed.output.strip().splitlines()) == 1
        assert not (tmp_path / "bad").exists()


def test_unreadable_pictures_are_left_out_and_listed(colours: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for p in sorted(colours.glob("*/*.png")):
        (data / p.parent.name).mkdir(parents=True, exist_ok=True)
        (data / p.parent.name / p.name).write_bytes(p.read_bytes())
    (data / "blue" / "0.png").write_bytes(b"not a picture")  # the very first picture: the layers are checked on another
    (data / "red" / "9.png").write_bytes(b"")
    result = dv.discrimination(data, MODEL, layers="conv1", splits=2, l2=0.1, batch_size=4)
    assert result.counts == (5, 6, 6)
    assert [name for name, _ in result.skipped] == ["blue/0.png", "red/9.png"]
    assert all("not a picture Pillow can read" in error for _, error in result.skipped)
    assert result.train == 2  # half the smallest class as read
    assert result.table().splitlines()[-1] == "2 unreadable pictures left out: blue/0.png, red/9.png"
    assert result.mean("conv1") == 1.0
    manifest = json.loads((result.save(tmp_path / "out") / "manifest.json").read_text())
    assert [s["picture"] for s in manifest["skipped"]] == ["blue/0.png", "red/9.png"]
    curve = dv.discrimination(data, MODEL, layers="conv1", splits=1, l2=0.1, train=[1, 2])
    assert curve.tested == (3, 4, 4)
    assert curve.table().splitlines()[-1].startswith("2 unreadable pictures left out")
    # a class that reading leaves too small is one clear error, after the reading
    for i in range(1, 6):
        (data / "blue" / f"{i}.png").write_bytes(b"")
    with pytest.raises(LabelError, match=r"class 'blue' has 0 pictures once 7 unreadable pictures skipped; each"):
        dv.discrimination(data, MODEL, layers="conv1", splits=1)
