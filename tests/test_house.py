"""The library's house rules, checked on its source: the core never imports the course helpers,
no import cycles, no project imports hidden in functions, and importing changes nothing global."""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mrtdetr_lib"
# The CLI loads each command's modules when that command runs, so `mrtdetr --help` and a typo in
# `-o` answer without importing paddle: the one place where a function imports our modules.
LAZY_ON_PURPOSE = {"mrtdetr_lib.cli"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The absolute module an ImportFrom names (`from ..data import x` -> `mrtdetr_lib.data`)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path) -> Dict[str, List[str]]:
    """{"top": modules imported at module level, "inner": those imported inside functions}."""
    module, tree = _module_name(path), ast.parse(path.read_text())
    found: Dict[str, List[str]] = {"top": [], "inner": []}
    inner_nodes: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inner_nodes.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, node, path.name == "__init__.py")
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        ours = [n for n in names if n == "mrtdetr_lib" or n.startswith("mrtdetr_lib.")]
        if ours:
            found["inner" if id(node) in inner_nodes else "top"] += ours
    return found


def _sources() -> Dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_no_core_module_imports_the_course_package():
    offenders = {name: [i for i in sum(_imports(path).values(), [])
                        if i.startswith("mrtdetr_lib.course")]
                 for name, path in _sources().items() if not name.startswith("mrtdetr_lib.course")}
    assert not {k: v for k, v in offenders.items() if v}


# Public names of the core that no other core module, script or benchmark uses, kept on purpose:
# tools a user calls (weights.py: the reverse converter; the parameter counter the manifests use).
USER_TOOLS = {"mrtdetr_lib.weights": {"count_parameters", "safetensors_to_pdparams"}}


def test_no_course_only_code_in_the_core():
    """A public function or class of the core is used outside the course: by another core
    module, bench/ or data_scripts/ (notebooks, tests and mrtdetr_lib/course do not count).
    What only the notebooks use lives in mrtdetr_lib/course (tables, figures, timing)."""
    users = [p for name, p in _sources().items() if not name.startswith("mrtdetr_lib.course")]
    users += sorted((ROOT / "bench").glob("*.py")) + sorted((ROOT / "data_scripts").glob("*.py"))
    texts = {path: path.read_text() for path in users}
    unused = {}
    for name, path in _sources().items():
        if name.startswith("mrtdetr_lib.course"):
            continue
        for node in ast.parse(texts[path]).body:
            if (not isinstance(node, (ast.FunctionDef, ast.ClassDef)) or node.name.startswith("_")
                    or node.name in USER_TOOLS.get(name, ())):
                continue
            word = re.compile(rf"\b{node.name}\b")
            if len(word.findall(texts[path])) < 2 and not any(
                    word.search(text) for other, text in texts.items() if other != path):
                unused.setdefault(name, []).append(node.name)
    assert not unused, f"only the course, notebooks or tests use these; move them: {unused}"


def test_no_project_imports_inside_functions():
    inner = {name: _imports(path)["inner"] for name, path in _sources().items()
             if name not in LAZY_ON_PURPOSE}
    assert not {k: v for k, v in inner.items() if v}


def test_no_import_cycles():
    sources = _sources()
    graph = {}
    for name, path in sources.items():
        targets = set()
        for imported in _imports(path)["top"]:
            while imported and imported not in sources:  # `from .x import name` -> module .x
                imported = imported.rpartition(".")[0]
            if imported and imported != name and not name.startswith(imported + "."):
                targets.add(imported)
        graph[name] = targets
    state: Dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: List[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):  # a package importing its own submodules
                continue
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(path + [node, nxt])
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_importing_the_library_changes_nothing_global():
    script = """
import json, os, warnings
import paddle, paddle2onnx, onnx, onnxruntime, scipy.optimize, cv2, pycocotools.coco, tqdm  # theirs
before = (dict(os.environ), list(warnings.filters))
import mrtdetr_lib, mrtdetr_lib.model, mrtdetr_lib.loss, mrtdetr_lib.engine, mrtdetr_lib.export
import mrtdetr_lib.data, mrtdetr_lib.infer, mrtdetr_lib.weights, mrtdetr_lib.viz
after = (dict(os.environ), list(warnings.filters))
print(json.dumps({"env": sorted(set(after[0].items()) ^ set(before[0].items())),
                  "warnings": before[1] == after[1]}))
"""
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("GLOG_minloglevel", "POLYGRAPHY_AUTOINSTALL_DEPS")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["env"] == [] and result["warnings"]


def test_the_course_package_sets_the_process_up():
    script = ("import os, mrtdetr_lib.course; "
              "print(os.environ['GLOG_minloglevel'], os.environ['POLYGRAPHY_AUTOINSTALL_DEPS'])")
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("GLOG_minloglevel", "POLYGRAPHY_AUTOINSTALL_DEPS")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "0"]
