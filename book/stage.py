"""Lay out the book's sources for Jupyter Book: config, intro, the notebooks, the API page.

`make book` runs this, then `jupyter-book build` on the folder it fills. Nothing is executed:
the notebooks are copied with their outputs, less the live widgets' outputs (an ipywidgets view
needs a kernel; chapter 04 shows the explorer's static picture right below it, and a page
without widget JavaScript loads nothing from a CDN). The table of contents lists every numbered
notebook in notebooks/ (a new chapter appears by itself), and the API page lists every module
of mrtdetr_lib for sphinx autodoc, so neither goes stale.
"""

import argparse
import json
import pkgutil
import shutil
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def chapters(notebooks: Path) -> List[Path]:
    """The course's numbered notebooks (00_quickstart.ipynb, ...), in order."""
    found = sorted(p for p in notebooks.glob("[0-9][0-9]_*.ipynb"))
    if not found:
        raise FileNotFoundError(f"{notebooks}: no numbered notebook (NN_name.ipynb) to build")
    return found


def without_widgets(notebook: dict) -> dict:
    """The notebook less its ipywidgets views and their saved state (they need a kernel)."""
    notebook["metadata"].pop("widgets", None)
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"] = [o for o in cell["outputs"]
                               if WIDGET_VIEW not in o.get("data", {})]
    return notebook


def chapter_list(notebooks: List[Path]) -> str:
    """A markdown list linking every chapter by the title of its first heading."""
    lines = []
    for path in notebooks:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        heading = next((line for c in cells if c["cell_type"] == "markdown"
                        for line in "".join(c["source"]).splitlines() if line.startswith("# ")),
                       f"# {path.stem}")
        lines.append(f"- [{heading[2:].strip()}]({path.name})")
    return "\n".join(lines)


def toc(names: List[str]) -> str:
    """_toc.yml: the intro, the chapters, then the API reference."""
    lines = ["format: jb-book", "root: intro", "parts:", "  - caption: The course",
             "    chapters:"]
    lines += [f"      - file: {name}" for name in names]
    lines += ["  - caption: The library", "    chapters:", "      - file: api"]
    return "\n".join(lines) + "\n"


def modules() -> List[str]:
    """Every module of mrtdetr_lib, packages first in each folder, found without importing."""
    package = ROOT / "mrtdetr_lib"
    names = ["mrtdetr_lib"]
    for info in pkgutil.walk_packages([str(package)], prefix="mrtdetr_lib."):
        if not info.name.split(".")[-1].startswith("_"):
            names.append(info.name)
    return names


def api_page(names: List[str]) -> str:
    """api.md: one autodoc section per module (members with a docstring, in source order)."""
    parts = ["# API reference", "",
             "Every module of `mrtdetr_lib`, from its docstrings (sphinx autodoc). The chapters "
             "say where each idea is taught; `import mrtdetr_lib as mrt` is the one import.", ""]
    for name in names:
        parts += [f"## `{name}`", "", "```{eval-rst}", f".. automodule:: {name}",
                  "   :members:", "```", ""]
    return "\n".join(parts)


def stage(out: Path) -> None:
    """Fill `out` with everything `jupyter-book build` reads."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in ("_config.yml", "favicon.png"):
        shutil.copy(BOOK / name, out / name)
    shutil.copytree(BOOK / "_ext", out / "_ext")
    notebooks = chapters(ROOT / "notebooks")
    for path in notebooks:
        notebook = without_widgets(json.loads(path.read_text(encoding="utf-8")))
        (out / path.name).write_text(json.dumps(notebook, indent=1, ensure_ascii=False),
                                     encoding="utf-8")
    (out / "_toc.yml").write_text(toc([p.stem for p in notebooks]))
    intro = (BOOK / "intro.md").read_text(encoding="utf-8")
    (out / "intro.md").write_text(intro.replace("CHAPTERS", chapter_list(notebooks)),
                                  encoding="utf-8")
    (out / "api.md").write_text(api_page(modules()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "book_src",
                        help="the folder to fill (emptied first)")
    stage(parser.parse_args().out)


if __name__ == "__main__":
    main()
