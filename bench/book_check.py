"""A real-browser check of the course book (`make book`): every page in headless Chromium.

    python bench/book_check.py [--html build/book/_build/html]

Serves the built site on 127.0.0.1 (a free port), opens every page in Debian's chromium through
chromedriver (selenium) and checks, per page: every picture loaded (and a chapter shows as many
as its notebook has image outputs, so chapter 04's static explorer view is there), every link
inside the site points to a page that exists (and to an anchor that exists on it), and the
browser console logged no error. Then the search page must find `HungarianMatcher`, and the API
page must document `mrtdetr_lib.model.detr.build_model`. `make book-check` installs chromium
first. Exit status 0 when every check passes, 1 with one line per problem.
"""

import argparse
import functools
import http.server
import json
import re
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional
from urllib.parse import unquote, urldefrag, urlparse

from browser_check import CheckFailed, free_port, start_browser, wait_for

ROOT = Path(__file__).resolve().parents[1]
IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml")
# what the page saw: its pictures (loaded or not) and the targets of its links
PAGE_STATE = r"""
return {
  images: [...document.images].map(i => ({src: i.getAttribute('src'),
                                          loaded: i.complete && i.naturalWidth > 0})),
  links: [...document.querySelectorAll('a[href]')].map(a => a.href),
};
"""


def serve(html: Path) -> tuple:
    """A quiet HTTP server on a free port over `html`, in a thread; returns (server, base URL)."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # one line per file would drown the report
            pass

    port = free_port()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", port), functools.partial(Quiet, directory=str(html)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{port}/"


def notebook_images(html: Path) -> Dict[str, int]:
    """Per chapter page (NN_name.html), the number of image outputs in its notebook source."""
    counts = {}
    for source in (html / "_sources").glob("[0-9][0-9]_*.ipynb"):
        cells = json.loads(source.read_text(encoding="utf-8"))["cells"]
        counts[source.stem + ".html"] = sum(
            any(m in o.get("data", {}) for m in IMAGE_MIMES)
            for c in cells if c["cell_type"] == "code" for o in c["outputs"])
    return counts


def anchors(page: Path) -> set:
    """The ids a page defines (what a #fragment may point to)."""
    return set(re.findall(r'\sid="([^"]+)"', page.read_text(encoding="utf-8")))


def broken_links(links: List[str], base: str, html: Path) -> List[str]:
    """The links into the site whose page or anchor does not exist."""
    host = urlparse(base).netloc
    problems, ids = [], {}
    for link in links:
        url, fragment = urldefrag(link)
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or parsed.netloc != host:
            continue  # outside the site (mailto:, another host): not ours to check offline
        path = unquote(parsed.path.lstrip("/")) or "index.html"
        target = html / path
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            problems.append(f"{link}: no such page")
        elif fragment and target.suffix == ".html":
            if target not in ids:
                ids[target] = anchors(target)
            if fragment not in ids[target]:
                problems.append(f"{link}: no anchor #{fragment} on {path}")
    return sorted(set(problems))


def console_errors(browser: Any) -> List[str]:
    """Errors the console logged since the last call."""
    return [entry["message"] for entry in browser.get_log("browser")
            if entry["level"] == "SEVERE"]


def check_page(browser: Any, base: str, html: Path, name: str,
               expected_images: Optional[int]) -> List[str]:
    """Load one page; the problems found on it."""
    browser.get(base + name)
    wait_for(lambda: browser.execute_script("return document.readyState") == "complete",
             30, f"{name} to load")
    try:  # pictures load after readyState on a slow machine: give them a moment
        wait_for(lambda: browser.execute_script(
            "return [...document.images].every(i => i.complete)"), 20, f"{name}'s pictures")
    except CheckFailed:
        pass  # the count below names the ones that did not load
    state = browser.execute_script(PAGE_STATE)
    problems = [f"{name}: console: {m}" for m in console_errors(browser)]
    problems += [f"{name}: picture {i['src']} did not load" for i in state["images"]
                 if not i["loaded"]]
    shown = len(state["images"])
    if expected_images is not None and shown < expected_images:
        problems.append(f"{name}: {shown} pictures, its notebook has {expected_images}")
    problems += [f"{name}: {p}" for p in broken_links(state["links"], base, html)]
    return problems


def check_search(browser: Any, base: str) -> List[str]:
    """The search page finds a class of the library by name."""
    browser.get(base + "search.html?q=HungarianMatcher")
    try:
        wait_for(lambda: browser.execute_script(
            "return document.querySelectorAll('#search-results li').length") or None,
            30, "search results for HungarianMatcher")
    except CheckFailed as err:
        return [f"search.html: {err}"]
    return [f"search.html: console: {m}" for m in console_errors(browser)]


def check(html: Path) -> List[str]:
    """Every check on the built site; the problems found (empty: all good)."""
    if not (html / "index.html").is_file():
        raise CheckFailed(f"{html}: no index.html; build the book first (make book)")
    expected = notebook_images(html)
    pages = sorted(p.name for p in html.glob("*.html"))
    server, base = serve(html)
    problems: List[str] = []
    with tempfile.TemporaryDirectory(prefix="book_check_") as tmp:
        browser = start_browser(Path(tmp))
        try:
            for name in pages:
                problems += check_page(browser, base, html, name, expected.get(name))
            problems += check_search(browser, base)
            if 'id="mrtdetr_lib.model.detr.build_model"' not in (html / "api.html").read_text(
                    encoding="utf-8"):
                problems.append("api.html: build_model is not documented")
        finally:
            browser.quit()
            server.shutdown()
    print(f"{len(pages)} pages, {sum(expected.values())} notebook pictures checked")
    return problems


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", type=Path, default=ROOT / "build" / "book" / "_build" / "html",
                        help="the built site (make book)")
    args = parser.parse_args(argv)
    start = time.time()
    try:
        problems = check(args.html)
    except CheckFailed as err:
        print(f"book check failed: {err}")
        return 1
    for problem in problems:
        print(problem)
    print(f"book check {'failed' if problems else 'passed'} in {time.time() - start:.0f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
