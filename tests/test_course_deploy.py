"""Chapter 06's backend comparison: four CPU backends from one export of a tiny random model,
scored on three shapes images, timed, and the int8 graph described."""

import inspect
from pathlib import Path

import numpy as np
import paddle
import pytest
from conftest import tiny_shapes_config

import mrtdetr_lib as mrt
from mrtdetr_lib.course.deploy import (
    build_backends,
    compare_backends,
    detections,
    latency_rows,
    markdown_backends,
    markdown_latency,
    plot_latency_bars,
    quantization_report,
)
from mrtdetr_lib.data import build_loader, preprocess, read_image


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    cfg = tiny_shapes_config(folder, num_train=2, num_val=3, size=96)
    paddle.seed(0)
    model = mrt.build_model(cfg.model)
    model.eval()
    images = sorted((folder / "val").iterdir())
    predictors, files = build_backends(model, folder / "exports", "tiny", batch=1,
                                       calibration_images=images)
    return cfg, model, images, predictors, files


def test_every_backend_is_built_and_agrees_with_eager(setup):
    cfg, model, images, predictors, files = setup
    assert list(predictors) == ["eager", "paddle_inference", "ort_fp32", "ort_int8"]
    assert inspect.ismethod(model.forward)  # a copy was traced: the model stays eager
    assert files["paddle_inference"].is_dir() and files["ort_int8"].suffix == ".onnx"
    assert Path(str(files["ort_fp32"]).replace(".onnx", ".log")).is_file()  # converter chatter
    feeds = preprocess(read_image(str(images[0])), (96, 96))
    eager = predictors["eager"](feeds)
    for backend in ("paddle_inference", "ort_fp32", "ort_int8"):
        out = predictors[backend](feeds)
        assert out["bbox"].shape == eager["bbox"].shape
        assert out["mask"].shape == eager["mask"].shape
    np.testing.assert_allclose(predictors["paddle_inference"](feeds)["bbox"], eager["bbox"],
                               atol=1e-4)
    with pytest.raises(ValueError, match="unknown backend"):
        build_backends(model, "unused", backends=["trt"])


def test_compare_backends_scores_each_against_eager(setup):
    cfg, _, _, predictors, _ = setup
    rows = compare_backends(predictors, build_loader(cfg, "val", num_workers=0), samples=50)
    assert [r["backend"] for r in rows] == list(predictors)
    eager, paddle_inference, ort_fp32, _ = rows
    assert eager["mask_difference"] == eager["mask_low"] == eager["mask_high"] == 0
    assert paddle_inference["mask_AP"] == pytest.approx(eager["mask_AP"], abs=1e-3)
    assert ort_fp32["box_AP"] == pytest.approx(eager["box_AP"], abs=1e-3)
    for row in rows:
        assert 0 <= row["mask_AP"] <= 1 and row["mask_low"] <= row["mask_high"]
    table = markdown_backends(rows)
    assert table.splitlines()[0].startswith("| Backend | Box AP | Mask AP |")
    assert "| ONNX Runtime int8 |" in table


def test_latency_rows_table_and_bars(setup):
    _, _, images, predictors, _ = setup
    feeds = {1: preprocess(read_image(str(images[0])), (96, 96))}
    chosen = {("eager", 1): predictors["eager"], ("ort_fp32", 1): predictors["ort_fp32"]}
    rows = latency_rows(chosen, feeds, runs=3, warmup=1)
    assert [(r["backend"], r["batch"]) for r in rows] == [("eager", 1), ("ort_fp32", 1)]
    for row in rows:
        assert row["latency_q25_ms"] <= row["latency_ms"] <= row["latency_q75_ms"]
        assert row["ms_per_image"] == row["latency_ms"]
    assert "| ONNX Runtime fp32 | 1 |" in markdown_latency(rows)
    ax = plot_latency_bars(rows + [{**rows[0], "batch": 2}, {**rows[1], "batch": 2}])
    assert len(ax.patches) == 4 and "(ms)" in ax.get_ylabel()


def test_quantization_report_counts_the_qdq_graph(setup):
    *_, files = setup
    report = quantization_report(files["ort_fp32"], files["ort_int8"])
    assert report["quantize"] > 0 and report["dequantize"] > 0
    assert "Conv" in report["qdq_inputs_of"]
    assert report["int8_kernels"].get("QLinearConv", 0) > 0
    assert report["int8_kernels"]["QLinearConv"] <= report["conv_fp32"]
    assert report["int8_MB"] < report["fp32_MB"]


def test_detections_keep_the_confident_ones():
    outputs = {"bbox": np.array([[1, 0.9, 2, 0, 4, 4], [0, 0.2, 1, 1, 3, 3],
                                 [0, 0.6, 3, 1, 4, 4], [1, 0.7, 0, 0, 1, 1]], "float32"),
               "bbox_num": np.array([4], "int32"),
               "mask": np.arange(4).reshape(4, 1, 1) * np.ones((4, 5, 5), "int32")}
    kept = detections(outputs, 0.5)
    assert kept["labels"].tolist() == [0, 1, 1]  # by class, then left to right
    assert kept["boxes"][:, 0].tolist() == [3, 0, 2] and kept["scores"].tolist() == [
        pytest.approx(0.6), pytest.approx(0.7), pytest.approx(0.9)]
    assert kept["masks"].dtype == bool and kept["masks"].shape == (3, 5, 5)
    assert kept["masks"][:, 0, 0].tolist() == [True, True, False]  # masks follow their rows
