"""Shared test fixtures: the PaddleDetection reference folder, quick mode, small helpers."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MRTDETR_QUICK", "1")
os.environ.setdefault("GLOG_minloglevel", "2")

import mrtdetr_lib  # noqa: E402

mrtdetr_lib.setup()  # a program's start: quiet paddle, every core (or MRTDETR_THREADS)


def load_script(folder: str, name: str):
    """Import <checkout>/<folder>/<name>.py as a module (scripts and benchmarks are not a
    package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_dir() -> Path:
    """The ground-truth folder: env MRTDETR_REFERENCE_DIR, default ../shared/reference."""
    return Path(os.environ.get("MRTDETR_REFERENCE_DIR", ROOT.parent / "shared" / "reference"))


@pytest.fixture(scope="session")
def ref_dir() -> Path:
    """The reference folder, or a skip that says where it was looked for."""
    path = reference_dir()
    if not (path / "refweights.py").is_file():
        pytest.skip(f"PaddleDetection reference fixtures not found in {path} "
                    "(set MRTDETR_REFERENCE_DIR)")
    return path


@pytest.fixture(scope="session")
def refweights(ref_dir):
    """The reference's numpy-only weight generator module (refweights.py)."""
    sys.path.insert(0, str(ref_dir))
    try:
        import refweights as module
    finally:
        sys.path.pop(0)
    return module


def tiny_shapes_config(folder: Path, num_train: int, num_val: int, size: int):
    """The `tiny` Config on a fresh small shapes data set in `folder`, evaluated at size x size."""
    from mrtdetr_lib.data.shapes import make_shapes

    make_shapes(str(folder), num_train, num_val, image_size=size, progress=False)
    cfg = mrtdetr_lib.get_config("tiny")
    cfg.model.eval_size = (size, size)
    cfg.data.dataset_dir = str(folder)
    return cfg
