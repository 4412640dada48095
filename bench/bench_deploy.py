"""Deployment latency on CPU (and GPU where TensorRT runs): one JSON line per measurement.

    python bench/bench_deploy.py [--backends eager paddle-inference ort ort-int8 openvino
        openvino-bf16 openvino-int8 openvino-int8-bf16 trt]
        [--archs tiny s l] [--queries 300 100] [--batches 1 4] [--runs 10] [--quick] [--int8]
        [--profile]

Backends: `eager` (the library model, paddle dynamic graph), `paddle-inference`
(export.PaddlePredictor on the jit.save'd program), `ort` (export.OnnxPredictor, fp32),
`ort-int8` (the same ONNX quantised by export.quantize_onnx: int8 convolutions calibrated on
random images), `openvino`, `openvino-bf16` (where the CPU has bf16), `openvino-int8` and
`openvino-int8-bf16` (int8 convolutions, the rest in bf16: the same two ONNX files in OpenVINO,
export.OpenVinoPredictor), `trt` (FP16 TensorRT engine, only
where `tensorrt_available()` is None; else a `skipped` line with the reason). Each (arch,
num_queries, batch) is exported once per batch size (fixed-batch exports) into `--exports`
(default: a temporary folder). Inputs are random at the preset's eval size; the weights are
random too: latency does not depend on their values. The `tiny` preset has 100 queries, so for
it `--queries 300` means its own 100 and `--queries 100` means 50 (see `queries_note`). The
backends of one configuration and one runtime are timed interleaved (one call each per round,
the order rotating: a change of load hits them alike), one runtime after another
(`export.benchmark.times_by_runtime`); every line carries the latency protocol
(`latency_record`): median and IQR of `--runs` timed calls after `--warmup` untimed ones, the
machine (CPU model, cores, threads) and library versions. Targets on the 2-core machine, l
at 640, batch 1, 300 queries: `ort` <= 800 ms (PaddleDetection's own export there), `ort-int8`
>= 1.5x faster than `ort` (`speedup_vs_ort`), the fastest fp32 backend <= 300 ms and the fastest
int8 one <= 180 ms (the lines with `fastest`). `--profile` compiles the OpenVINO backends with
their per-node timing on (PERF_COUNT; it costs a little time) and adds a `profile` line for each:
the time by node type and the slowest nodes with their kernels (`OpenVinoPredictor.node_times`).
"""

import argparse
import gc
import json
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

import mrtdetr_lib as mrt
from mrtdetr_lib.export.benchmark import latency_record, runtime, times_by_runtime

BACKENDS = ("eager", "paddle-inference", "ort", "ort-int8", "openvino", "openvino-bf16",
            "openvino-int8", "openvino-int8-bf16", "trt")
FP32 = ("paddle-inference", "ort", "openvino", "trt")
INT8 = ("ort-int8", "openvino-int8", "openvino-int8-bf16")
TARGET_FASTEST_MS = {("l", 640, 1, 300): {"fp32": 300, "int8": 180}}
TINY_QUERIES = {300: 100, 100: 50}  # tiny's preset has 100 queries: its own, and fewer
TARGET_ORT_MS = {("l", 640, 1, 300): 800}
TARGET_INT8_SPEEDUP = 1.5


def random_inputs(batch: int, size, seed: int = 0) -> Dict[str, np.ndarray]:
    """image [B, 3, H, W] in 0..1, im_shape = size, scale_factor = 1 (numpy float32)."""
    rng = np.random.default_rng(seed)
    return {"image": rng.random((batch, 3, *size), dtype=np.float32),
            "im_shape": np.array([size] * batch, np.float32),
            "scale_factor": np.ones((batch, 2), np.float32)}


def calibration_images(count: int = 2, size=(480, 640)) -> List[np.ndarray]:
    """Smooth random RGB images: int8 speed does not depend on the calibrated ranges (few:
    onnxruntime's calibrator keeps every activation of every image, GBs for L)."""
    import cv2

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (count, size[0] // 16, size[1] // 16, 3), dtype=np.uint8)
    return [cv2.resize(s, size[::-1], interpolation=cv2.INTER_CUBIC) for s in small]


def predictors(backends: List[str], model, folder: Path, name: str, batch: int,
               threads: int, profile: bool = False) -> Dict[str, Callable]:
    """backend -> callable(numpy inputs), exporting what the backends need; unavailable -> str."""
    from mrtdetr_lib.export import (
        OnnxPredictor,
        PaddlePredictor,
        beside,
        export_onnx,
        tensorrt_available,
    )
    from mrtdetr_lib.export.quantize import calibration_inputs, quantize_onnx

    out: Dict[str, Callable] = {}
    onnx_path = int8_path = None
    if "eager" in backends:
        out["eager"] = eager_predictor(model)
    if set(backends) - {"eager", "trt"}:
        onnx_path = export_onnx(model, folder, name, batch=batch)  # writes the paddle one too
    if "paddle-inference" in backends:
        out["paddle-inference"] = PaddlePredictor(beside(onnx_path, "_paddle"), threads=threads)
    if "ort" in backends:
        out["ort"] = OnnxPredictor(onnx_path, threads=threads)
    if set(backends) & set(INT8):
        int8_path = quantize_onnx(onnx_path, beside(onnx_path, "_int8.onnx"),
                                  calibration_inputs(calibration_images(), onnx_path))
    if "ort-int8" in backends:
        out["ort-int8"] = OnnxPredictor(int8_path, threads=threads)
    out.update(openvino_predictors(backends, onnx_path, int8_path, threads, profile))
    if "trt" in backends:
        reason = tensorrt_available()
        out["trt"] = reason or trt_predictor(model, folder, name, batch)
    return out


def openvino_predictors(backends: List[str], onnx_path, int8_path, threads: int,
                        profile: bool = False) -> Dict[str, Callable]:
    """OpenVINO on the fp32 and int8 ONNX files; bf16 where the CPU has it, else a reason."""
    from mrtdetr_lib.export.openvino import OpenVinoPredictor, bf16_available

    out: Dict[str, Callable] = {}
    for backend, path, precision in (("openvino", onnx_path, "fp32"),
                                     ("openvino-bf16", onnx_path, "bf16"),
                                     ("openvino-int8", int8_path, "int8"),
                                     ("openvino-int8-bf16", int8_path, "int8_bf16")):
        if backend not in backends:
            continue
        if precision.endswith("bf16") and not bf16_available():
            out[backend] = "this CPU has no bfloat16 (OpenVINO's OPTIMIZATION_CAPABILITIES)"
        else:
            out[backend] = OpenVinoPredictor(path, threads=threads, precision=precision,
                                             profile=profile)
    return out


def eager_predictor(model) -> Callable:
    """The library model on numpy inputs, without gradients."""
    import paddle

    def run(inputs: Dict[str, np.ndarray]):
        with paddle.no_grad():
            return model({k: paddle.to_tensor(v) for k, v in inputs.items()})
    return run


def trt_predictor(model, folder: Path, name: str, batch: int) -> Callable:
    """FP16 engine of the baked export (the seed's trt=True), fed only the image."""
    from mrtdetr_lib.export import TrtPredictor, build_trt_engine, export_onnx

    baked = export_onnx(model, folder / "baked", name, batch=batch, bake=True)
    predictor = TrtPredictor(build_trt_engine(baked, fp16=True))
    return lambda inputs: predictor({"image": inputs["image"]})


def measure(arch: str, queries: int, batch: int, args, folder: Path) -> List[Dict]:
    """Every backend on one (arch, num_queries, batch) -> JSON-ready dicts."""
    import paddle

    preset = mrt.model_config(arch)
    num_queries = TINY_QUERIES.get(queries, queries) if arch == "tiny" else queries
    paddle.seed(0)
    model = mrt.build_model(arch, num_queries=num_queries,
                            num_top_queries=min(preset.num_top_queries, num_queries))
    model.eval()
    size = tuple(preset.eval_size)
    inputs = random_inputs(batch, size)
    common = {"arch": arch, "size": list(size), "num_queries": num_queries, "batch": batch,
              "threads": args.threads, "weights": "random (latency does not depend on them)"}
    if arch == "tiny":
        common["queries_note"] = f"tiny preset has {preset.num_queries} queries: {queries} -> " \
                                 f"{num_queries}"
    runs = predictors(args.backends, model, folder, f"{arch}_q{num_queries}", batch,
                      args.threads, args.profile)
    lines = [{"backend": b, **common, "skipped": r} for b, r in runs.items() if isinstance(r, str)]
    timed_backends = [b for b, r in runs.items() if not isinstance(r, str)]
    times_ms = times_by_runtime({b: lambda r=runs[b]: r(inputs) for b in timed_backends},
                                runtime, args.runs, args.warmup)
    for backend, row in times_ms.items():
        lines.append({"backend": backend, **common, **latency_record(row / 1000, args.warmup,
                                                                     args.threads),
                      "min_ms": round(float(row.min()), 1),
                      "interleaved": [b for b in timed_backends
                                      if runtime(b) == runtime(backend)]})
    add_targets(lines, arch, size[0], batch, num_queries)
    if args.profile:
        lines += [profile_line(b, runs[b], inputs, common) for b in timed_backends
                  if b.startswith("openvino")]
    return lines


def profile_line(backend: str, predictor, inputs: Dict[str, np.ndarray], common: Dict,
                 slowest: int = 12) -> Dict:
    """OpenVINO's own profile of one backend: ms by node type and the slowest nodes."""
    from mrtdetr_lib.export.openvino import time_by_type

    rows = predictor.node_times(inputs)
    by_type = time_by_type(rows)
    return {"profile": backend, **common, "sum_ms": round(sum(by_type.values()), 1),
            "by_type_ms": {k: round(v, 1) for k, v in list(by_type.items())[:10]},
            "slowest": [{**row, "ms": round(row["ms"], 2)} for row in rows[:slowest]]}


def add_targets(lines: List[Dict], arch: str, size: int, batch: int, queries: int) -> None:
    """The issue's targets: fp32 ORT time for L, int8 speed-up over fp32 ORT."""
    by_backend = {line["backend"]: line for line in lines if "median_ms" in line}
    ort = by_backend.get("ort")
    target = TARGET_ORT_MS.get((arch, size, batch, queries))
    if ort and target:
        ort.update(target_ms=target, meets_target=ort["median_ms"] <= target)
    int8 = by_backend.get("ort-int8")
    if ort and int8:
        speedup = round(ort["median_ms"] / int8["median_ms"], 2)
        int8.update(speedup_vs_ort=speedup, target_speedup=TARGET_INT8_SPEEDUP,
                    meets_target=speedup >= TARGET_INT8_SPEEDUP)
    for kind, names in (("fp32", FP32), ("int8", INT8)):
        chosen = [by_backend[n] for n in names if n in by_backend]
        targets = TARGET_FASTEST_MS.get((arch, size, batch, queries))
        if chosen and targets:
            best = min(chosen, key=lambda line: line["median_ms"])
            lines.append({"fastest": kind, "backend": best["backend"], "arch": arch,
                          "median_ms": best["median_ms"], "target_ms": targets[kind],
                          "meets_target": best["median_ms"] <= targets[kind]})


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["eager", "paddle-inference", "ort",
                                                          "trt"], choices=BACKENDS)
    parser.add_argument("--int8", action="store_true", help="add the ort-int8 backend")
    parser.add_argument("--archs", nargs="+", default=["tiny", "s", "l"], choices=list(mrt.ARCHS))
    parser.add_argument("--queries", type=int, nargs="+", default=[300, 100],
                        help="num_queries (tiny: 300 -> its own 100, 100 -> 50)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--runs", type=int, default=None, help="timed runs (default 10; 3 quick)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed runs (default 2; 1 quick)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads of every backend (0: env MRTDETR_THREADS, else all)")
    parser.add_argument("--exports", default=None,
                        help="folder for the exports (default: a temporary folder)")
    parser.add_argument("--profile", action="store_true",
                        help="OpenVINO's per-node profile of each OpenVINO backend")
    parser.add_argument("--quick", action="store_true",
                        help="tiny, 100 queries, batch 1, few runs (also with MRTDETR_QUICK=1)")
    args = parser.parse_args(argv)
    quick = args.quick or mrt.quick_mode()
    if args.quick:
        args.archs, args.queries, args.batches = ["tiny"], [300], [1]
    if args.int8 and "ort-int8" not in args.backends:
        args.backends.append("ort-int8")
    args.runs = args.runs or (3 if quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    args.threads = mrt.setup(args.threads)  # paddle; passed on to the predictors
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_deploy.") as tmp:
        folder = Path(args.exports or tmp)
        for arch in args.archs:
            for queries in args.queries:
                for batch in args.batches:
                    for line in measure(arch, queries, batch, args, folder):
                        print(json.dumps(line), flush=True)
                    gc.collect()  # free one configuration's sessions before the next
    return 0


if __name__ == "__main__":
    sys.exit(main())
