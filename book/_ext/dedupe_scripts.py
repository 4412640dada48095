"""Sphinx extension: each page loads each script once.

jupyter-book 1.0.4 sets sphinx-thebe and sphinx-togglebutton up so that their inline scripts
land twice on every page; the second `const THEBE_JS_URL` is a SyntaxError in the console.
"""

from typing import Any, Dict


def dedupe(app: Any, pagename: str, templatename: str, context: Dict[str, Any],
           doctree: Any) -> None:
    """Drop repeated entries of the page's script list (same file, same inline body)."""
    seen, kept = set(), []
    for script in context.get("script_files", []):
        # the copies differ only in filename None against "" (an inline script either way)
        key = (getattr(script, "filename", script) or "",
               tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


def setup(app: Any) -> Dict[str, Any]:
    app.connect("html-page-context", dedupe, priority=100)  # before any handler that
    # returns a template name: Sphinx stops calling handlers after the first one that does
    return {"parallel_read_safe": True, "parallel_write_safe": True}
