"""The latency protocol: every timing line says the machine, the libraries, how many runs and
their spread; check_trt.py's trtexec line uses TensorRT 10's flags."""

import sys
from pathlib import Path

from mrtdetr_lib.export.benchmark import latency_record, machine, versions

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import check_trt  # noqa: E402


def test_a_record_has_median_iqr_counts_machine_and_versions():
    record = latency_record([0.1, 0.2, 0.3, 0.4, 0.5], warmup=2, threads=2)
    assert record["median_ms"] == 300.0 and record["q25_ms"] == 200.0
    assert record["q75_ms"] == 400.0 and record["iqr_ms"] == 200.0
    assert record["warmup"] == 2 and record["runs"] == 5
    assert record["machine"]["threads"] == 2 and record["machine"]["cores"] >= 1
    assert record["machine"]["cpu"]  # /proc/cpuinfo's model name on Linux
    assert {"paddlepaddle", "onnxruntime", "openvino"} <= set(versions())
    assert machine()["threads"] == machine()["cores"]  # 0: every core


def test_trtexec_command_uses_tensorrt_10_flags():
    command = check_trt.trtexec_command(Path("exports/l_b1.onnx"), 200, 1000)
    assert "--memPoolSize=workspace:4096" in command and "--workspace" not in command
    assert "--fp16" in command and "--avgRuns=1000" in command
