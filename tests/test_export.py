"""Export: Paddle inference model, ONNX (fixed batch 1 and 2, baked inputs, onnxsim) and ONNX
Runtime give the eager model's outputs; TensorRT where a GPU is present."""

import hashlib
import json

import numpy as np
import onnx
import paddle
import pytest

import mrtdetr_lib as mrt
from mrtdetr_lib.export import (
    OnnxPredictor,
    PaddlePredictor,
    build_trt_engine,
    export_onnx,
    tensorrt_available,
)


def _inputs(batch, size=(256, 256), seed=0):
    rng = np.random.default_rng(seed)
    scales = [[1.0, 1.0], [0.5, 0.8], [2.0, 1.0]][:batch]  # different original sizes
    return {"image": rng.random((batch, 3, *size)).astype("float32"),
            "im_shape": np.array([size] * batch, "float32"),
            "scale_factor": np.array(scales, "float32")}


def _eager(model, inputs):
    with paddle.no_grad():
        return {k: v.numpy() for k, v in model({k: paddle.to_tensor(v)
                                               for k, v in inputs.items()}).items()}


def assert_same_detections(ours, ref, box_atol, score_atol=1e-4, max_mask_pixels=0):
    """Match rows by label and box (the order of near-tied scores may differ), then compare."""
    np.testing.assert_array_equal(ours["bbox_num"], ref["bbox_num"])
    used = set()
    for i, row in enumerate(ref["bbox"]):
        candidates = [j for j in range(len(ours["bbox"])) if j not in used
                      and ours["bbox"][j, 0] == row[0]]
        assert candidates, f"no exported detection with label {row[0]} for row {i}"
        j = min(candidates, key=lambda j: np.abs(ours["bbox"][j, 1:] - row[1:]).sum())
        used.add(j)
        np.testing.assert_allclose(ours["bbox"][j, 2:], row[2:], atol=box_atol)
        np.testing.assert_allclose(ours["bbox"][j, 1], row[1], atol=score_atol)
        assert (ours["mask"][j] != ref["mask"][i]).sum() <= max_mask_pixels


@pytest.fixture(scope="module")
def tiny():
    paddle.seed(0)
    model = mrt.build_model("tiny")
    model.eval()
    return model


def assert_zero_padding(outputs, inputs):
    """Every image's masks are exactly 0 outside its own original size (the canvas padding)."""
    origin = np.floor(inputs["im_shape"] / inputs["scale_factor"] + 0.5).astype(int)
    start = 0
    for (h0, w0), count in zip(origin, outputs["bbox_num"]):
        masks = outputs["mask"][start:start + count]
        assert masks.shape[1:] == tuple(origin.max(0))  # the batch's largest original size
        assert not masks[:, h0:, :].any() and not masks[:, :, w0:].any(), (h0, w0)
        start += count


@pytest.mark.parametrize("batch", [1, 2, 3])  # 2 and 3: images of different original sizes
def test_paddle_inference_and_onnx_runtime_match_eager(tiny, tmp_path_factory, batch):
    out_dir = tmp_path_factory.mktemp("export")
    onnx_path = export_onnx(tiny, out_dir, "tiny", batch=batch)
    inputs = _inputs(batch)
    eager = _eager(tiny, inputs)
    onnx_out = OnnxPredictor(onnx_path)(inputs)
    paddle_out = PaddlePredictor(out_dir / f"tiny_b{batch}_paddle")(inputs)
    for outputs in (eager, onnx_out, paddle_out):
        assert_zero_padding(outputs, inputs)
    assert_same_detections(onnx_out, eager, box_atol=1e-3, max_mask_pixels=10)
    assert_same_detections(paddle_out, eager, box_atol=1e-4, max_mask_pixels=0)


def _graph_digest(path):
    """sha256 of the graph (ops, attributes, constant values, wiring), value names aside: each
    name becomes its order of first appearance (an export traces a copy of the model, whose
    parameters get fresh names)."""
    graph = onnx.load(str(path)).graph
    order = {}
    for name in ([c.name for c in graph.initializer] + [i.name for i in graph.input]
                 + [x for node in graph.node for x in (*node.input, *node.output)]):
        order.setdefault(name, f"v{len(order)}")
    for constant in graph.initializer:
        constant.name = order[constant.name]
    for node in graph.node:
        node.name = ""
        node.input[:] = [order.get(x, x) for x in node.input]
        node.output[:] = [order.get(x, x) for x in node.output]
    for value in (*graph.input, *graph.output):
        value.name = order.get(value.name, value.name)
    graph.ClearField("value_info")
    return hashlib.sha256(graph.SerializeToString(deterministic=True)).hexdigest()


def test_batch_export_is_reproducible_and_pads_with_exact_zeros(tiny, tmp_path):
    """Issue 15: paddle2onnx read paddle's double pad value as a float, so each export's Pad
    filled the mask canvas with stray bytes. Three exports must give the same graph, and any
    Pad (none today: the canvas is concatenated zeros) must pad with exactly 0."""
    paths = [export_onnx(tiny, tmp_path / str(i), "tiny", batch=2) for i in range(3)]
    assert len({_graph_digest(p) for p in paths}) == 1
    graph = onnx.load(str(paths[0])).graph
    constants = {c.name: onnx.numpy_helper.to_array(c) for c in graph.initializer}
    for node in graph.node:
        if node.op_type == "Pad" and len(node.input) > 2 and node.input[2]:
            assert constants[node.input[2]].tobytes() == bytes(4), node.name


def test_baked_inputs_for_fixed_size_engines(tiny, tmp_path):
    path = export_onnx(tiny, tmp_path, "tiny", batch=1, bake=True)
    predictor = OnnxPredictor(path)
    assert predictor.input_names == ["image"]
    inputs = _inputs(1)
    assert_same_detections(predictor({"image": inputs["image"]}), _eager(tiny, inputs),
                           box_atol=1e-3, max_mask_pixels=10)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.onnx"):
        OnnxPredictor(tmp_path / "nowhere.onnx")
    with pytest.raises(FileNotFoundError, match="model.json missing"):
        PaddlePredictor(tmp_path)


def test_cli_export_writes_into_the_output_dir(tmp_path, capsys):
    from mrtdetr_lib.cli import main

    paddle.seed(0)
    weights = tmp_path / "tiny.pdparams"
    paddle.save(mrt.build_model("tiny").state_dict(), str(weights))
    out = tmp_path / "exports"
    code = main(["export", "-c", "tiny", "-o", f"weights={weights}", "trt=True",
                 "--output_dir", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert (out / "mask_rtdetr_t_b1.onnx").is_file()
    assert (out / "mask_rtdetr_t_b1_paddle" / "model.json").is_file()
    assert "inputs baked" in printed
    if tensorrt_available():
        assert "tensorrt engine skipped" in printed


@pytest.mark.skipif(tensorrt_available() is not None,
                    reason=f"TensorRT cannot run here: {tensorrt_available()}")
def test_tensorrt_fp16_engine(tiny, tmp_path):
    from mrtdetr_lib.export import TrtPredictor

    path = export_onnx(tiny, tmp_path, "tiny", batch=1, bake=True)
    engine = build_trt_engine(path, fp16=True)
    assert build_trt_engine(path, fp16=True) == engine  # cached
    inputs = _inputs(1)
    assert_same_detections(TrtPredictor(engine)({"image": inputs["image"]}), _eager(tiny, inputs),
                           box_atol=2.0, score_atol=2e-2, max_mask_pixels=2000)


@pytest.mark.slow
def test_l_reference_weights_onnx_parity(ref_dir, refweights, tmp_path):
    """L with PaddleDetection's reference weights: exported == eager within the README's
    tolerances (post-processed boxes 0.05 px, masks a few hundred pixels)."""
    manifest = json.loads((ref_dir / "manifest_L.json").read_text())
    model = mrt.build_model("l")
    model.set_state_dict(refweights.reference_weights(manifest))
    model.eval()
    data = np.load(ref_dir / "fwd_L_000000014439_640.npz")
    image = (data["input_rgb_u8"].astype("float32") * np.float32(1 / 255)).transpose(2, 0, 1)
    inputs = {"image": image[None], "im_shape": np.array([[640, 640]], "float32"),
              "scale_factor": np.ones((1, 2), "float32")}
    eager = _eager(model, inputs)
    path = export_onnx(model, tmp_path, "l", batch=1)
    assert_same_detections(OnnxPredictor(path)(inputs), eager, box_atol=0.05,
                           max_mask_pixels=300)
    assert_same_detections(PaddlePredictor(tmp_path / "l_b1_paddle")(inputs), eager,
                           box_atol=0.05, max_mask_pixels=300)


def test_converter_chatter_goes_to_a_log_file(tiny, tmp_path, capfd):
    """paddle2onnx writes from C++ to file descriptor 1, polygraphy prints from Python: both end
    up in `<name>.log`, so benchmarks' stdout carries only JSON and notebooks only results."""
    capfd.readouterr()
    path = export_onnx(tiny, tmp_path, "tiny", batch=1)
    out, err = capfd.readouterr()
    assert "Paddle2ONNX" not in out + err and "Folding Constants" not in out + err
    log = path.with_suffix(".log").read_text()
    assert "[Paddle2ONNX]" in log and "Folding Constants" in log
    print("after")  # the descriptors are back where they were
    assert capfd.readouterr().out == "after\n"


def test_export_leaves_the_model_eager(tmp_path):
    """paddle.jit.to_static swaps a layer's forward for the traced program in place; the export
    traces a copy, so the caller's model (its hooks, its timings) stays the eager one."""
    from mrtdetr_lib.export import export_inference

    paddle.seed(0)
    model = mrt.build_model("tiny")
    forward = model.forward
    export_inference(model, tmp_path / "paddle")
    assert model.forward == forward and "StaticFunction" not in type(model.forward).__name__
    calls = []
    model.backbone.register_forward_post_hook(lambda *_: calls.append(1))
    with paddle.no_grad():
        model({k: paddle.to_tensor(v) for k, v in _inputs(1).items()})
    assert calls == [1]  # a hook fires: the eager path ran
