"""Int8 ONNX Runtime on CPU: a faster CPU path than fp32, for a small loss of accuracy.

Most of Mask RT-DETR's CPU time goes to convolutions (the HGNetV2 backbone, the encoder's CCFM
and the mask-feature FPN: 64% of L's fp32 ONNX Runtime time), so `mode="static"` quantises the
`Conv` nodes (and the Relu/Concat/MaxPool/Add between them): weights int8 per output channel,
activations uint8 with ranges measured on calibration images, stored as
QuantizeLinear/DequantizeLinear (QDQ) pairs that ONNX Runtime fuses into int8 kernels (VNNI on
AVX-512 CPUs). L at 640, batch 1, one thread: 1.97 s fp32 -> 0.90 s int8 (a busy machine).

The decoder's linears (box/score heads, the sampling offsets and attention weights of deformable
attention) are small and sensitive, so they stay fp32 unless asked for in `op_types`
(quantising them too was slower on S: more quantize/dequantize work than it saved). Products of
two activations (attention scores, the mask-embedding product) are never quantised: they have
no weights to shrink, and their ranges vary from image to image. `mode="dynamic"` needs no
images but only quantises MatMul/Gemm (weights int8, activation ranges per run): smaller files,
little speed-up here. bf16 is no option: ONNX Runtime's CPU kernels have no bf16 path on x86.
"""

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from ..data.transforms import preprocess, read_image

PathLike = Union[str, Path]
STATIC_OPS = ("Conv",)
# fed only by quantised nodes, these run on int8 too, which saves a dequantize + quantize pair
# around each (on L: 2.06x -> 2.19x over fp32 at 1 thread)
FOLLOWERS = ("Relu", "Concat", "MaxPool", "Add")
DYNAMIC_OPS = ("MatMul", "Gemm")


def activation_products(model) -> List[str]:
    """Names of the MatMul nodes whose inputs are both activations (no initializer)."""
    constants = {init.name for init in model.graph.initializer}
    constants |= {out for n in model.graph.node if n.op_type == "Constant" for out in n.output}
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and not any(i in constants for i in n.input)]


def static_nodes(model, op_types: Sequence[str], exclude: Sequence[str] = ()) -> List[str]:
    """Nodes of `op_types` (not excluded), plus the FOLLOWERS whose inputs all come from them."""
    producer = {out: node for node in model.graph.node for out in node.output}
    chosen = {n.name for n in model.graph.node if n.op_type in op_types} - set(exclude)
    grown = True
    while grown:  # a follower may feed another (Conv -> Add -> Relu)
        grown = False
        for node in model.graph.node:
            sources = [producer.get(name) for name in node.input if name]
            if (node.op_type in FOLLOWERS and node.name not in chosen and node.name not in exclude
                    and sources and all(s is not None and s.name in chosen for s in sources)):
                chosen.add(node.name)
                grown = True
    return sorted(chosen)


def calibration_inputs(images: Sequence[Union[PathLike, np.ndarray]], onnx_path: PathLike
                       ) -> List[Dict[str, np.ndarray]]:
    """Image files (or RGB uint8 arrays) -> feeds for the model's fixed batch and size: the eval
    preprocessing (`data.preprocess`); a last partial batch repeats its final image."""
    import onnx

    if not images:
        raise ValueError("static quantisation needs calibration images, got none")
    if not Path(onnx_path).is_file():
        raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
    graph = onnx.load(str(onnx_path)).graph
    constants = {init.name for init in graph.initializer}
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim]
              for i in graph.input if i.name not in constants}  # fixed-size export: all known
    batch, _, height, width = shapes["image"]
    singles = [preprocess(read_image(str(im)) if not isinstance(im, np.ndarray) else im,
                          (height, width)) for im in images]
    singles += [singles[-1]] * (-len(singles) % batch)
    return [{name: np.concatenate([s[name] for s in singles[i:i + batch]])
             for name in shapes} for i in range(0, len(singles), batch)]


def quantize_onnx(onnx_path: PathLike, out_path: PathLike,
                  calibration: Optional[Iterable[Dict[str, np.ndarray]]] = None,
                  mode: str = "static", op_types: Optional[Sequence[str]] = None,
                  exclude: Sequence[str] = ()) -> Path:
    """fp32 ONNX -> int8 ONNX at `out_path`. `calibration`: feeds (see `calibration_inputs`),
    needed by `mode="static"`; `exclude`: node names kept in fp32."""
    import onnx
    from onnxruntime import quantization as q
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in ("static", "dynamic"):
        raise ValueError(f"mode must be 'static' or 'dynamic', got {mode!r}")
    if not Path(onnx_path).is_file():
        raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
    op_types = list(op_types or (STATIC_OPS if mode == "static" else DYNAMIC_OPS))
    if mode == "dynamic" and "Conv" in op_types:
        raise ValueError("dynamic mode cannot quantise Conv efficiently (ConvInteger is slower "
                         "than fp32 on CPU): use mode='static'")
    feeds = list(calibration or [])
    if mode == "static" and not feeds:
        raise ValueError("mode='static' needs calibration feeds (see calibration_inputs)")
    with tempfile.TemporaryDirectory() as tmp, _quiet_root_logger():
        # shape inference + fp32 graph clean-up first, as onnxruntime recommends for quantising
        prepared = str(Path(tmp) / "prepared.onnx")
        quant_pre_process(str(onnx_path), prepared, skip_symbolic_shape=True)
        excluded = sorted(set(exclude) | set(activation_products(onnx.load(prepared))))
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        if mode == "dynamic":
            q.quantize_dynamic(prepared, str(out_path), op_types_to_quantize=op_types,
                               per_channel=True, weight_type=q.QuantType.QInt8,
                               nodes_to_exclude=excluded)
            return Path(out_path)
        # uint8 activations x int8 weights: the fast combination on VNNI CPUs
        nodes = static_nodes(onnx.load(prepared), op_types, excluded)
        q.quantize_static(prepared, str(out_path), _Reader(feeds), quant_format=q.QuantFormat.QDQ,
                          op_types_to_quantize=sorted(set(op_types) | set(FOLLOWERS)),
                          nodes_to_quantize=nodes, per_channel=True,
                          activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                          nodes_to_exclude=excluded,
                          calibrate_method=q.CalibrationMethod.MinMax)
    return Path(out_path)


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime's quantiser logs one INFO line per tensor on the root logger: mute them."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: List[Dict[str, np.ndarray]]):
        self.feeds = iter(feeds)

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        return next(self.feeds, None)
