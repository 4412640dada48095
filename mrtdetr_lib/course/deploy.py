"""Chapter 06's comparison of CPU backends: one model, four runtimes, their AP, graph and speed.

* eager: the paddle model itself (`query_study.eager_predictor`);
* Paddle Inference: the exported static program (`export.PaddlePredictor`);
* ONNX Runtime fp32: the paddle2onnx export (`export.OnnxPredictor`);
* ONNX Runtime int8: the same ONNX file quantised statically (`export.quantize_onnx`, QDQ,
  calibrated on training images by `export.calibration_inputs`);
* OpenVINO fp32, bf16 (where the CPU has it), int8 and int8 + bf16 (int8 convolutions, the
  rest in bf16; `export.OpenVinoPredictor`) on the same two ONNX files.

`build_backends` exports once per batch size and returns a predictor per backend, all with the
same contract (numpy feeds in, numpy `bbox`/`bbox_num`/`mask` out); `compare_backends` scores
them on a validation split with the AP difference to eager and its bootstrap interval;
`latency_rows` times them (`export.benchmark.times_by_runtime`); `quantization_report`
says what quantisation did to the graph. Taught in notebooks/06_deployment.ipynb.
"""

import copy
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..export import (
    OnnxPredictor,
    OpenVinoPredictor,
    PaddlePredictor,
    beside,
    calibration_inputs,
    export_onnx,
    quantize_onnx,
)
from ..export.benchmark import latency_stats, runtime, times_by_runtime
from ..export.openvino import precision_of, time_by_type
from ..infer import to_instances
from .query_study import bootstrap_ap, eager_predictor, numpy_inputs, score_predictor

PathLike = Union[str, Path]
Predictor = Callable[[Dict[str, Any]], Dict[str, np.ndarray]]
BACKENDS = ("eager", "paddle_inference", "ort_fp32", "ort_int8", "openvino_fp32",
            "openvino_bf16", "openvino_int8", "openvino_int8_bf16")
NAMES = {"eager": "paddle eager", "paddle_inference": "Paddle Inference",
         "ort_fp32": "ONNX Runtime fp32", "ort_int8": "ONNX Runtime int8",
         "openvino_fp32": "OpenVINO fp32", "openvino_bf16": "OpenVINO bf16",
         "openvino_int8": "OpenVINO int8", "openvino_int8_bf16": "OpenVINO int8 + bf16"}


def build_backends(model: Any, out_dir: PathLike, name: str = "model", batch: int = 1,
                   size: Optional[Sequence[int]] = None,
                   calibration_images: Sequence[Any] = (),
                   backends: Sequence[str] = BACKENDS[:4], threads: int = 0
                   ) -> Tuple[Dict[str, Predictor], Dict[str, Path]]:
    """({backend: predict(feeds)}, {backend: exported file or folder}) for `batch` images of
    `size`: one export (Paddle inference model + ONNX), quantised once when an int8 backend is
    asked for (calibrated on `calibration_images`: paths or RGB arrays); OpenVINO runs the same
    two ONNX files. Converter output goes to `<name>_b<batch>.log` in `out_dir`."""
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise ValueError(f"unknown backend(s) {sorted(unknown)}; choose from {BACKENDS}")
    out_dir = Path(out_dir)
    # a copy: paddle.jit.to_static turns the layer it traces into the traced program in place
    onnx_path = export_onnx(copy.deepcopy(model), out_dir, name, batch, size)
    files = {"paddle_inference": beside(onnx_path, "_paddle"), "ort_fp32": onnx_path,
             "openvino_fp32": onnx_path, "openvino_bf16": onnx_path}
    if {"ort_int8", "openvino_int8", "openvino_int8_bf16"} & set(backends):
        files["ort_int8"] = files["openvino_int8"] = files["openvino_int8_bf16"] = quantize_onnx(
            onnx_path, beside(onnx_path, "_int8.onnx"),
            calibration_inputs(calibration_images, onnx_path))
    predictors: Dict[str, Predictor] = {}
    for backend in backends:
        if backend == "eager":
            predictors[backend] = eager_predictor(model)
        elif backend == "paddle_inference":
            predictors[backend] = on_batches(PaddlePredictor(files[backend], threads=threads))
        elif backend.startswith("ort"):
            predictors[backend] = on_batches(OnnxPredictor(files[backend], threads=threads))
        else:
            predictors[backend] = on_batches(OpenVinoPredictor(
                files[backend], threads=threads, precision=precision_of(backend)))
    return predictors, {k: v for k, v in files.items() if k in backends}


def on_batches(predictor: Callable) -> Predictor:
    """Feed a loader batch (paddle tensors, im_id, ...) to a predictor that takes numpy; the
    inputs a baked export does not declare are left out by the predictor itself."""
    return lambda batch: predictor(numpy_inputs(batch))


def compare_backends(predictors: Dict[str, Predictor], loader: Any, samples: int = 1000,
                     seed: int = 0) -> List[Dict[str, Any]]:
    """One row per backend: box_AP and mask_AP (COCO, 0-1) on the loader's images, and each
    one's difference to the first backend (eager) with a 95% paired bootstrap interval over
    the images (`mask_low`/`mask_high`, `box_low`/`box_high`)."""
    rows = [{"backend": backend, **score_predictor(predict, loader)}
            for backend, predict in predictors.items()]
    for metric, prefix in (("mask_AP", "mask"), ("box_AP", "box")):
        aps = bootstrap_ap([r["matches"][metric] for r in rows], samples, seed)
        lows, highs = np.percentile(aps - aps[:, :1], [2.5, 97.5], axis=0)
        for row, low, high in zip(rows, lows, highs):
            row.update({f"{prefix}_difference": row[metric] - rows[0][metric],
                        f"{prefix}_low": float(low), f"{prefix}_high": float(high)})
    return rows


def markdown_backends(rows: Sequence[Dict[str, Any]]) -> str:
    """A markdown table of `compare_backends`: AP in percent and the difference to eager."""
    lines = ["| Backend | Box AP | Mask AP | Δ box AP vs eager [95%] | Δ mask AP vs eager [95%] |",
             "|:---|---:|---:|:---:|:---:|"]
    for r in rows:
        lines.append(f"| {NAMES.get(r['backend'], r['backend'])} | {100 * r['box_AP']:.1f} | "
                     f"{100 * r['mask_AP']:.1f} | {_difference(r, 'box')} | "
                     f"{_difference(r, 'mask')} |")
    return "\n".join(lines)


def _difference(row: Dict[str, Any], prefix: str) -> str:
    return (f"{100 * row[f'{prefix}_difference']:+.1f} [{100 * row[f'{prefix}_low']:+.1f}, "
            f"{100 * row[f'{prefix}_high']:+.1f}]")


def latency_rows(predictors: Dict[Tuple[str, int], Predictor],
                 feeds: Dict[int, Dict[str, np.ndarray]], runs: int = 20,
                 warmup: int = 3) -> List[Dict[str, Any]]:
    """Time every (backend, batch) predictor on `feeds[batch]`, those of one runtime in
    interleaved rounds, one runtime after another (`times_by_runtime`): one row each with
    backend, batch, latency_ms (median), the quartiles and ms_per_image (median / batch)."""
    times = times_by_runtime({k: lambda k=k: predictors[k](feeds[k[1]]) for k in predictors},
                             lambda key: runtime(key[0]), runs, warmup)
    rows = []
    for (backend, batch), row_times in times.items():
        stats = latency_stats(row_times)
        rows.append({"backend": backend, "batch": batch, **stats,
                     "ms_per_image": stats["latency_ms"] / batch})
    return rows


def markdown_latency(rows: Sequence[Dict[str, Any]]) -> str:
    """A markdown table of `latency_rows`: median, interquartile range, per image, FPS."""
    lines = ["| Backend | Batch | Median (ms) | IQR (ms) | Per image (ms) | Images/s |",
             "|:---|:---:|---:|:---:|---:|---:|"]
    for r in rows:
        name = NAMES.get(r["backend"], r["backend"])
        lines.append(f"| {name} | {r['batch']} | {r['latency_ms']:.1f} | "
                     f"{r['latency_q25_ms']:.1f}-{r['latency_q75_ms']:.1f} | "
                     f"{r['ms_per_image']:.1f} | {1000 / r['ms_per_image']:.1f} |")
    return "\n".join(lines)


def markdown_node_times(nodes: Sequence[Dict[str, Any]], top: int = 8) -> str:
    """Two markdown tables of `OpenVinoPredictor.node_times`: ms by node type, then the `top`
    slowest nodes with the kernel that ran each."""
    total = sum(r["ms"] for r in nodes)
    lines = ["| Node type | ms per call | Share |", "|:---|---:|---:|"]
    for kind, ms in list(time_by_type(nodes).items())[:top]:
        lines.append(f"| {kind} | {ms:.2f} | {ms / total:.0%} |")
    lines += ["", "| Slowest node | Type | Kernel | ms per call |", "|:---|:---|:---|---:|"]
    for r in nodes[:top]:
        lines.append(f"| `{r['node'][:48]}` | {r['type']} | {r['kernel']} | {r['ms']:.2f} |")
    return "\n".join(lines)


def plot_latency_bars(rows: Sequence[Dict[str, Any]], ax: Any = None) -> Any:
    """Grouped bars: median latency per call (ms) of each backend, one bar per batch size,
    the interquartile range as the error bar."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.5))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    width = 0.8 / len(batches)
    for j, batch in enumerate(batches):
        chosen = [next(r for r in rows if r["backend"] == b and r["batch"] == batch)
                  for b in backends]
        medians = np.array([r["latency_ms"] for r in chosen])
        spread = np.array([medians - [r["latency_q25_ms"] for r in chosen],
                           np.array([r["latency_q75_ms"] for r in chosen]) - medians])
        ax.bar(np.arange(len(backends)) + (j - (len(batches) - 1) / 2) * width, medians, width,
               yerr=spread, capsize=3, label=f"batch {batch}")
    ax.set_xticks(np.arange(len(backends)), [NAMES.get(b, b) for b in backends], fontsize=8)
    ax.set(ylabel="latency per call (ms): median, IQR", title="CPU latency by backend")
    ax.legend()
    return ax


def quantization_report(fp32_path: PathLike, int8_path: PathLike) -> Dict[str, Any]:
    """What static quantisation did: QuantizeLinear/DequantizeLinear counts in the int8 file,
    the op types fed by a DequantizeLinear (the QDQ groups), the int8 kernels ONNX Runtime
    fuses them into (its optimised graph, `ORT_ENABLE_EXTENDED`), Conv counts, file sizes."""
    import onnx
    import onnxruntime as ort

    fp32, int8 = onnx.load(str(fp32_path)), onnx.load(str(int8_path))
    ops = Counter(n.op_type for n in int8.graph.node)
    dequantized = {out for n in int8.graph.node if n.op_type == "DequantizeLinear"
                   for out in n.output}
    wrapped = Counter(n.op_type for n in int8.graph.node
                      if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
                      and any(i in dequantized for i in n.input))
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(int8_path), options, providers=["CPUExecutionProvider"])
        fused = Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    return {"quantize": ops["QuantizeLinear"], "dequantize": ops["DequantizeLinear"],
            "qdq_inputs_of": dict(wrapped.most_common()),
            "int8_kernels": {op: n for op, n in sorted(fused.items())
                             if op.startswith("QLinear") or op.endswith("Integer")},
            "conv_fp32": sum(n.op_type == "Conv" for n in fp32.graph.node),
            "fp32_MB": Path(fp32_path).stat().st_size / 1e6,
            "int8_MB": Path(int8_path).stat().st_size / 1e6}


# ONNX op -> the TensorRT layer type export/tensorrt.py keeps in FP32 (`_fp32_rules`)
FP32_LAYERS = {"LayerNormalization": "NORMALIZATION", "Softmax": "SOFTMAX",
               "Pow": "ELEMENTWISE POW", "Sqrt": "UNARY SQRT",
               **{op: "REDUCE" for op in ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin",
                                          "ReduceProd", "ReduceL1", "ReduceL2",
                                          "ReduceSumSquare", "ReduceLogSumExp")}}


def fp16_sensitive_nodes(onnx_path: PathLike) -> Dict[str, int]:
    """ONNX op type -> how many of its nodes (float outputs, after shape inference) become a
    TensorRT layer that `build_trt_engine` keeps in FP32 in an FP16 engine."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    types = {v.name: v.type.tensor_type.elem_type
             for v in [*model.graph.value_info, *model.graph.output]}
    counts = Counter(n.op_type for n in model.graph.node if n.op_type in FP32_LAYERS
                     and types.get(n.output[0]) == onnx.TensorProto.FLOAT)
    return dict(sorted(counts.items()))


def detections(outputs: Dict[str, np.ndarray], score_threshold: float = 0.5
               ) -> Dict[str, np.ndarray]:
    """Batch-1 eval outputs -> instances for `viz.draw_instances` (boxes, labels, scores,
    masks) of the detections scoring at least `score_threshold`, ordered by class, then left to
    right: the same detections from two backends get the same colours."""
    instances = to_instances(outputs, score_threshold)
    boxes = instances["boxes"]
    order = np.lexsort((boxes[:, 1], boxes[:, 0], instances["labels"]))  # class, x1, y1
    return {**{k: v[order] for k, v in instances.items()},
            "masks": instances["masks"][order].astype(bool)}
