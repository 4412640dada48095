"""The course book's sources (book/stage.py) and the folded solutions of the notebooks."""

import json
import re

from conftest import ROOT, load_script

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _notebooks():
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_stage_lists_every_chapter_and_module(tmp_path):
    stage = load_script("book", "stage")
    stage.stage(tmp_path / "src")
    toc = (tmp_path / "src" / "_toc.yml").read_text()
    chapters = re.findall(r"- file: (\S+)", toc)
    assert chapters == [p.stem for p in _notebooks()] + ["api"]
    api = (tmp_path / "src" / "api.md").read_text()
    documented = re.findall(r"\.\. automodule:: (\S+)", api)
    for module in ("mrtdetr_lib", "mrtdetr_lib.model.detr", "mrtdetr_lib.loss.matcher",
                   "mrtdetr_lib.course.query_study", "mrtdetr_lib.export.onnx"):
        assert module in documented
    assert not [m for m in documented if m.split(".")[-1].startswith("_")]  # no private module
    for name in ("_config.yml", "intro.md", "favicon.png", "_ext/dedupe_scripts.py"):
        assert (tmp_path / "src" / name).is_file(), name
    intro = (tmp_path / "src" / "intro.md").read_text()  # every chapter linked by its title
    assert "CHAPTERS" not in intro
    assert [link for link in re.findall(r"\]\((\S+\.ipynb)\)", intro)] == [
        p.name for p in _notebooks()]


def test_stage_drops_live_widgets_and_keeps_the_static_view(tmp_path):
    stage = load_script("book", "stage")
    stage.stage(tmp_path / "src")
    committed = json.loads((ROOT / "notebooks" / "04_evaluation.ipynb").read_text())
    staged = json.loads((tmp_path / "src" / "04_evaluation.ipynb").read_text())

    def outputs(notebook, mime):
        return [i for i, c in enumerate(notebook["cells"]) if c["cell_type"] == "code"
                for o in c["outputs"] if mime in o.get("data", {})]

    widget_cells = outputs(committed, WIDGET_VIEW)
    assert widget_cells, "chapter 04 no longer shows the explorer: update this test"
    assert outputs(staged, WIDGET_VIEW) == [] and "widgets" not in staged["metadata"]
    # the explorer's static picture, in the same cell, stays
    assert set(widget_cells) <= set(outputs(staged, "image/jpeg") + outputs(staged, "image/png"))
    assert len(staged["cells"]) == len(committed["cells"])


def test_every_solution_is_folded():
    for path in _notebooks():
        cells = json.loads(path.read_text())["cells"]
        start = next(i for i, c in enumerate(cells) if c["cell_type"] == "markdown"
                     and re.search(r"^#+ Exercises", "".join(c["source"]), re.M))
        for index, cell in enumerate(cells[start + 1:], start + 1):
            if cell["cell_type"] != "code":
                continue
            hidden = cell["metadata"].get("jupyter", {})
            assert hidden.get("source_hidden") and hidden.get("outputs_hidden"), (path.name, index)
            assert "hide-cell" in cell["metadata"].get("tags", []), (path.name, index)
