"""Int8 ONNX: the quantised tiny model runs, stores int8 weights, and stays close to fp32.

With random weights the tiny model's boxes nearly all cover the image and its scores lie within
~1e-3 of each other, so "close" here is: same detection count, sorted scores within 1e-3
(measured: 2.8e-4 static, 2.2e-4 dynamic), at least 90% of detections with an fp32 one of the
same label and box within 1 px (measured: 49 and 50 of 50; int8 noise reorders near-ties), at
most 5% of mask pixels flipped (measured: 0.9% static, 1.2% dynamic). The accuracy that matters,
mask AP of a trained model, is measured by bench/bench_quantize.py.
"""

import numpy as np
import onnx
import paddle
import pytest

import mrtdetr_lib as mrt
from mrtdetr_lib.export import OnnxPredictor, calibration_inputs, export_onnx, quantize_onnx
from mrtdetr_lib.export.quantize import activation_products


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory):
    paddle.seed(0)
    model = mrt.build_model("tiny", eval_size=(128, 128))
    model.eval()
    return export_onnx(model, tmp_path_factory.mktemp("quantize"), "tiny", batch=1)


def _images(count, seed, size=(160, 200)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]


def _int8_weights(path):
    return [t.name for t in onnx.load(str(path)).graph.initializer
            if t.data_type == onnx.TensorProto.INT8]


def _assert_close(ours, ref):
    """Random-weight scores lie within ~1e-3 of each other, so int8 noise (~3e-4) reorders
    near-ties and can swap one at the top-k cut: rows are matched, not compared in order."""
    np.testing.assert_array_equal(ours["bbox_num"], ref["bbox_num"])
    np.testing.assert_allclose(np.sort(ours["bbox"][:, 1]), np.sort(ref["bbox"][:, 1]), atol=1e-3)
    matched = [np.any((ref["bbox"][:, 0] == row[0])
                      & (np.abs(ref["bbox"][:, 2:] - row[2:]).max(axis=1) <= 1.0))
               for row in ours["bbox"]]
    assert np.mean(matched) >= 0.9  # same label, box within 1 px
    assert ours["mask"].shape == ref["mask"].shape
    assert (ours["mask"] != ref["mask"]).mean() <= 0.05


@pytest.fixture(scope="module")
def int8_onnx(fp32_onnx, tmp_path_factory):
    """mode -> the quantised tiny model (static: calibrated on three random images)."""
    folder = tmp_path_factory.mktemp("int8")
    calibration = calibration_inputs(_images(3, seed=0), fp32_onnx)
    return {"static": quantize_onnx(fp32_onnx, folder / "static.onnx", calibration),
            "dynamic": quantize_onnx(fp32_onnx, folder / "dynamic.onnx", mode="dynamic")}


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_int8_model_runs_smaller_and_close(fp32_onnx, int8_onnx, mode):
    path = int8_onnx[mode]
    assert _int8_weights(path) and not _int8_weights(fp32_onnx)
    assert path.stat().st_size < 0.8 * fp32_onnx.stat().st_size
    feeds = calibration_inputs(_images(1, seed=1, size=(128, 128)), fp32_onnx)[0]
    _assert_close(OnnxPredictor(path)(feeds), OnnxPredictor(fp32_onnx)(feeds))


def test_static_quantises_convolutions_not_activation_products(fp32_onnx, int8_onnx):
    graph = onnx.load(str(int8_onnx["static"])).graph
    dequantized = {out for n in graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    products = set(activation_products(onnx.load(str(fp32_onnx))))
    assert products  # attention scores, attention x values, mask embeddings x mask features
    for node in graph.node:
        if node.op_type == "Conv":
            assert node.input[1] in dequantized, f"{node.name}: weight not int8"
        if node.name in products:
            assert not set(node.input) & dequantized, f"{node.name} was quantised"
    # the convolutions' Relus are folded into the int8 convs; the decoder MLPs' stay fp32
    producer = {out: n.op_type for n in graph.node for out in n.output}
    relu_inputs = [producer.get(n.input[0]) for n in graph.node if n.op_type == "Relu"]
    assert "DequantizeLinear" not in relu_inputs and "Gemm" in relu_inputs


def test_calibration_batches_repeat_the_last_image(tmp_path):
    # a stand-in model with the export's inputs at batch 2: only the input shapes are read
    inputs = [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)
              for name, shape in (("image", [2, 3, 128, 128]), ("im_shape", [2, 2]),
                                  ("scale_factor", [2, 2]))]
    output = onnx.helper.make_tensor_value_info("bbox", onnx.TensorProto.FLOAT, [2, 2])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["im_shape"], ["bbox"])],
                                   "inputs", inputs, [output])
    path = tmp_path / "b2.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 16)]),
              str(path))
    feeds = calibration_inputs(_images(3, seed=0), path)
    assert [f["image"].shape for f in feeds] == [(2, 3, 128, 128)] * 2
    np.testing.assert_array_equal(feeds[1]["image"][0], feeds[1]["image"][1])
    np.testing.assert_array_equal(feeds[0]["im_shape"], [[128, 128]] * 2)  # resized size
    np.testing.assert_allclose(feeds[0]["scale_factor"], [[0.8, 0.64]] * 2)


def test_bad_arguments_are_named(fp32_onnx, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.onnx"):
        quantize_onnx(tmp_path / "nowhere.onnx", tmp_path / "q.onnx", mode="dynamic")
    with pytest.raises(ValueError, match="mode must be"):
        quantize_onnx(fp32_onnx, tmp_path / "q.onnx", mode="bf16")
    with pytest.raises(ValueError, match="calibration"):
        quantize_onnx(fp32_onnx, tmp_path / "q.onnx", mode="static")
    with pytest.raises(ValueError, match="Conv"):
        quantize_onnx(fp32_onnx, tmp_path / "q.onnx", mode="dynamic", op_types=["Conv"])
    with pytest.raises(ValueError, match="calibration images"):
        calibration_inputs([], fp32_onnx)
