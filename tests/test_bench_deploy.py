"""bench/bench_deploy.py: the OpenVINO backend beside ONNX Runtime, timed interleaved, every
line with the latency protocol."""

import json
import sys
from pathlib import Path

import pytest

from mrtdetr_lib.errors import UserError
from mrtdetr_lib.export.openvino import OpenVinoPredictor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_deploy  # noqa: E402


def test_quick_run_prints_protocol_lines(capsys):
    assert bench_deploy.main(["--quick", "--backends", "ort", "openvino", "--runs", "3",
                              "--threads", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["backend"] for line in lines] == ["ort", "openvino"]
    for line in lines:
        # one runtime's backends take turns; runtimes are timed one after the other
        assert line["interleaved"] == [line["backend"]] and line["runs"] == 3
        assert line["q25_ms"] <= line["median_ms"] <= line["q75_ms"]
        assert line["machine"]["threads"] == 1 and "openvino" in line["versions"]


def test_profile_lines_name_the_slowest_nodes(capsys, tmp_path):
    assert bench_deploy.main(["--quick", "--backends", "openvino", "--runs", "2", "--threads",
                              "1", "--profile", "--exports", str(tmp_path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    timed, profile = lines
    assert timed["backend"] == "openvino" and profile["profile"] == "openvino"
    slowest = profile["slowest"]
    assert slowest and all({"node", "type", "kernel", "ms"} <= set(row) for row in slowest)
    assert [row["ms"] for row in slowest] == sorted((row["ms"] for row in slowest), reverse=True)
    # no comparison with the timed median: the profile runs later, and times are not asserted
    by_type = list(profile["by_type_ms"].values())
    assert profile["sum_ms"] > 0 and by_type == sorted(by_type, reverse=True)
    assert sum(by_type) <= profile["sum_ms"] + 0.1 * len(by_type)  # each rounded to 0.1
    onnx_path = next(tmp_path.glob("*.onnx"))
    with pytest.raises(UserError, match="profile=True"):
        OpenVinoPredictor(onnx_path, threads=1).node_times({})
