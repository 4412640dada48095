"""TensorRT FP16 vs ONNX Runtime fp32 on the reference image, and engine FPS: JSON lines.

    python bench/check_trt.py [--archs tiny l] [--batches 1 2] [--weights-l l]
        [--weights-tiny random] [--avg-runs 1000] [--exports DIR]

For a machine with a GPU, tensorrt (environment-gpu.yml) and paddlepaddle-gpu. For each arch
and batch size: the baked export (`export_onnx(..., bake=True)`, what `build_trt_engine` takes)
runs in ONNX Runtime (fp32, CPU) and as an FP16 engine on the reference image (PaddleDetection's
demo/000000014439_640x640.jpg, from MRTDETR_REFERENCE_DIR or ../shared/reference; repeated for
batch 2). ONNX Runtime's top `--top` detections are matched to the engine's: same label, box
and score within the tolerances of tests/test_export.py's GPU test, best mask IoU. Reported:
`max_box_px`, `max_score_diff`, `min_mask_iou`, `mean_mask_iou`; `ok` when every row matched
within the tolerances and the mean mask IoU is at least 0.9. `fps` is batch / mean latency over
`--avg-runs` timed runs (GPU compute only), as trtexec reports its throughput. L loads the
official COCO weights by default (`--weights-l`: a path, a URL, "l" or "random"); tiny has
random weights (engine and ONNX Runtime run the same model, so any weights do). Without a GPU
or TensorRT it prints one line saying why and exits 0; exit 1 when a comparison is not `ok`.
Each line carries the latency protocol of bench/bench_deploy.py (median and IQR, warm-up and
run counts, machine, library versions) and `trtexec`: the same measurement as a TensorRT 10
trtexec command (`--memPoolSize=workspace:4096`; TensorRT 10 removed `--workspace`).
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import numpy as np

import mrtdetr_lib as mrt
from mrtdetr_lib.export import tensorrt_available
from mrtdetr_lib.export.benchmark import machine, versions

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "input_000000014439_640x640.jpg"
MAX_BOX_PX, MAX_SCORE_DIFF, MIN_MEAN_MASK_IOU = 2.0, 0.02, 0.9


def reference_image() -> np.ndarray:
    """RGB uint8 reference image (the one the L parity fixtures were made on)."""
    from mrtdetr_lib.data.transforms import read_image

    folder = Path(os.environ.get("MRTDETR_REFERENCE_DIR", ROOT.parent / "shared" / "reference"))
    if not (folder / IMAGE).is_file():
        raise FileNotFoundError(f"{IMAGE} not in {folder} (set MRTDETR_REFERENCE_DIR)")
    return read_image(str(folder / IMAGE))


def build(arch: str, weights: str):
    """Eval-mode model of `arch` with `weights` ("random", or as mrt.load_pretrained takes)."""
    import paddle

    paddle.seed(0)
    model = mrt.build_model(arch)
    if weights != "random":
        mrt.load_pretrained(model, weights)
    model.eval()
    return model


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two 0/1 masks [H, W] (1.0 when both are empty)."""
    a, b = a > 0, b > 0
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def compare(trt_out: Dict[str, np.ndarray], ort_out: Dict[str, np.ndarray], top: int) -> Dict:
    """Match ORT's top rows (first image) one to one to the engine's: same label, score and box
    within the tolerances, best mask IoU (near-duplicate queries are common); the worst diffs."""
    ref = ort_out["bbox"][:int(ort_out["bbox_num"][0])]
    ours = trt_out["bbox"][:int(trt_out["bbox_num"][0])]
    boxes, scores, masks, used = [], [], [], set()
    rows = np.argsort(-ref[:, 1], kind="stable")[:top]
    for row in rows:
        same = [j for j in range(len(ours)) if j not in used and ours[j, 0] == ref[row, 0]]
        close = [j for j in same if np.abs(ours[j, 2:] - ref[row, 2:]).max() <= MAX_BOX_PX
                 and abs(ours[j, 1] - ref[row, 1]) <= MAX_SCORE_DIFF]
        if close:
            j = max(close, key=lambda j: mask_iou(trt_out["mask"][j], ort_out["mask"][row]))
        elif same:  # out of tolerance: the nearest, to report how far
            j = min(same, key=lambda j: np.abs(ours[j, 1:] - ref[row, 1:]).sum())
        else:
            continue
        used.add(j)
        boxes.append(np.abs(ours[j, 2:] - ref[row, 2:]).max())
        scores.append(abs(ours[j, 1] - ref[row, 1]))
        masks.append(mask_iou(trt_out["mask"][j], ort_out["mask"][row]))
    result = {"compared": len(rows), "matched": len(used),
              "max_box_px": round(float(max(boxes, default=np.inf)), 3),
              "max_score_diff": round(float(max(scores, default=np.inf)), 4),
              "min_mask_iou": round(min(masks, default=0.0), 4),
              "mean_mask_iou": round(float(np.mean(masks)) if masks else 0.0, 4)}
    result["ok"] = bool(len(used) == len(rows) and result["max_box_px"] <= MAX_BOX_PX
                        and result["max_score_diff"] <= MAX_SCORE_DIFF
                        and result["mean_mask_iou"] >= MIN_MEAN_MASK_IOU)
    return result


def trtexec_command(onnx_path: Path, warmup_ms: int, avg_runs: int) -> str:
    """trtexec with TensorRT 10's flags: the seed's `--fp16 --avgRuns` plus the 4 GiB
    workspace of build_trt_engine as `--memPoolSize` (`--workspace` is gone in 10)."""
    return " ".join(["trtexec", f"--onnx={onnx_path}", "--fp16",
                     "--memPoolSize=workspace:4096", f"--warmUp={warmup_ms}",
                     f"--avgRuns={avg_runs}", f"--saveEngine={onnx_path.with_suffix('.engine')}"])


def check(arch: str, model, batch: int, args, folder: Path) -> Dict:
    """Export, build, compare and time one (arch, batch) -> one JSON-ready dict."""
    from mrtdetr_lib.data.transforms import preprocess
    from mrtdetr_lib.export import OnnxPredictor, TrtPredictor, build_trt_engine, export_onnx

    size = tuple(model.transformer.eval_size)
    image = np.repeat(preprocess(reference_image(), size)["image"], batch, axis=0)
    onnx_path = export_onnx(model, folder / arch, arch, batch=batch, bake=True)
    engine = build_trt_engine(onnx_path, fp16=True)
    settings = json.loads(engine.with_suffix(".json").read_text())
    predictor = TrtPredictor(engine)
    result = compare(predictor({"image": image}), OnnxPredictor(onnx_path)({"image": image}),
                     args.top)
    timing = predictor.benchmark({"image": image}, warmup=args.warmup, avg_runs=args.avg_runs)
    return {"arch": arch, "batch": batch, "size": list(size), "weights": args.weights[arch],
            "gpu": settings["gpu"], "compute_capability": settings["compute_capability"],
            "tensorrt": settings["tensorrt"], "fp32_layers": len(settings["fp32_layers"]),
            **result, "avg_runs": args.avg_runs, "mean_ms": round(timing["mean_ms"], 3),
            "median_ms": round(timing["median_ms"], 3), "q25_ms": round(timing["q25_ms"], 3),
            "q75_ms": round(timing["q75_ms"], 3),
            "iqr_ms": round(timing["q75_ms"] - timing["q25_ms"], 3), "warmup": args.warmup,
            "runs": args.avg_runs, "fps": round(timing["fps"], 1), "machine": machine(),
            "versions": versions(), "engine": str(engine),
            "trtexec": trtexec_command(onnx_path, 200, args.avg_runs)}


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", nargs="+", default=["tiny", "l"])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 2])
    p.add_argument("--weights-l", default="l", help='path, URL, "l" (official) or "random"')
    p.add_argument("--weights-tiny", default="random")
    p.add_argument("--top", type=int, default=20, help="ORT detections compared per image")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--avg-runs", type=int, default=1000, help="trtexec's --avgRuns")
    p.add_argument("--exports", help="folder for exports and engines (default: temporary)")
    args = p.parse_args(argv)
    reason = tensorrt_available()
    if reason:  # before any export: a CPU machine learns it in a second
        print(json.dumps({"check": "tensorrt", "skipped": f"no GPU TensorRT here: {reason}"}))
        return 0
    args.weights = {a: {"l": args.weights_l, "tiny": args.weights_tiny}.get(a, "random")
                    for a in args.archs}
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.exports or tmp)
        for arch in args.archs:
            model = build(arch, args.weights[arch])
            for batch in args.batches:
                line = check(arch, model, batch, args, folder)
                ok &= line["ok"]
                print(json.dumps(line), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
