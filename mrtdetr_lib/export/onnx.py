"""ONNX: paddle2onnx (opset 16), the seed's im_shape/scale_factor fix, onnxsim, ONNX Runtime.

The path of PaddleDetection's configs/mask_rtdetr/README.md, as functions:
export_inference -> to_onnx -> bake_inputs (fixed-size engines, e.g. TensorRT) -> simplify.
`export_onnx` runs them all. Batch > 1 works two ways: a fixed-batch export per batch size (the
post-process resizes every image's masks to that image's size, which a fixed batch unrolls), or
one `dynamic_batch=True` file for every batch size, whose im_shape/scale_factor are baked in
(every image the eval size: one resize over all masks, no loop).

Outputs (every export): bbox [N, 6] float32 (label, score, x1, y1, x2, y2 in original pixels),
bbox_num [B] int32 (N = B * num_top_queries), mask [N, H0, W0] int32 0/1.
"""

import contextlib
import ctypes
import os
import sys
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Union

import numpy as np

from ..errors import UserError
from .paddle import OUTPUTS, check_image, export_inference, staged, trace_size

PathLike = Union[str, Path]
# paddle2onnx 2.1 writes opset 16 for any lower request (this model needs 16's GridSample...);
# these are the ones it writes as asked and ONNX Runtime runs, checked on the tiny model
OPSETS = (16, 17)


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
    converter prints (paddle2onnx, polygraphy's folding) goes to `<onnx_path>.log`. `opset`: one
    of OPSETS (paddle2onnx would silently write another)."""
    import onnx
    import paddle2onnx

    if opset not in OPSETS:
        choices = " or ".join(map(str, OPSETS))
        raise UserError(f"opset {opset}: this model exports at opset {choices} "
                         f"(paddle2onnx 2.1 would silently write another)")
    model_dir, onnx_path = Path(model_dir), Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    # POLYGRAPHY_AUTOINSTALL_DEPS=0 (mrtdetr_lib.setup): its dependencies are pinned instead
    with converter_log(onnx_path.with_suffix(".log")):
        paddle2onnx.export(str(model_dir / "model.json"), str(model_dir / "model.pdiparams"),
                           str(onnx_path), opset_version=opset, verbose=False)
    model = onnx.load(str(onnx_path))
    written = opset_of(model)
    if written != opset:
        raise RuntimeError(f"paddle2onnx wrote opset {written} into {onnx_path}, not {opset}")
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


def opset_of(model) -> int:
    """The default-domain opset of an onnx.ModelProto."""
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


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
                run_simplify: bool = True, dynamic_batch: bool = False) -> Path:
    """Eager model -> `out_dir/name_b{batch}.onnx` (opset 16, simplified) and the Paddle model
    `name_b{batch}_paddle/`. `bake=True` fixes im_shape = size and scale_factor = 1 (the seed's
    trt=True engine input). `dynamic_batch=True` -> `name_bN.onnx`: one file for every batch
    size, baked (so `batch` and `bake` are ignored). Written whole or not at all (`staged`)."""
    size = trace_size(model, size)
    stem = f"{name}_bN" if dynamic_batch else f"{name}_b{batch}"
    with staged(Path(out_dir) / f"{stem}.onnx") as stage:
        inference_dir = export_inference(model, stage / f"{stem}_paddle",
                                         None if dynamic_batch else batch, size)
        path = to_onnx(inference_dir, stage / f"{stem}.onnx")
        if bake and not dynamic_batch:  # a dynamic-batch program computes them itself
            path = bake_inputs(path, path, {"im_shape": [list(map(float, size))] * batch,
                                            "scale_factor": [[1.0, 1.0]] * batch})
        if run_simplify:
            simplify(path, path)
        if dynamic_batch:
            name_batch_axis(path)
        check_onnx(path)
    return Path(out_dir) / f"{stem}.onnx"


def beside(onnx_path: PathLike, suffix: str) -> Path:
    """A path next to an export, named after it: `beside(path, "_paddle")` is the Paddle model
    `export_onnx` wrote with it, `beside(path, "_int8.onnx")` the name its int8 copy takes."""
    path = Path(onnx_path)
    return path.with_name(path.stem + suffix)


def name_batch_axis(onnx_path: PathLike) -> None:
    """Call the image's first axis `batch` (paddle2onnx and onnxsim leave it unnamed or `-1`):
    what runtimes and TensorRT profiles show; refuse a file where it is not symbolic."""
    import onnx

    model = onnx.load(str(onnx_path))
    axis = model.graph.input[0].type.tensor_type.shape.dim[0]
    if axis.dim_value > 0:
        raise RuntimeError(f"{onnx_path}: the batch axis became fixed ({axis.dim_value})")
    axis.dim_param = "batch"
    onnx.save(model, str(onnx_path))


def check_onnx(onnx_path: PathLike) -> None:
    """Refuse an ONNX file that does not load and check whole (what a full disk leaves)."""
    import onnx

    try:
        onnx.checker.check_model(onnx.load(str(onnx_path)))
    except Exception as err:  # protobuf's DecodeError, onnx's ValidationError, OSError
        raise OSError(f"export failed: {onnx_path} is not a whole ONNX model ({err}); the "
                      f"earlier export is left as it was") from err


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
        # ORT's idle threads spin for a while after each run: measured, that slowed the next
        # paddle run in the same process by about a third (one process often runs both)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), options,
                                            providers=providers or ["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """inputs: image [B, 3, H, W] float32 in 0..1 (+ im_shape, scale_factor unless baked)."""
        check_image(inputs["image"])
        feeds = {n: np.ascontiguousarray(inputs[n], dtype="float32") for n in self.input_names}
        outputs = self.session.run(list(OUTPUTS), feeds)
        return dict(zip(OUTPUTS, outputs))
