"""TensorRT without TensorRT: the baked export checked statically (issue 14).

- No integer is computed in floating point: an FP16 engine would round it (flat top-k indices
  above 2048 picked the wrong query for L).
- Every op and restricted attribute of the baked export is in TensorRT 10's ONNX parser support
  table, onnx/onnx-tensorrt `docs/operators.md` at commit 96e781103cfc4adf4a6bb557e94bac8e693f6f4c
  (tag release/10.1-GA, "TensorRT 10.0 supports operators in the inclusive range of opset 9 to
  opset 20"). A later revision (TensorRT 10.15) keeps or loosens every row used here.
- The engine cache key, the FP32 layer choice and the refusals of `export/tensorrt.py`.
"""

import logging
import sys
import types
from collections import deque

import numpy as np
import onnx
import paddle
import pytest
from onnx import TensorProto, helper, numpy_helper

import mrtdetr_lib as mrt
from mrtdetr_lib.export import export_onnx, tensorrt
from mrtdetr_lib.model.postprocess import DETRPostProcess

ONNX_TENSORRT_COMMIT = "96e781103cfc4adf4a6bb557e94bac8e693f6f4c"
OPSET_RANGE = (9, 20)
F, H, B16 = "FLOAT", "FLOAT16", "BFLOAT16"
FLOATS = (F, H, B16)
NUMBERS = FLOATS + ("INT32", "INT64")
ANY = NUMBERS + ("BOOL",)
# op -> supported types of its data tensors ("Supported Types" column at ONNX_TENSORRT_COMMIT;
# FP32 = FLOAT, FP16 = FLOAT16, BF16 = BFLOAT16). Rows for the ops a Mask RT-DETR export can
# contain (simplified or not); an op missing here fails the test until its row is read.
SUPPORT = {
    "Abs": NUMBERS, "Add": NUMBERS, "And": ("BOOL",), "ArgMax": NUMBERS,
    "AveragePool": FLOATS, "BatchNormalization": FLOATS, "Cast": NUMBERS + ("UINT8", "BOOL"),
    "Ceil": FLOATS, "Clip": FLOATS, "Concat": ANY, "Constant": ANY, "ConstantOfShape": ANY,
    "Conv": FLOATS, "ConvTranspose": FLOATS, "Cos": FLOATS, "CumSum": FLOATS, "Div": NUMBERS,
    "Einsum": FLOATS, "Equal": NUMBERS, "Erf": FLOATS, "Exp": FLOATS, "Expand": ANY,
    "Flatten": ANY, "Floor": FLOATS, "Gather": ANY, "GatherElements": ANY, "GatherND": ANY,
    "Gemm": FLOATS, "GlobalAveragePool": FLOATS, "Greater": NUMBERS, "GreaterOrEqual": NUMBERS,
    "GridSample": (F, H), "HardSigmoid": FLOATS, "HardSwish": FLOATS, "Identity": ANY,
    "LayerNormalization": FLOATS, "LeakyRelu": FLOATS, "Less": NUMBERS, "LessOrEqual": NUMBERS,
    "Log": FLOATS, "MatMul": FLOATS, "Max": NUMBERS, "MaxPool": FLOATS, "Min": NUMBERS,
    "Mod": NUMBERS, "Mul": NUMBERS, "Neg": NUMBERS, "Not": ("BOOL",), "Or": ("BOOL",),
    "Pad": NUMBERS, "Pow": FLOATS, "Range": NUMBERS, "Reciprocal": FLOATS,
    "ReduceMax": NUMBERS, "ReduceMean": NUMBERS, "ReduceMin": NUMBERS, "ReduceProd": NUMBERS,
    "ReduceSum": NUMBERS, "Relu": NUMBERS, "Reshape": ANY, "Resize": FLOATS,
    "ScatterND": NUMBERS, "Shape": ANY, "Sigmoid": FLOATS, "Sign": NUMBERS, "Sin": FLOATS,
    "Slice": ANY, "Softmax": FLOATS, "Softplus": FLOATS, "Split": ANY, "Sqrt": FLOATS,
    "Squeeze": ANY, "Sub": NUMBERS, "Sum": NUMBERS, "Tanh": FLOATS, "Tile": ANY,
    "TopK": NUMBERS, "Transpose": ANY, "Trilu": ANY, "Unsqueeze": ANY, "Where": ANY,
}
COMPARISONS = ("Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual")  # output BOOL
RESIZE = {"coordinate_transformation_mode": {"half_pixel", "pytorch_half_pixel",
                                             "tf_half_pixel_for_nn", "asymmetric",
                                             "align_corners"},
          "mode": {"nearest", "linear"},
          "nearest_mode": {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"},
          "keep_aspect_ratio_policy": {"stretch"}, "antialias": {0}}
TOPK_MAX_K = 3840  # "`K` input must be less than 3840"
# (op, attribute) -> its restriction in the table, as a check of the attribute's value
ATTRIBUTE_RULES = {
    **{("Resize", name): allowed.__contains__ for name, allowed in RESIZE.items()},
    ("TopK", "sorted"): lambda v: v == 1,
    **{(op, "dilations"): lambda v: all(d == 1 for d in v)
       for op in ("MaxPool", "AveragePool")},
    **{(op, "kernel_shape"): lambda v: len(v) in (2, 3) for op in ("MaxPool", "AveragePool")},
    ("Constant", "sparse_value"): lambda v: False,
    ("Constant", "value_string"): lambda v: False,
    ("Constant", "value_strings"): lambda v: False,
}
# op -> (input index that must be an initializer, what the table says)
CONSTANT_INPUTS = {
    **{op: (1, "`axes` must be an initializer") for op in (
        "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "Squeeze",
        "Unsqueeze")},
    "Slice": (3, "`axes` must be an initializer"), "Pad": (3, "`axes` must be an initializer"),
    "CumSum": (1, "`axis` must be an initializer"),
    "TopK": (1, "`K` must be below 3840: a constant, to check it"),
}
INTEGERS = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
FLOATING = {"FLOAT", "FLOAT16", "BFLOAT16", "DOUBLE"}


@pytest.fixture(scope="module", params=[1, 2])
def baked(request, tmp_path_factory):
    """The tiny model's baked, simplified export (what build_trt_engine takes), batch 1 and 2."""
    paddle.seed(0)
    model = mrt.build_model("tiny")
    model.eval()
    path = export_onnx(model, tmp_path_factory.mktemp("baked"), "tiny",
                       batch=request.param, bake=True)
    return onnx.shape_inference.infer_shapes(onnx.load(str(path)))


def tensor_types(model: onnx.ModelProto) -> dict:
    """tensor name -> ONNX type name (inputs, outputs, constants, inferred intermediates)."""
    graph = model.graph
    out = {c.name: TensorProto.DataType.Name(c.data_type) for c in graph.initializer}
    for info in list(graph.value_info) + list(graph.input) + list(graph.output):
        out[info.name] = TensorProto.DataType.Name(info.type.tensor_type.elem_type)
    for node in graph.node:  # Constant nodes hold their type in the value
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            out[node.output[0]] = TensorProto.DataType.Name(node.attribute[0].t.data_type)
    return out


def integer_float_chains(model: onnx.ModelProto) -> list:
    """Paths Cast(int->float) -> ... -> Cast(float->int): integers computed in floating point.

    A breadth-first walk from each int->float Cast through the float tensors it feeds; every
    float->int Cast reached closes a chain, returned as its op types (node names in brackets).
    Bool -> float casts (0/1, exact in any precision) are not integers here.
    """
    types_ = tensor_types(model)
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def cast(node, source, target):
        return (node.op_type == "Cast" and types_.get(node.input[0]) in source
                and types_.get(node.output[0]) in target)

    chains = []
    for start in model.graph.node:
        if not cast(start, INTEGERS, FLOATING):
            continue
        queue, seen = deque([(start, [start])]), {start.name}
        while queue:
            node, path = queue.popleft()
            for out in node.output:
                if types_.get(out) not in FLOATING:
                    continue
                for nxt in consumers.get(out, []):
                    if nxt.name in seen:
                        continue
                    seen.add(nxt.name)
                    if cast(nxt, FLOATING, INTEGERS):
                        chains.append(" -> ".join(f"{n.op_type}[{n.name}]" for n in path + [nxt]))
                    else:
                        queue.append((nxt, path + [nxt]))
    return chains


def support_problems(model: onnx.ModelProto) -> list:
    """Every way the graph leaves the support table at ONNX_TENSORRT_COMMIT (empty: none)."""
    problems, types_ = [], tensor_types(model)
    constants = {c.name for c in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        problems.append(f"opset {opset} outside {OPSET_RANGE}")
    for node in model.graph.node:
        where = f"{node.op_type}[{node.name}]"
        if node.op_type not in SUPPORT:
            problems.append(f"{where}: not in the table")
            continue
        data = [node.input[1]] if node.op_type == "Where" else node.input[:1]
        if node.op_type not in COMPARISONS:
            data = data + list(node.output[:1])
        for name in data:
            if name and types_.get(name) not in SUPPORT[node.op_type]:
                problems.append(f"{where}: {name} is {types_.get(name)}")
        for attribute in node.attribute:
            rule = ATTRIBUTE_RULES.get((node.op_type, attribute.name))
            value = helper.get_attribute_value(attribute)
            value = value.decode() if isinstance(value, bytes) else value
            if rule is not None and not rule(value):
                problems.append(f"{where}: {attribute.name}={value!r} unsupported")
        index, rule = CONSTANT_INPUTS.get(node.op_type, (None, ""))
        if index is not None and len(node.input) > index and node.input[index]:
            if node.input[index] not in constants:
                problems.append(f"{where}: {rule}")
        problems += _shape_rules(node, where, model, types_)
    return problems


def _shape_rules(node, where: str, model: onnx.ModelProto, types_: dict) -> list:
    """The table's rank, output and value restrictions of MaxPool, GridSample, TopK, LayerNorm."""
    initializers = {c.name: numpy_helper.to_array(c) for c in model.graph.initializer}
    ranks = {i.name: len(i.type.tensor_type.shape.dim)
             for i in list(model.graph.value_info) + list(model.graph.input)}
    if node.op_type == "MaxPool" and len([o for o in node.output if o]) > 1:
        return [f"{where}: `Indices` output tensor unsupported"]
    if node.op_type == "GridSample" and ranks.get(node.input[0]) != 4:
        return [f"{where}: input must be 4D, is {ranks.get(node.input[0])}D"]
    if node.op_type == "TopK" and node.input[1] in initializers:
        k = int(initializers[node.input[1]].reshape(-1)[0])
        return [] if k < TOPK_MAX_K else [f"{where}: K={k} not below {TOPK_MAX_K}"]
    if node.op_type == "LayerNormalization" and len([o for o in node.output if o]) > 1:
        return [f"{where}: only the first output Y is supported"]
    return []


def _paddle2onnx_floor_divide() -> onnx.ModelProto:
    """A 4-node graph with the chain paddle2onnx 2.1 emits for int64 `index // 80`."""
    nodes = [helper.make_node("Cast", ["index"], ["f"], to=TensorProto.FLOAT, name="Cast.19"),
             helper.make_node("Div", ["f", "k"], ["d"], name="Div.42"),
             helper.make_node("Floor", ["d"], ["r"], name="Floor.1"),
             helper.make_node("Cast", ["r"], ["query"], to=TensorProto.INT64, name="Cast.21")]
    graph = helper.make_graph(
        nodes, "floor_divide", [helper.make_tensor_value_info("index", TensorProto.INT64, [300])],
        [helper.make_tensor_value_info("query", TensorProto.INT64, [300])],
        [numpy_helper.from_array(np.array(80, "float32"), "k")])
    return onnx.shape_inference.infer_shapes(helper.make_model(graph))


def test_chain_finder_sees_paddle2onnx_floor_divide():
    assert integer_float_chains(_paddle2onnx_floor_divide()) == [
        "Cast[Cast.19] -> Div[Div.42] -> Floor[Floor.1] -> Cast[Cast.21]"]


def test_split_index_is_exact_on_all_24000_flat_indices_of_l():
    """L: 300 queries x 80 classes. The old `index // 80`, run in FP16 as a weakly typed engine
    may, picks the wrong query for about 1 in 20 of them; the tables never do."""
    post = DETRPostProcess(num_classes=80, num_top_queries=300)
    flat = np.arange(300 * 80).reshape(2, -1)  # [B=2, 12000]
    query, label = post.split_index(paddle.to_tensor(flat), 300)
    np.testing.assert_array_equal(query.numpy(), flat // 80)
    np.testing.assert_array_equal(label.numpy(), flat % 80)
    assert query.dtype == label.dtype == paddle.int64
    in_half = np.floor(flat.astype(np.float16) / np.float16(80)).astype(np.int64)
    assert 0.04 < (in_half != flat // 80).mean() < 0.06  # what the tables avoid


def test_forward_picks_query_and_label_of_high_flat_indices():
    """Eager post-process at L's size: the top-300 (query, class) pairs are spread over all
    24,000 flat indices; each box must come from its own query (box x encodes the query)."""
    queries, classes = 300, 80
    rng = np.random.default_rng(0)
    chosen = np.concatenate([[queries * classes - 1], rng.choice(queries * classes - 1, 299,
                                                                 replace=False)])
    logits = np.full((1, queries * classes), -20.0, "float32")
    logits[0, chosen] = np.linspace(10.0, 5.0, len(chosen))  # descending: rank = order
    boxes = np.zeros((1, queries, 4), "float32")
    boxes[0, :, 0] = (np.arange(queries) + 0.5) / queries  # cx -> query + 0.5 px at w = 300
    boxes[0, :, 1] = 0.5
    post = DETRPostProcess(num_classes=classes, num_top_queries=queries)
    out = post(paddle.to_tensor(boxes), paddle.to_tensor(logits.reshape(1, queries, classes)),
               paddle.zeros([1, queries, 2, 2]), paddle.to_tensor([[4.0, 300.0]]),
               paddle.ones([1, 2]))
    bbox = out["bbox"].numpy()
    np.testing.assert_array_equal(bbox[:, 0], chosen % classes)
    np.testing.assert_allclose(bbox[:, 2], chosen // classes + 0.5, atol=1e-3)


def test_export_computes_no_integer_in_floating_point(baked):
    chains = integer_float_chains(baked)
    print(f"int -> float -> int chains: {chains or 'none'}")
    assert not chains, chains
    ops = {n.op_type for n in baked.graph.node}
    assert not ops & {"Floor", "Mod"}, "the post-process reads query/label from tables"


def test_export_is_in_the_tensorrt_10_support_table(baked):
    """Every op, data type and restricted attribute of the baked export, against the table."""
    problems = support_problems(baked)
    ops = sorted({n.op_type for n in baked.graph.node})
    checked = sorted({f"{n.op_type}.{a.name}" for n in baked.graph.node for a in n.attribute
                      if (n.op_type, a.name) in ATTRIBUTE_RULES})
    print(f"onnx-tensorrt {ONNX_TENSORRT_COMMIT[:12]}: {len(ops)} ops {ops}; "
          f"restricted attributes checked {checked}")
    assert not problems, problems


def test_support_check_catches_what_the_table_rules_out():
    """The checker itself: an op outside the table, an unsorted TopK, a cubic Resize."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    nodes = [helper.make_node("TopK", ["x", "k"], ["v", "i"], sorted=0, name="t"),
             helper.make_node("Resize", ["x", "", "s"], ["r"], mode="cubic", name="r"),
             helper.make_node("Hardmax", ["x"], ["h"], name="h")]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "vrh"]
    graph = helper.make_graph(nodes, "bad", [x], outputs, [
        numpy_helper.from_array(np.array([4000], "int64"), "k"),
        numpy_helper.from_array(np.ones(4, "float32"), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    problems = "\n".join(support_problems(model))
    for expected in ("sorted=0", "K=4000", "mode='cubic'", "Hardmax[h]: not in the table"):
        assert expected in problems, problems


def test_build_refuses_an_unbaked_export(tmp_path):
    """im_shape/scale_factor as inputs, mask [k, ?, ?]: refused, saying how to bake it."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["mask"])], "unbaked",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
         for n, s in (("im_shape", [1, 2]), ("image", [1, 3, 8, 8]), ("scale_factor", [1, 2]))],
        [helper.make_tensor_value_info("mask", TensorProto.INT32, [50, "h", "w"])])
    path = tmp_path / "tiny_b1.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ValueError, match="bake=True"):
        tensorrt.build_trt_engine(path)


def test_engine_cache_key_changes_with_every_setting(tmp_path):
    onnx_path = tmp_path / "tiny_b1.onnx"
    onnx_path.write_bytes(b"graph")
    settings = {"gpu": "NVIDIA A10", "compute_capability": "8.6", "tensorrt": "10.13.3.9",
                "flags": ["FP16", "OBEY_PRECISION_CONSTRAINTS"], "fp32_layers": ["a", "b"],
                "workspace_bytes": 1 << 32}
    base = tensorrt.engine_path(onnx_path, settings)
    assert base == tensorrt.engine_path(onnx_path, dict(settings))
    assert base.name.endswith(".trt10.13.3.9.fp16.engine")
    changes = {"gpu": "NVIDIA L4", "compute_capability": "8.9", "tensorrt": "10.12.0.36",
               "flags": ["FP16"], "fp32_layers": ["a"], "workspace_bytes": 1 << 30}
    paths = {tensorrt.engine_path(onnx_path, {**settings, key: value})
             for key, value in changes.items()}
    assert len(paths) == len(changes) and base not in paths
    onnx_path.write_bytes(b"another graph")
    assert tensorrt.engine_path(onnx_path, settings) != base


def _fake_tensorrt(version: str) -> types.ModuleType:
    """Just enough of the tensorrt module for the FP32 layer rules and the version gate."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.float32, trt.float16, trt.int32 = "float32", "float16", "int32"
    trt.LayerType = types.SimpleNamespace(**{t: f"LayerType.{t}" for t in (
        "NORMALIZATION", "REDUCE", "SOFTMAX", "ELEMENTWISE", "UNARY", "CONVOLUTION")})
    trt.ElementWiseOperation = types.SimpleNamespace(POW="POW", SUM="SUM")
    trt.UnaryOperation = types.SimpleNamespace(SQRT="SQRT", EXP="EXP")

    class ILayer:
        def __init__(self, name, type_, op=None, dtype="float32"):
            self.name, self.type, self._op, self.num_outputs = name, type_, op, 1
            self._dtype = dtype

        def get_output(self, index):
            return types.SimpleNamespace(dtype=self._dtype)

    class IElementWiseLayer(ILayer):
        op = property(lambda self: self._op)

    trt.ILayer, trt.IElementWiseLayer = ILayer, IElementWiseLayer
    trt.IUnaryLayer = type("IUnaryLayer", (ILayer,), {"op": property(lambda self: self._op)})
    return trt


def test_fp32_layers_are_chosen_by_type_not_name(monkeypatch, caplog):
    """Opset 16's decomposed LayerNorm: Pow and Sqrt and the ReduceMeans are kept, whatever
    their names; an integer reduction and other element-wise ops are not."""
    trt = _fake_tensorrt("10.13.3.9")
    t = trt.LayerType
    layers = [trt.ILayer("p2o.ReduceMean.0", t.REDUCE), trt.ILayer("Sub.3", t.ELEMENTWISE, "SUM"),
              trt.ILayer("Pow.0", t.ELEMENTWISE, "POW"), trt.ILayer("Sqrt.0", t.UNARY, "SQRT"),
              trt.ILayer("Exp.0", t.UNARY, "EXP"), trt.ILayer("Softmax.1", t.SOFTMAX),
              trt.ILayer("ReduceMax.3", t.REDUCE, dtype="int32"),
              trt.ILayer("Conv.0", t.CONVOLUTION)]
    network = types.SimpleNamespace(num_layers=len(layers), get_layer=layers.__getitem__)
    with caplog.at_level(logging.INFO, logger=tensorrt.__name__):
        kept = [layer.name for layer in tensorrt.fp32_layers(network, trt)]
    assert kept == ["p2o.ReduceMean.0", "Pow.0", "Sqrt.0", "Softmax.1"]
    assert not any("LayerNorm" in name for name in kept)  # what name matching looked for
    assert "4 layers kept in FP32 (1 ELEMENTWISE, 1 REDUCE, 1 SOFTMAX, 1 UNARY)" in caplog.text

    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt("11.0.0"))
    assert "10.x" in tensorrt.tensorrt_available()
    with pytest.raises(RuntimeError, match="TensorRT 10.x only"):
        tensorrt._import_tensorrt()
