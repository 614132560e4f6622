"""Manifests written as a stream: the text of ``json.dumps(..., indent=2)``, without the whole object in memory."""

from __future__ import annotations

import json
import math
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import register_tiny_model
from PIL import Image

from deconvviz.analysis.topk.result import TopKHit, TopKResult
from deconvviz.analysis.topk.scan import top_k
from deconvviz.io.jsonstream import Streamed, iter_json
from deconvviz.io.manifest import ManifestError, header, read_manifest
from deconvviz.viz.report import build_report

MODEL = "tiny-manifest"


@pytest.fixture(scope="module", autouse=True)
def tiny_model() -> None:
    register_tiny_model(MODEL)


def _text(value: object, indent: int = 2) -> str:
    return "".join(iter_json(value, indent=indent))


@pytest.mark.parametrize(
    "value",
    [
        {},
        [],
        {"a": 1, "b": [1, 2.5, None, True], "c": {"d": 'é\n"x"', "e": []}, "f": {}},
        [[], [{}], [[1, [2, [3]]]], (4, 5)],
        {"nan": math.nan, "inf": -math.inf, "big": 1e300, "tiny": 5e-324, "0": 0.1 + 0.2},
        "just a string",
        7,
    ],
)
def test_plain_values_are_written_as_json_dumps_writes_them(value: object) -> None:
    assert _text(value) == json.dumps(value, indent=2)
    assert _text(value, indent=4) == json.dumps(value, indent=4)


def test_streamed_parts_are_written_as_their_materialized_values() -> None:
    def rows() -> Iterator[dict[str, object]]:
        for i in range(3):
            yield {"row": i, "cells": Streamed(lambda i=i: iter(range(i)))}  # the first has no cells: "[]"

    def pairs() -> Iterator[tuple[object, object]]:
        yield from [("x", [1, 2]), (3, {"y": Streamed(lambda: iter(["z"]))}), (None, 0.5), (True, {}), (2.5, [])]

    streamed = {
        "top": [1, Streamed(rows), {"deeper": Streamed(pairs, pairs=True)}],
        "empty": Streamed(lambda: iter(())),
        "empty object": Streamed(lambda: iter(()), pairs=True),
        "plain": {"a": [1, {"b": 2}]},
    }

    def materialized(value: object) -> object:
        if isinstance(value, Streamed):
            value = value.materialize()
        if isinstance(value, dict):
            return {k: materialized(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [materialized(v) for v in value]
        return value

    plain = materialized(streamed)
    assert _text(streamed) == json.dumps(plain, indent=2)
    assert _text(streamed, indent=3) == json.dumps(plain, indent=3)
    assert json.loads(_text(streamed))["top"][2]["deeper"]["3"] == {"y": ["z"]}
    with pytest.raises(TypeError, match="keys must be str"):
        _text(Streamed(lambda: iter([((1, 2), 3)]), pairs=True))


def test_items_are_made_only_after_the_previous_ones_are_written() -> None:
    written: list[str] = []

    def items() -> Iterator[dict[str, int]]:
        for i in range(4):
            if i:  # the item before this one is already text
                assert json.loads("".join(written) + "]")[-1] == {"item": i - 1}
            yield {"item": i}

    for piece in iter_json(Streamed(items)):
        written.append(piece)
    assert json.loads("".join(written)) == [{"item": i} for i in range(4)]


def _big_result(layers: int = 4, channels: int = 512, k: int = 9) -> TopKResult:
    pixels = torch.zeros(3, 2, 2)
    names = tuple(f"n{i // 50:08d}/ILSVRC2012_val_{i:08d}.JPEG" for i in range(2000))
    hits = {
        f"conv{layer}": {
            channel: tuple(
                TopKHit(
                    value=float(channel * k + rank) / 7,
                    image=names[(channel * k + rank) % len(names)],
                    position=(rank, channel % 13),
                    box=(0, rank, 40, rank + 40),
                    reconstruction=pixels,
                    patch=pixels,
                )
                for rank in range(k)
            )
            for channel in range(channels)
        }
        for layer in range(layers)
    }
    return TopKResult(
        model="vgg16",
        folder="/data/imagenet/val",
        layers=tuple(hits),
        nodes=tuple(f"features.{i}" for i in range(layers)),
        k=k,
        images=names,
        skipped=(("broken.JPEG", "cannot identify image file"),),
        hits=hits,
    )


class _Sink:
    """A file that forgets what is written to it, but counts it."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, text: str) -> None:
        self.size += len(text)


@pytest.mark.slow  # builds and writes 18,000 hits twice: some 5 s
def test_a_large_result_streams_in_a_fraction_of_the_memory_of_its_dict() -> None:
    result = _big_result()
    streamed, whole = _Sink(), _Sink()
    tracemalloc.start()
    try:
        for piece in iter_json(result.to_dict(stream=True)):
            streamed.write(piece)
        _, streamed_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        whole.write(json.dumps(result.to_dict(), indent=2))
        _, whole_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert streamed.size == whole.size > 2_000_000
    assert streamed_peak < whole_peak / 20, (streamed_peak, whole_peak)


def test_a_result_streamed_is_its_dict_byte_for_byte() -> None:
    result = _big_result(layers=2, channels=5, k=3)
    assert _text(result.to_dict(stream=True)) == json.dumps(result.to_dict(), indent=2)
    assert result.to_dict()["layers"][1]["channels"]["4"][2]["image"] == result.hits["conv1"][4][2].image


def test_the_report_manifest_is_the_json_of_its_contents(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(photos / f"p{i}.png")
    (photos / "broken.png").write_bytes(b"not a png")
    build_report(photos, tmp_path / "report", model=MODEL, layers="conv2,conv3", channels="first3", k=2, device="cpu")
    text = (tmp_path / "report" / "manifest.json").read_text(encoding="utf-8")
    manifest = json.loads(text)
    assert text == json.dumps(manifest, indent=2) + "\n"  # the layout json.dumps gives, byte for byte
    same = top_k(photos, MODEL, layers=["conv2", "conv3"], k=2, channels="first3", device="cpu")
    assert manifest["topk"] == same.to_dict()
    assert [entry["layer"] for entry in manifest["topk"]["layers"]] == ["conv2", "conv3"]
    assert manifest["topk"]["skipped"][0]["image"] == "broken.png"
    assert len(manifest["topk"]["layers"][0]["channels"]["2"]) == 2


def test_every_manifest_starts_with_one_header_and_reads_back(tmp_path: Path) -> None:
    head = header("report")
    assert list(head)[:4] == ["tool", "kind", "schema_version", "created"]
    assert head["tool"] == "deconvviz"
    assert head["schema_version"] == 1
    assert {"deconvviz", "torch", "torchvision", "matplotlib", "python"} <= set(head["versions"])
    assert list(header(stamped=False)) == ["tool", "schema_version"]
    folder = tmp_path / "result"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({**head, "layers": []}))
    assert read_manifest(folder)["kind"] == "report"


def test_a_manifest_of_the_earlier_release_reads_with_its_schema_version(tmp_path: Path) -> None:
    old = tmp_path / "manifest.json"
    old.write_text(json.dumps({"tool": "deconvviz", "schema": 1, "image": "cat.jpg"}))
    data = read_manifest(old)
    assert data["schema_version"] == 1
    assert "schema" not in data
    assert data["image"] == "cat.jpg"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "no manifest at"),
        ("{not json", "is not a readable JSON manifest"),
        ("[1, 2]", "not a JSON object"),
        ('{"tool": "other", "schema_version": 1}', "is not a deconvviz manifest"),
        ('{"tool": "deconvviz"}', "no schema version"),
        ('{"tool": "deconvviz", "schema_version": 99}', "newer than this deconvviz reads"),
    ],
)
def test_what_is_not_a_readable_manifest_is_one_line(tmp_path: Path, content: str | None, words: str) -> None:
    path = tmp_path / "manifest.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ManifestError, match=words) as refused:
        read_manifest(path)
    assert "\n" not in str(refused.value)
