"""nbval only honours a marker comment that is alone on its line (`# NBVAL_IGNORE_OUTPUT`):
`# NBVAL_IGNORE_OUTPUT: why` is read as an ordinary comment, and the cell is compared."""

import json
from pathlib import Path

import pytest

MARKERS = ("NBVAL_IGNORE_OUTPUT", "NBVAL_SKIP", "NBVAL_CHECK_OUTPUT", "NBVAL_RAISES_EXCEPTION")
NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_every_nbval_marker_is_alone_on_its_line(notebook):
    bad = []
    for index, cell in enumerate(json.loads(notebook.read_text())["cells"]):
        if cell["cell_type"] != "code":
            continue
        for line in "".join(cell["source"]).splitlines():
            if "NBVAL" in line and line.strip().lstrip("#").strip() not in MARKERS:
                bad.append((index, line))
    assert not bad, f"{notebook.name}: put the marker on a line of its own: {bad}"
