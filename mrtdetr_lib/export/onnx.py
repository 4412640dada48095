"""ONNX: paddle2onnx (opset 16), the seed's im_shape/scale_factor fix, onnxsim, ONNX Runtime.

The path of PaddleDetection's configs/mask_rtdetr/README.md, as functions:
export_inference -> to_onnx -> bake_inputs (fixed-size engines, e.g. TensorRT) -> simplify.
`export_onnx` runs them all. Batch > 1 works: each batch size is its own export (the
post-process resizes every image's masks to that image's size, which a fixed batch unrolls).
"""

import contextlib
import ctypes
import os
import sys
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Union

import numpy as np

from .paddle import OUTPUTS, export_inference

PathLike = Union[str, Path]


@contextlib.contextmanager
def converter_log(path: PathLike) -> Iterator[None]:
    """Send everything printed meanwhile to the file `path` (appended): Python's sys.stdout and
    sys.stderr and the C-level file descriptors 1 and 2, where paddle2onnx's C++ core writes."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            with open(path, "a") as text, contextlib.redirect_stdout(text), \
                    contextlib.redirect_stderr(text):
                yield
        finally:
            ctypes.CDLL(None).fflush(None)  # C stdio buffers go to the log, not to the caller
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)


def to_onnx(model_dir: PathLike, onnx_path: PathLike, opset: int = 16) -> Path:
    """paddle2onnx on `model_dir/model.json`; outputs renamed to bbox, bbox_num, mask. What the
    converter prints (paddle2onnx, polygraphy's folding) goes to `<onnx_path>.log`."""
    import onnx
    import paddle2onnx

    model_dir, onnx_path = Path(model_dir), Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    # POLYGRAPHY_AUTOINSTALL_DEPS=0 (mrtdetr_lib.setup): its dependencies are pinned instead
    with converter_log(onnx_path.with_suffix(".log")):
        paddle2onnx.export(str(model_dir / "model.json"), str(model_dir / "model.pdiparams"),
                           str(onnx_path), opset_version=opset, verbose=False)
    model = onnx.load(str(onnx_path))
    renames = {out.name: new for out, new in zip(model.graph.output, OUTPUTS)}
    for node in model.graph.node:
        node.output[:] = [renames.get(name, name) for name in node.output]
        node.input[:] = [renames.get(name, name) for name in node.input]
    for constant in model.graph.initializer:  # bbox_num can be folded into a constant
        constant.name = renames.get(constant.name, constant.name)
    for out in model.graph.output:
        out.name = renames[out.name]
    onnx.save(model, str(onnx_path))
    return onnx_path


def bake_inputs(onnx_path: PathLike, out_path: PathLike,
                fixed: Dict[str, Sequence[Sequence[float]]]) -> Path:
    """Turn inputs into constants, e.g. {"im_shape": [[640, 640]], "scale_factor": [[1, 1]]}:
    the seed's onnx_edit.py, needed for fixed-shape TensorRT engines."""
    import onnx

    model = onnx.load(str(onnx_path))
    for name, value in fixed.items():
        graph_input = next((i for i in model.graph.input if i.name == name), None)
        if graph_input is None:
            raise ValueError(f"{onnx_path} has no input {name!r}")
        model.graph.input.remove(graph_input)
        model.graph.initializer.append(
            onnx.numpy_helper.from_array(np.asarray(value, dtype="float32"), name))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(out_path))
    return Path(out_path)


def simplify(onnx_path: PathLike, out_path: PathLike) -> Path:
    """onnxsim: constant folding and shape inference, as the seed runs it before TensorRT."""
    import onnx
    import onnxsim

    with converter_log(Path(out_path).with_suffix(".log")):
        model, ok = onnxsim.simplify(onnx.load(str(onnx_path)))
    if not ok:
        raise RuntimeError(f"onnxsim could not validate the simplified {onnx_path}")
    onnx.save(model, str(out_path))
    return Path(out_path)


def export_onnx(model, out_dir: PathLike, name: str = "model", batch: int = 1,
                size: Optional[Sequence[int]] = None, bake: bool = False,
                run_simplify: bool = True) -> Path:
    """Eager model -> `out_dir/name_b{batch}.onnx` (opset 16, simplified). `bake=True` fixes
    im_shape = size and scale_factor = 1 (the seed's trt=True engine input)."""
    out_dir = Path(out_dir)
    size = size or model.transformer.eval_size
    inference_dir = export_inference(model, out_dir / f"{name}_b{batch}_paddle", batch, size)
    path = to_onnx(inference_dir, out_dir / f"{name}_b{batch}.onnx")
    if bake:
        path = bake_inputs(path, path, {"im_shape": [list(map(float, size))] * batch,
                                        "scale_factor": [[1.0, 1.0]] * batch})
    return simplify(path, path) if run_simplify else path


class OnnxPredictor:
    """ONNX Runtime on an exported model: `predictor(inputs)` -> {bbox, bbox_num, mask}."""

    def __init__(self, onnx_path: PathLike, threads: int = 0, providers=None):
        import onnxruntime as ort

        if not Path(onnx_path).is_file():
            raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
        options = ort.SessionOptions()
        # ORT's defaults, spelt out as they are the fast ones on CPU: every graph fusion (incl.
        # the QDQ -> int8 kernel fusions of quantize.py), one operator at a time on all cores
        # (ORT_PARALLEL would only split the same cores between independent branches)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        self.session = ort.InferenceSession(str(onnx_path), options,
                                            providers=providers or ["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """inputs: image [B, 3, H, W] (+ im_shape, scale_factor unless baked), numpy float32."""
        feeds = {n: np.ascontiguousarray(inputs[n], dtype="float32") for n in self.input_names}
        outputs = self.session.run(list(OUTPUTS), feeds)
        return dict(zip(OUTPUTS, outputs))
