"""bench/bench_backend_ap.py: every backend scored against eager on unseen shapes images."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_backend_ap  # noqa: E402


def test_a_small_run_scores_each_backend_against_eager(capsys):
    assert bench_backend_ap.main(["--val", "4", "--calibration", "2", "--samples", "20",
                                  "--backends", "eager", "ort_fp32", "ort_int8"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["backend"] for line in lines] == ["eager", "ort_fp32", "ort_int8"]
    eager, fp32, int8 = lines
    assert eager["mask_AP"] > 30 and eager["box_difference"] == 0 and eager["within"]
    assert abs(fp32["mask_difference"]) < 0.1 and fp32["within"]  # the same computation
    assert int8["box_low"] <= int8["box_difference"] <= int8["box_high"]
    assert {line["seed"] for line in lines} == {7} and "onnxruntime" in int8["versions"]
