"""The set-up files agree: environment*.yml carry exactly pyproject.toml's pins."""

import re

import tomllib
from conftest import ROOT


def _pins(lines):
    return {m.group(1).lower(): m.group(2) for m in
            (re.match(r"\s*-?\s*([A-Za-z0-9_.\-]+)==([^\s#]+)", line) for line in lines) if m}


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _pins(project["dependencies"] + project["optional-dependencies"]["dev"])
    cpu = _pins((ROOT / "environment.yml").read_text().splitlines())
    assert cpu == wanted
    gpu = _pins((ROOT / "environment-gpu.yml").read_text().splitlines())
    assert gpu.pop("paddlepaddle-gpu") == wanted["paddlepaddle"]
    gpu.pop("tensorrt-cu12")  # GPU only; the TensorRT code uses paddle GPU tensors, no pycuda
    assert gpu == {k: v for k, v in wanted.items() if k != "paddlepaddle"}


def test_lock_file_agrees_with_pins():
    lock = _pins((ROOT / "requirements-lock.txt").read_text().splitlines())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    norm = {re.sub(r"[-_.]+", "-", k): v for k, v in lock.items()}
    for name, version in _pins(project["dependencies"]).items():
        assert norm.get(re.sub(r"[-_.]+", "-", name)) == version, name
