"""Sphinx extension: show the library's docstrings as the plain text they are.

mrtdetr_lib's docstrings are written for `help()` and the source: backticks, shape legends
aligned with spaces, `*` in globs and shapes. Read as reStructuredText they raise errors and
lose their alignment, so the API page shows each one as a preformatted block.
"""

from typing import Any, Dict, List


def as_literal(app: Any, what: str, name: str, obj: Any, options: Any,
               lines: List[str]) -> None:
    """Turn the docstring's lines (in place) into one literal block."""
    if not any(line.strip() for line in lines):
        return
    lines[:] = ["::", ""] + ["   " + line for line in lines] + [""]


def setup(app: Any) -> Dict[str, Any]:
    app.connect("autodoc-process-docstring", as_literal)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
