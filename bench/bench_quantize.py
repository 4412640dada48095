"""Int8 vs fp32 ONNX Runtime on the shapes-trained tiny model: mask AP and latency, JSON lines.

    python bench/bench_quantize.py [--weights tiny.pdparams] [--calib 32] [--modes static dynamic]
        [--threads 1] [--dataset-dir shapes/] [--exports exports/quantize]

The checkpoint is `--weights` (with the `config.yml` the Trainer wrote next to it) or, without
it, the shipped course checkpoint (`mrtdetr_lib.course.course_checkpoint()`). The model is
exported for batch 1 at its eval size, quantised by `export.quantize_onnx` (static:
int8 convolutions calibrated on the first `--calib` train images; dynamic: int8 MatMul/Gemm
weights), and every model is scored on the val split with `evaluate_predictor`. One line per
model: bbox/mask AP, `delta_mask_AP_points` against fp32 (the issue allows -1.0) and the median
latency over the val images (`--threads`; on a shared machine only the ratio means anything).
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

import mrtdetr_lib as mrt
from mrtdetr_lib.course.weights import checkpoint_config, course_checkpoint
from mrtdetr_lib.engine.evaluator import evaluate_predictor, summary
from mrtdetr_lib.export import OnnxPredictor, calibration_inputs, export_onnx, quantize_onnx
from mrtdetr_lib.infer import list_images

MAX_AP_LOSS_POINTS = 1.0


class Timed:
    """A predictor on loader batches (paddle tensors -> numpy) that records each call's time."""

    def __init__(self, predictor: Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]):
        self.predictor, self.seconds = predictor, []

    def __call__(self, batch: Dict) -> Dict[str, np.ndarray]:
        inputs = {k: np.asarray(batch[k].numpy() if hasattr(batch[k], "numpy") else batch[k])
                  for k in ("image", "im_shape", "scale_factor")}
        start = time.perf_counter()
        outputs = self.predictor(inputs)
        self.seconds.append(time.perf_counter() - start)
        return outputs


def score(name: str, onnx_path: Path, cfg, threads: int) -> Dict:
    """AP of one ONNX model on the val split and its median latency per image."""
    from mrtdetr_lib.data import build_loader

    loader = build_loader(cfg, "val", num_workers=0)
    predictor = Timed(OnnxPredictor(onnx_path, threads=threads))
    predictor(next(iter(loader)))  # warm-up: the first run allocates and plans
    predictor.seconds.clear()
    stats = summary(evaluate_predictor(predictor, loader, loader.dataset.coco,
                                       loader.dataset.cat_ids, progress=False))
    return {"model": name, "mask_AP": round(100 * stats["mask_AP"], 2),
            "bbox_AP": round(100 * stats["bbox_AP"], 2), "images": len(predictor.seconds),
            "median_ms": round(1000 * statistics.median(predictor.seconds), 2),
            "bytes": onnx_path.stat().st_size, "threads": threads}


def run(args: argparse.Namespace, folder: Path) -> List[Dict]:
    """Export, quantise and score every model -> JSON-ready dicts."""
    weights = str(args.weights or course_checkpoint())
    cfg = checkpoint_config(weights)
    if args.dataset_dir:
        cfg.data.dataset_dir = args.dataset_dir
    cfg.data.eval_batch_size = 1  # the export has a fixed batch of 1
    model = mrt.build_model(cfg.model)
    mrt.load_pretrained(model, weights)
    model.eval()
    onnx_path = export_onnx(model, folder, "tiny_shapes", batch=1)
    train_dir = Path(cfg.data.dataset_dir) / cfg.data.train_image_dir
    calibration = calibration_inputs(list_images(infer_dir=str(train_dir))[:args.calib],
                                     onnx_path)
    lines = [score("ort fp32", onnx_path, cfg, args.threads)]
    for mode in args.modes:
        path = quantize_onnx(onnx_path, folder / f"tiny_shapes_{mode}.onnx",
                             calibration if mode == "static" else None, mode=mode)
        lines.append(score(f"ort int8 {mode}", path, cfg, args.threads))
    fp32 = lines[0]
    for line in lines:
        line["weights"] = weights
        if line is not fp32:
            line["delta_mask_AP_points"] = round(line["mask_AP"] - fp32["mask_AP"], 2)
            line["speedup_vs_fp32"] = round(fp32["median_ms"] / line["median_ms"], 2)
            line["within_1_point"] = line["delta_mask_AP_points"] >= -MAX_AP_LOSS_POINTS
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None,
                        help="trained tiny .pdparams with its config.yml beside it "
                             "(default: the course checkpoint)")
    parser.add_argument("--calib", type=int, default=32, help="calibration images (train split)")
    parser.add_argument("--modes", nargs="+", default=["static", "dynamic"],
                        choices=["static", "dynamic"])
    parser.add_argument("--threads", type=int, default=1,
                        help="ONNX Runtime threads (default 1: steadier on a shared machine)")
    parser.add_argument("--dataset-dir", default=None,
                        help="shapes folder to score on (default: the checkpoint's)")
    parser.add_argument("--exports", default=None, help="keep the ONNX files here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_quantize.") as tmp:
        for line in run(args, Path(args.exports or tmp)):
            print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
