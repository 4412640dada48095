"""TensorRT: an FP16 engine from the baked ONNX export, cached, and a predictor that runs it.

The seed's last step (`trtexec --onnx=... --fp16 --avgRuns=1000`) with the TensorRT 10 Python
API. An engine only runs with the TensorRT version and on the GPU model that built it, so the
cached file's name carries a hash of the ONNX file and of every build setting (`engine_path`).
Device buffers are paddle GPU tensors (paddlepaddle-gpu is what GPU users install), so no
pycuda is needed. Needs a GPU with `tensorrt` installed (environment-gpu.yml); imported lazily.

A dynamic-batch export (`export_onnx(..., dynamic_batch=True)`, image [batch, 3, H, W]) gets an
optimisation profile: TensorRT tunes its kernels for `opt` images and accepts min..max.

Supported versions: TensorRT 10.x (environment-gpu.yml pins tensorrt-cu12 10.13.3.9). The FP16
build is a weakly typed network: `BuilderFlag.FP16` plus per-layer FP32 precision under
`OBEY_PRECISION_CONSTRAINTS`. TensorRT 10.12 deprecated all three in favour of strongly typed
networks (still working through 10.x, with deprecation warnings); TensorRT 11 removed them, so
11+ is refused: there an FP16 engine needs an ONNX whose tensors are FP16 already (e.g. converted
by ModelOpt AutoCast), which this course does not make.
"""

import hashlib
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..files import atomic_write
from .paddle import OUTPUTS

PathLike = Union[str, Path]
LOGGER = logging.getLogger(__name__)
SUPPORTED_MAJOR = 10
PROFILE = (1, 1, 8)  # min, opt, max batch of a dynamic-batch engine: tuned for latency (1)
BAKE_HINT = ("bake im_shape/scale_factor in: export_onnx(model, out_dir, name, batch=B, "
             "bake=True), or `python -m mrtdetr_lib export -c CONFIG -o trt=True`")


def tensorrt_available() -> Optional[str]:
    """None when TensorRT can run here, else the reason it cannot."""
    try:
        import tensorrt as trt
    except ImportError:
        return "the tensorrt package is not installed (see environment-gpu.yml)"
    if int(trt.__version__.split(".")[0]) != SUPPORTED_MAJOR:
        return (f"tensorrt {trt.__version__} is installed; this path supports TensorRT "
                f"{SUPPORTED_MAJOR}.x (weakly typed FP16, removed in 11)")
    import paddle
    if not paddle.device.is_compiled_with_cuda() or paddle.device.cuda.device_count() == 0:
        return "no CUDA GPU visible to paddle (install paddlepaddle-gpu on a GPU machine)"
    return None


def check_baked(onnx_path: PathLike) -> bool:
    """Refuse an ONNX file with inputs besides `image` or an output of unknown size besides
    the batch axis; True when that axis is symbolic (a dynamic-batch export).

    Unbaked, im_shape/scale_factor are inputs and the mask output is [k, ?, ?] (its size is the
    original image size, computed at run time); the engines here are built for fixed shapes
    (or, along the batch axis only, for an optimisation profile).
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inputs = [i.name for i in graph.input]
    dynamic = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
               for o in graph.output
               if any(d.dim_param or d.dim_value <= 0 for d in o.type.tensor_type.shape.dim[1:])}
    if inputs != ["image"] or dynamic:
        raise ValueError(f"{onnx_path} is not a baked export (inputs {inputs}, outputs of "
                         f"dynamic shape {dynamic}): TensorRT engines here have fixed shapes; "
                         f"{BAKE_HINT}")
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    return bool(batch.dim_param) or batch.dim_value <= 0


def add_profile(builder, network, config, batches: Sequence[int]) -> Tuple[List[int], ...]:
    """An optimisation profile for the image's batch axis: (min, opt, max) batch sizes ->
    the three image shapes set on it."""
    low, opt, high = batches
    if not 1 <= low <= opt <= high:
        raise ValueError(f"profile batches {tuple(batches)}: need 1 <= min <= opt <= max")
    image = network.get_input(0)
    shapes = tuple([b, *image.shape[1:]] for b in (low, opt, high))
    profile = builder.create_optimization_profile()
    profile.set_shape(image.name, *shapes)
    config.add_optimization_profile(profile)
    return shapes


def _import_tensorrt():
    """The tensorrt module, or a clear error for a version this path does not support."""
    import tensorrt as trt

    if int(trt.__version__.split(".")[0]) != SUPPORTED_MAJOR:
        raise RuntimeError(f"tensorrt {trt.__version__}: this path builds a weakly typed FP16 "
                           f"network (BuilderFlag.FP16, per-layer precision), TensorRT "
                           f"{SUPPORTED_MAJOR}.x only; install the pin in environment-gpu.yml")
    return trt


def gpu_identity() -> Dict[str, str]:
    """Name and compute capability of GPU 0: an engine runs only on the GPU model it was
    built for."""
    import paddle

    major, minor = paddle.device.cuda.get_device_capability(0)
    return {"gpu": paddle.device.cuda.get_device_name(0),
            "compute_capability": f"{major}.{minor}"}


def engine_path(onnx_path: PathLike, settings: Dict, cache_dir: Optional[PathLike] = None) -> Path:
    """exports/<onnx stem>.<hash of the ONNX file and settings>.trt<version>.<fp16|fp32>.engine.

    `settings` is everything the engine depends on besides the ONNX file: GPU name and compute
    capability, TensorRT version, builder flags, FP32 layers, workspace bytes. Change any one and
    the engine is rebuilt into its own file.
    """
    digest = hashlib.sha256(Path(onnx_path).read_bytes())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    folder = Path(cache_dir) if cache_dir else Path(onnx_path).parent
    precision = "fp16" if "FP16" in settings.get("flags", []) else "fp32"
    name = f"{Path(onnx_path).stem}.{digest.hexdigest()[:16]}"
    return folder / f"{name}.trt{settings.get('tensorrt', 'unknown')}.{precision}.engine"


def _fp32_rules(trt) -> Dict:
    """Layer type -> None (every such layer) or (layer class, operations) kept in FP32.

    By type, not by name: at opset 16 paddle2onnx decomposes LayerNorm into ReduceMean, Sub,
    Pow, ReduceMean, Add, Sqrt, Div, whose layer names never say "LayerNorm". Pow squares
    values (above 256 that overflows FP16's 65504), the reductions average many values and
    Softmax exponentiates: those go in FP32. NORMALIZATION covers a fused LayerNormalization.
    """
    return {trt.LayerType.NORMALIZATION: None, trt.LayerType.REDUCE: None,
            trt.LayerType.SOFTMAX: None,
            trt.LayerType.ELEMENTWISE: (trt.IElementWiseLayer, {trt.ElementWiseOperation.POW}),
            trt.LayerType.UNARY: (trt.IUnaryLayer, {trt.UnaryOperation.SQRT})}


def fp32_layers(network, trt) -> List:
    """The parsed network's layers to keep in FP32 (see `_fp32_rules`), float outputs only;
    logs how many of each type."""
    rules, chosen = _fp32_rules(trt), []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type not in rules:
            continue
        rule = rules[layer.type]
        if rule is not None:
            layer.__class__ = rule[0]  # get_layer returns an ILayer: downcast to read .op
            if layer.op not in rule[1]:
                continue
        # integer layers (e.g. ReduceMax over an int32 mask) have no FP32 precision to keep
        if all(layer.get_output(j).dtype == trt.float32 for j in range(layer.num_outputs)):
            chosen.append(layer)
    counts = Counter(str(layer.type).split(".")[-1] for layer in chosen)
    LOGGER.info("TensorRT FP16: %d layers kept in FP32 (%s)", len(chosen),
                ", ".join(f"{n} {t}" for t, n in sorted(counts.items())) or "none")
    if not chosen:
        LOGGER.warning("TensorRT FP16: no layer matched the FP32 rules; all may run in FP16")
    return chosen


def _parse(onnx_path: PathLike, trt, logger):
    """(builder, network, parser) with the ONNX file parsed; a parse error names each problem."""
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch, weakly typed
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    return builder, network, parser


def build_trt_engine(onnx_path: PathLike, fp16: bool = True, workspace_gb: float = 4.0,
                     cache_dir: Optional[PathLike] = None, keep_fp32: bool = True,
                     profile: Sequence[int] = PROFILE) -> Path:
    """Parse the baked ONNX, build a (FP16) engine and serialise it next to it with its settings
    (`.json`); reuse a cached engine built with the same settings.

    The ONNX must have static shapes: export with a fixed batch and `bake=True` (simplified),
    as the seed's trtexec command expects, or `dynamic_batch=True`, which gets `profile`
    (min, opt, max batch). The network is parsed even on a cache hit: the FP32 layer list is
    part of the cache key.
    """
    dynamic = check_baked(onnx_path)
    trt = _import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder, network, _parser = _parse(onnx_path, trt, logger)  # the parser owns the weights
    kept = fp32_layers(network, trt) if fp16 and keep_fp32 else []
    flags = (["FP16"] if fp16 else []) + (["OBEY_PRECISION_CONSTRAINTS"] if kept else [])
    workspace = int(workspace_gb * (1 << 30))
    settings = {**gpu_identity(), "tensorrt": trt.__version__, "flags": flags,
                "fp32_layers": [layer.name for layer in kept], "workspace_bytes": workspace}
    if dynamic:
        settings["profile_batches"] = list(profile)
    path = engine_path(onnx_path, settings, cache_dir)
    if path.is_file():
        return path
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if dynamic:
        add_profile(builder, network, config, profile)
    for flag in flags:  # deprecated since 10.12 (weak typing), still honoured in 10.x
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for layer in kept:
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_path}")
    sidecar = json.dumps(settings, indent=1)
    atomic_write(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(sidecar))
    # the engine last, atomically: a half-written engine is never picked up
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(bytes(serialized)))
    return path


def _load_engine(engine_file: Path, trt):
    """(runtime, engine) from a serialised engine; a clear error when it cannot load here."""
    if not engine_file.is_file():
        raise FileNotFoundError(f"TensorRT engine not found: {engine_file} "
                                "(build it with build_trt_engine)")
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_file.read_bytes())
    if engine is None:
        sidecar = engine_file.with_suffix(".json")
        built = json.loads(sidecar.read_text()) if sidecar.is_file() else "unknown settings"
        here = {**gpu_identity(), "tensorrt": trt.__version__}
        raise RuntimeError(f"TensorRT could not deserialize {engine_file}: an engine loads only "
                           f"with the TensorRT version and on the GPU model that built it "
                           f"(built with {built}; here {here}). Rebuild it with "
                           f"build_trt_engine(onnx_path) on this machine.")
    return runtime, engine


class TrtPredictor:
    """Run a TensorRT engine: `predictor(inputs)` -> {bbox, bbox_num, mask} (numpy)."""

    def __init__(self, engine_file: PathLike):
        import paddle

        trt = _import_tensorrt()
        self._paddle = paddle
        self.runtime, self.engine = _load_engine(Path(engine_file), trt)
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names
                            if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        self.shapes = {n: list(self.engine.get_tensor_shape(n)) for n in names}
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.buffers: Dict = {}
        if -1 not in self.shapes[self.input_names[0]]:
            self._allocate_outputs()  # fixed shapes: once

    def _allocate_outputs(self) -> None:
        """Output buffers of the shapes the context reports for its current input shapes."""
        for name in self.output_names:
            shape = list(self.context.get_tensor_shape(name))
            self.buffers[name] = self._paddle.zeros(shape, dtype=self.dtypes[name].name).cuda()

    def __call__(self, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """inputs: image [B, 3, H, W] numpy float32, of the shape the engine was built for."""
        paddle = self._paddle
        for name in self.input_names:
            array = np.ascontiguousarray(inputs[name], dtype=self.dtypes[name])
            expected = self.shapes[name]
            if any(e not in (-1, a) for e, a in zip(expected, array.shape)) \
                    or len(expected) != array.ndim:
                raise ValueError(f"{name}: the engine was built for shape {expected} (-1: any "
                                 f"batch in its profile), got {list(array.shape)}")
            if -1 in expected and list(self.context.get_tensor_shape(name)) != list(array.shape):
                self.context.set_input_shape(name, array.shape)  # a dynamic-batch engine
                self._allocate_outputs()
            self.buffers[name] = paddle.to_tensor(array, place=paddle.CUDAPlace(0))
        # every call: a new input tensor (or a copy_ that reallocated one) has a new address
        for name, tensor in self.buffers.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        stream = paddle.device.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return {name: self.buffers[name].numpy() for name in OUTPUTS}

    def benchmark(self, inputs: Dict[str, np.ndarray], warmup: int = 50,
                  avg_runs: int = 1000) -> Dict[str, float]:
        """trtexec-style timing: GPU compute only (inputs stay on the device) over avg_runs;
        fps from the mean latency times the batch, as trtexec's throughput; the quartiles
        and the run counts for the latency protocol."""
        self(inputs)  # sets the addresses the timed runs reuse
        stream = self._paddle.device.cuda.current_stream()
        for _ in range(warmup):
            self.context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        times = []
        for _ in range(avg_runs):
            start = time.perf_counter()
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            stream.synchronize()
            times.append((time.perf_counter() - start) * 1000)
        mean = float(np.mean(times))
        q25, q75 = np.percentile(times, [25, 75])
        batch = len(inputs[self.input_names[0]])
        return {"median_ms": float(np.median(times)), "mean_ms": mean, "q25_ms": float(q25),
                "q75_ms": float(q75), "warmup": warmup, "runs": avg_runs,
                "fps": 1000.0 / mean * batch}
