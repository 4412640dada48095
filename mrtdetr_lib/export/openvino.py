"""OpenVINO on CPU: the ONNX export run by Intel's runtime, fp32, bf16 or int8.

OpenVINO reads the ONNX file itself (no conversion step, no IR files on disk) and compiles it
for the CPU with the LATENCY hint (one stream: all threads on one request, batch 1). Precision:
* fp32: `INFERENCE_PRECISION_HINT=f32`, OpenVINO's own kernels (oneDNN), no accuracy change;
* bf16: where the CPU reports BF16 in OPTIMIZATION_CAPABILITIES (AVX512_BF16 or AMX), matmuls
  and convolutions in bfloat16 (8 bits of mantissa: boxes move by a few tenths of a pixel);
* int8: the QDQ file `quantize.quantize_onnx` writes for ONNX Runtime; OpenVINO turns each
  QuantizeLinear/DequantizeLinear pair around a Conv into an int8 convolution (its low
  precision transformations), so one calibrated file serves both runtimes; the rest in f32;
* int8_bf16: the same file with the rest (the decoder's linears, attention, the mask head) in
  bf16, where the CPU has it: on L at 640 on a 2-core AMX Xeon the fastest CPU path measured
  (178 ms in `bench/bench_deploy.py`; the int8 convolutions themselves take about 30 ms).
`profile=True` + `node_times` give OpenVINO's own time per node, to see where the rest goes.
Same contract as the other predictors: `predictor(inputs)` -> {bbox, bbox_num, mask} (numpy).
"""

import contextlib
import ctypes
import functools
import os
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Union

import numpy as np

from ..errors import UserError
from .paddle import OUTPUTS, check_image

PathLike = Union[str, Path]
PRECISIONS = ("fp32", "bf16", "int8", "int8_bf16")


class _SignalStack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int),
                ("ss_size", ctypes.c_size_t)]


@contextlib.contextmanager
def keep_signal_stack() -> Iterator[None]:
    """Give the calling thread back its signal stack (`sigaltstack`) after OpenVINO's call.

    OpenVINO 2026.4's CPU plugin installs a stack of its own on the thread that compiles a model
    and can unmap it later without handing the old one back. The next signal with an
    SA_ONSTACK handler (Python's handlers are; paddle's multi-process loader adds one for
    SIGCHLD) then finds no stack, and the kernel kills the process with SIGSEGV: our test
    suite died that way in CI, at the first subprocess after an OpenVINO test. Linux only."""
    if not sys.platform.startswith("linux"):
        yield
        return
    saved = _SignalStack()
    _libc().sigaltstack(None, ctypes.byref(saved))
    try:
        yield
    finally:
        _libc().sigaltstack(ctypes.byref(saved), None)


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    """The C library, opened once (every inference call goes through keep_signal_stack)."""
    return ctypes.CDLL(None, use_errno=True)


def cpu_capabilities() -> List[str]:
    """The CPU plugin's OPTIMIZATION_CAPABILITIES, e.g. ['FP32', 'INT8', 'BF16', ...]."""
    import openvino as ov

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def precision_of(name: str) -> str:
    """The precision an OpenVINO backend or run-mode name asks for: "openvino" -> "fp32",
    "openvino_int8_bf16" -> "int8_bf16" (course backends and `mrtdetr deploy` modes alike)."""
    return name[len("openvino_"):] if name.startswith("openvino_") else "fp32"


def bf16_available() -> bool:
    """True when this CPU computes in bfloat16 natively (OpenVINO reports BF16)."""
    return "BF16" in cpu_capabilities()


def time_by_type(nodes: List[Dict[str, object]]) -> Dict[str, float]:
    """`node_times` rows -> ms per call by node type (Convolution, Reorder, ...), largest first."""
    totals: Dict[str, float] = {}
    for row in nodes:
        totals[row["type"]] = totals.get(row["type"], 0.0) + row["ms"]
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


class OpenVinoPredictor:
    """OpenVINO CPU on an ONNX export: `predictor(inputs)` -> {bbox, bbox_num, mask}.

    `precision`: "fp32", "bf16" (refused where the CPU lacks it), "int8" (give the QDQ file
    of `quantize_onnx`; computed as int8 where the file says so, fp32 elsewhere) or "int8_bf16"
    (the same, bf16 elsewhere; refused where the CPU lacks bf16). `profile=True` turns on
    OpenVINO's own per-node timing, read with `node_times`.
    """

    def __init__(self, onnx_path: PathLike, threads: int = 0, precision: str = "fp32",
                 profile: bool = False):
        import openvino as ov

        if precision not in PRECISIONS:
            raise UserError(f"precision {precision!r}: choose from {PRECISIONS}")
        if not Path(onnx_path).is_file():
            raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
        core = ov.Core()
        bf16 = precision.endswith("bf16")
        if bf16 and "BF16" not in cpu_capabilities():
            raise RuntimeError(f"precision={precision!r}: this CPU has no bfloat16 support "
                               f"(OpenVINO reports {cpu_capabilities()}); use "
                               f"{'int8' if precision.startswith('int8') else 'fp32'!r}")
        # f32 spelt out: on AMX/AVX512_BF16 CPUs OpenVINO's default would be bf16
        config = {"INFERENCE_NUM_THREADS": threads or os.cpu_count() or 1,
                  "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
                  "PERF_COUNT": profile}  # per-node times for `node_times`
        self.precision, self.profile = precision, profile
        with keep_signal_stack():
            self.compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)
            self.request = self.compiled.create_infer_request()
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        self.batch = self.compiled.inputs[0].get_partial_shape()[0]

    def __call__(self, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """inputs: image [B, 3, H, W] float32 in 0..1 (+ im_shape, scale_factor unless baked)."""
        check_image(inputs["image"])
        feeds = {n: np.ascontiguousarray(inputs[n], dtype="float32") for n in self.input_names}
        with keep_signal_stack():
            results = self.request.infer(feeds)
        # infer() already copies each output out of the request's buffers (share_outputs=False,
        # its default), so these are the caller's arrays: a second copy of L's 100 masks of
        # 640 x 640 int32 (164 MB) cost about 30 ms a call
        return {name: results[self.compiled.output(name)] for name in OUTPUTS}

    def node_times(self, inputs: Dict[str, np.ndarray], runs: int = 5) -> List[Dict[str, object]]:
        """OpenVINO's per-node profile over `runs` calls, slowest first: [{node, type, kernel,
        ms}] (ms per call). The kernel names the implementation: "jit_*", "brgemm_*" and
        "brgconv_*" are the fast ones; "ref_*" and "unknown_*" are generic fallbacks."""
        if not self.profile:
            raise UserError("node_times needs OpenVinoPredictor(..., profile=True)")
        totals: Dict[str, Dict[str, object]] = {}
        for _ in range(runs):
            self(inputs)
            for info in self.request.profiling_info:
                row = totals.setdefault(info.node_name, {
                    "node": info.node_name, "type": info.node_type, "kernel": info.exec_type,
                    "ms": 0.0})
                row["ms"] += info.real_time.total_seconds() * 1e3 / runs
        return sorted(totals.values(), key=lambda row: -row["ms"])
