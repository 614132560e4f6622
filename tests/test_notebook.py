"""The README's notebook examples, executed in a real Jupyter kernel: every result shows as a picture or HTML.

No ``%matplotlib inline`` and no pyplot: a returned figure, a projection, a top-k result and an analysis result
must each display themselves.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

TESTS = Path(__file__).resolve().parent

SETUP = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
import numpy as np
from PIL import Image
from conftest import register_tiny_model
import deconvviz as dv

register_tiny_model("tiny-notebook")
photos = Path({folder!r})
for i in range(3):
    pixels = np.random.default_rng(i).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(photos / f"photo{{i}}.png")
photo = str(photos / "photo0.png")
"""

# (cell, the display it must produce); each mirrors a README example with the tiny model standing in
CELLS = [
    ('p = dv.visualize(photo, model="tiny-notebook", layer="conv3", top=3)\np', "image/png"),
    ("fig, axes = p.figure(crop=True)\nfig", "image/png"),
    ("p.to_pil(0)", "image/png"),
    ('result = dv.top_k(str(photos), "tiny-notebook", layers=["conv3"], k=2, channels="first3")\nresult', "text/html"),
    ('fig, axes = result.figure("conv3", result.channels("conv3")[0])\nfig', "image/png"),
    ('r = dv.occlusion(photo, model="tiny-notebook", occluder=8, stride=8)\nr', "image/png"),
    ("fig, axes = r.figure()\nfig", "image/png"),
    ('s = dv.sanity(photo, model="tiny-notebook", layer="conv2")\ns', "image/png"),
]


@pytest.mark.slow  # starts a Jupyter kernel that imports torch: some 10-20 s
def test_every_readme_notebook_example_displays_as_a_picture_or_html(tmp_path: Path) -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(textwrap.dedent(SETUP.format(folder=str(tmp_path), tests=str(TESTS))))]
    notebook.cells += [nbformat.v4.new_code_cell(source) for source, _ in CELLS]
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {}})
    client.execute(cwd=str(tmp_path))
    for cell, (source, wanted) in zip(notebook.cells[1:], CELLS, strict=True):
        shown = [o for o in cell.outputs if o.output_type in ("execute_result", "display_data")]
        errors = [o for o in cell.outputs if o.output_type == "error"]
        assert not errors, f"{source!r} failed: {errors[0].get('ename')}: {errors[0].get('evalue')}"
        assert shown, f"{source!r} displayed nothing"
        kinds = set(shown[-1].data)
        assert wanted in kinds, f"{source!r} displayed {sorted(kinds)}, not {wanted}"
