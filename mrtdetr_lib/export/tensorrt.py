"""TensorRT: an FP16 engine from the ONNX export, cached, and a predictor that runs it.

The seed's last step (`trtexec --onnx=... --fp16 --avgRuns=1000`) with the TensorRT 10 Python
API. Engines are specific to a GPU and a TensorRT version, so the cached file's name carries the
ONNX file's hash and the TensorRT version: change either and it is rebuilt. Device buffers are
paddle GPU tensors (paddlepaddle-gpu is what GPU users install), so no pycuda is needed.
Needs a GPU with `tensorrt` installed (environment-gpu.yml); imported lazily.
"""

import hashlib
import time
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np

from .paddle import OUTPUTS

PathLike = Union[str, Path]
# LayerNorm and Softmax over many values lose precision in FP16 (TensorRT warns about the
# former); keeping these layer types in FP32 is cheap insurance for the scores.
FP32_LAYER_HINTS = ("LayerNorm", "layer_norm", "Softmax", "ReduceMean", "Pow", "Sqrt")


def tensorrt_available() -> Optional[str]:
    """None when TensorRT can run here, else the reason it cannot."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt package is not installed (see environment-gpu.yml)"
    import paddle
    if not paddle.device.is_compiled_with_cuda() or paddle.device.cuda.device_count() == 0:
        return "no CUDA GPU visible to paddle (install paddlepaddle-gpu on a GPU machine)"
    return None


def engine_path(onnx_path: PathLike, fp16: bool, cache_dir: Optional[PathLike] = None) -> Path:
    """exports/<onnx stem>.<onnx hash>.trt<version>.<fp16|fp32>.engine."""
    import tensorrt as trt

    digest = hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest()[:12]
    folder = Path(cache_dir) if cache_dir else Path(onnx_path).parent
    precision = "fp16" if fp16 else "fp32"
    return folder / f"{Path(onnx_path).stem}.{digest}.trt{trt.__version__}.{precision}.engine"


def _keep_fp32(network, hints=FP32_LAYER_HINTS) -> List[str]:
    """Pin layers whose names look numerically sensitive to FP32; returns their names."""
    import tensorrt as trt

    kept = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if any(h in layer.name for h in hints) and layer.type != trt.LayerType.CONSTANT:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            kept.append(layer.name)
    return kept


def build_trt_engine(onnx_path: PathLike, fp16: bool = True, workspace_gb: float = 4.0,
                     cache_dir: Optional[PathLike] = None, keep_fp32: bool = True) -> Path:
    """Parse the ONNX file, build a (FP16) engine, serialise it next to it; reuse a cached one.

    The ONNX must have static shapes (export with a fixed batch and `bake=True`, then
    simplified), as the seed's trtexec command expects.
    """
    import tensorrt as trt

    path = engine_path(onnx_path, fp16, cache_dir)
    if path.is_file():
        return path
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        if keep_fp32 and _keep_fp32(network):
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(path)  # atomic: a half-written engine is never picked up
    return path


class TrtPredictor:
    """Run a TensorRT engine: `predictor(inputs)` -> {bbox, bbox_num, mask} (numpy)."""

    def __init__(self, engine_file: PathLike):
        import paddle
        import tensorrt as trt

        self._paddle = paddle
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(engine_file).read_bytes())
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names
                            if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.buffers = {}
        for name in names:  # static shapes: allocate every binding once, on the GPU
            shape = list(self.engine.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))).name
            self.buffers[name] = paddle.zeros(shape, dtype=dtype).cuda()
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())

    def __call__(self, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """inputs: image [B, 3, H, W] (+ im_shape, scale_factor unless baked), numpy float32."""
        paddle = self._paddle
        for name in self.input_names:
            source = paddle.to_tensor(inputs[name], dtype=self.buffers[name].dtype,
                                      place=paddle.CUDAPlace(0))
            self.buffers[name].copy_(source, True)  # in place: the engine holds its address
        stream = paddle.device.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        return {name: self.buffers[name].numpy() for name in OUTPUTS}

    def benchmark(self, inputs: Dict[str, np.ndarray], warmup: int = 50,
                  avg_runs: int = 1000) -> Dict[str, float]:
        """trtexec-style timing: GPU compute only (inputs stay on the device) over avg_runs."""
        self(inputs)
        stream = self._paddle.device.cuda.current_stream()
        for _ in range(warmup):
            self.context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        times = []
        for _ in range(avg_runs):
            start = time.perf_counter()
            self.context.execute_async_v3(stream.cuda_stream)
            stream.synchronize()
            times.append((time.perf_counter() - start) * 1000)
        median = float(np.median(times))
        return {"median_ms": median, "mean_ms": float(np.mean(times)),
                "fps": 1000.0 / median * self.engine.get_tensor_shape(self.input_names[0])[0]}
