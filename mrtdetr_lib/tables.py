"""Rows of dicts as a text table: fixed-width columns to print, or markdown for a notebook's
Markdown output and a README. The one table formatter of the library and the course."""

from typing import Any, Dict, Optional, Sequence


def _cell(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def format_table(rows: Sequence[Dict[str, Any]], columns: Optional[Sequence[str]] = None,
                 digits: int = 3, markdown: bool = False) -> str:
    """Rows of equal keys -> a table of `columns` (default: the first row's keys), floats rounded
    to `digits`: fixed-width (first column left-aligned, the others right-aligned, no trailing
    spaces) or, with `markdown`, a markdown table with centred columns."""
    columns = list(rows[0]) if columns is None else list(columns)
    cells = [[_cell(row[c], digits) for c in columns] for row in rows]
    if markdown:
        header = ["| " + " | ".join(columns) + " |", "|" + "|".join(":---:" for _ in columns) + "|"]
        return "\n".join(header + ["| " + " | ".join(line) + " |" for line in cells])
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
    return "\n".join("  ".join(cell.rjust(w) if i else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(line, widths))).rstrip()
                     for line in [columns] + cells)
