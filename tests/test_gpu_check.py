"""The prepared GPU check (benchmarks/gpu_check.py): one line without CUDA; the tiny CPU mode writes its table."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_without_cuda_the_check_stops_in_one_line(check: ModuleType, monkeypatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    assert check.main(["--device", "cuda", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("gpu-check: no CUDA device: torch.cuda.is_available() is false")
    assert "make gpu-check-cpu" in lines[0]
    assert not out.exists()  # nothing half-written


def test_a_gpu_index_out_of_range_stops_in_one_line(check: ModuleType, monkeypatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    out = tmp_path / "out"
    assert check.main(["--device", "cuda:1", "--out", str(out)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "gpu-check: no device cuda:1: torch sees 1 CUDA device(s); give --device cuda or cuda:N with N below that"
    ]
    assert not out.exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_gpu_check_without_cuda_fails_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU for this process, even on a machine that has one
    done = subprocess.run(
        ["make", "--no-print-directory", "gpu-check", f"GPU_PYTHON={sys.executable}", f"OUT={tmp_path / 'out'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    # make adds its own "make: *** ... Error 2" (or "make[1]: ..." under another make) after the recipe's line
    ours = [line for line in done.stderr.splitlines() if not re.match(r"make(\[\d+\])?: ", line)]
    assert len(ours) == 1, done.stderr
    assert ours[0].startswith("gpu-check: no CUDA device")
    assert done.stdout == ""
    assert not (tmp_path / "out").exists()


def test_junit_outcomes_are_pooled_by_test_and_failures_count(check: ModuleType, tmp_path: Path) -> None:
    xml = tmp_path / "r.xml"
    xml.write_text(
        """<?xml version="1.0"?><testsuites><testsuite>
        <testcase classname="t" name="test_streaming_top_k_equals_the_cpu_brute_force[cuda]" time="1.5"/>
        <testcase classname="tests.test_devices" name="test_every_layer_projects_as_on_the_cpu[cuda-guided-concat]"
                  time="0.5"><failure message="AssertionError: relative error 3e-02&#10;more">trace</failure></testcase>
        <testcase classname="tests.test_devices" name="test_every_layer_projects_as_on_the_cpu[cuda-gradient-concat]"
                  time="0.25"/>
        <testcase classname="tests.test_devices" name="test_two_processes_on_one_device_give_the_one_process_hits[cuda]"
                  time="9"><properties><property name="backend" value="gloo; NCCL failed"/></properties></testcase>
        </testsuite></testsuites>"""
    )
    checks = {c.test: c for c in check.parse_junit(xml)}
    layers = checks["test_every_layer_projects_as_on_the_cpu"]
    assert (layers.passed, layers.failed, layers.seconds) == (1, 1, 0.75)
    assert layers.failures == [
        "test_every_layer_projects_as_on_the_cpu[cuda-guided-concat]: AssertionError: relative error 3e-02"
    ]
    assert checks["test_two_processes_on_one_device_give_the_one_process_hits"].notes == ["backend: gloo; NCCL failed"]
    text = check.table({"device": "cuda", "torch": "2", "gpu": "GPU"}, list(checks.values()), [], "CUDA events")
    assert "| FAILED 1/2 |" in text
    assert "PASSED 1/1; backend: gloo; NCCL failed" in text


def _markdown_rows(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("|")]


@pytest.mark.slow  # builds two small nets and times every pipeline: some 10-20 s on a busy 2-core machine
def test_tiny_speed_part_writes_the_table_and_the_json(check: ModuleType, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert check.main(["--device", "cpu", "--tiny", "--skip-correctness", "--out", str(out)]) == 0
    text = (out / "gpu-check.md").read_text()
    assert text in capsys.readouterr().out  # the table is printed as written
    record = json.loads((out / "gpu-check.json").read_text())
    assert record["device"] == "cpu"
    assert record["tiny"] is True
    assert record["busy clock"] == "host timers"
    assert record["problems"] == []
    sections = [row["section"] for row in record["speed"]]
    assert sections.count("scan") == 4  # two nets: scan vs forward read from files, and vs resident
    assert sections.count("projection") == 2
    assert sections.count("occlusion") == 2
    assert sections.count("report") == 3  # scan, project, write
    for row in record["speed"]:
        assert row["value"] > 0, row
        assert 0 <= row["busy"] <= 1.05, row
        if row["against"]:
            assert row["baseline"] > 0
            assert row["ratio"] == pytest.approx(row["value"] / row["baseline"])
    rows = _markdown_rows(text)
    assert rows[0][:4] == ["check", "measured", "against", "ratio"]
    assert len(rows) == 2 + len(record["speed"])  # header, rule, one line per measured row


@pytest.mark.slow  # the device tests on the CPU in a fresh pytest: some 15-40 s on a busy 2-core machine
def test_tiny_correctness_part_runs_the_device_tests_on_the_cpu(check: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert check.main(["--device", "cpu", "--tiny", "--skip-speed", "--out", str(out)]) == 0
    record = json.loads((out / "gpu-check.json").read_text())
    tested = {c["test"]: c for c in record["correctness"]}
    assert set(tested) == set(check.TESTS) - {"test_two_processes_on_one_device_give_the_one_process_hits"}
    assert all(c["failed"] == 0 and c["passed"] > 0 for c in tested.values())
    assert record["problems"] == []
    assert (out / "correctness.xml").exists()
    text = (out / "gpu-check.md").read_text()
    assert text.count("| correctness: ") == len(tested)
    assert "FAILED" not in text
