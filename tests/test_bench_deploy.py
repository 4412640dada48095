"""bench/bench_deploy.py: the OpenVINO backend beside ONNX Runtime, timed interleaved, every
line with the latency protocol."""

import json
import sys
from pathlib import Path

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
