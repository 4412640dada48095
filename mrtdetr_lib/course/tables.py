"""Tables for the course: rows of dicts as text (fixed-width columns to print, or markdown for
a notebook's Markdown output and a README), and COCO AP split by class. Taught in
notebooks/04_evaluation.ipynb."""

from typing import Any, Dict, List, Optional, Sequence

import numpy as np


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


def _mean_valid(values: np.ndarray) -> float:
    """Mean over the entries COCOeval filled (-1 = class without ground truth): NaN if none."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else float("nan")


def per_class_table(metrics: Dict[str, dict]) -> List[Dict[str, Any]]:
    """One row per class: {"class", "bbox_AP", "bbox_AP50", "bbox_AP75", "mask_AP", ...} from
    `accumulate()`'s precision [T,R,K] (AP averages IoU 0.5:0.95; AP50 / AP75 one IoU each)."""
    names = list(next(iter(metrics.values()))["per_class_ap"])
    rows = [{"class": name} for name in names]
    for key, result in metrics.items():
        precision = result["precision"]
        for k, row in enumerate(rows):
            if precision is None:  # no detections at all
                row.update({f"{key}_AP": 0.0, f"{key}_AP50": 0.0, f"{key}_AP75": 0.0})
                continue
            row[f"{key}_AP"] = _mean_valid(precision[:, :, k])
            row[f"{key}_AP50"] = _mean_valid(precision[0, :, k])  # thresholds 0.50, 0.55, ...
            row[f"{key}_AP75"] = _mean_valid(precision[5, :, k])
    return rows
