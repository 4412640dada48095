"""An exported folder that deploys on its own: `infer_cfg.json` and the predictor of a run mode.

PaddleDetection's export writes `infer_cfg.yml` beside the model, so `deploy/python/infer.py`
needs no training config; `write_infer_cfg` does the same here (class names and COCO category
ids, eval size, batch, whether im_shape/scale_factor are baked in, the file of each run mode),
and `load_deployed` builds the predictor of a `--run_mode` from it. A baked export computes
boxes and masks for an image of the eval size: `InOriginalFrame` maps them back to each image's
own size, so every run mode returns the same frame as the unbaked exports and eager.
"""

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import cv2
import numpy as np

from ..data.transforms import preprocess, read_image
from ..errors import UserError
from ..infer import Predictor
from .benchmark import latency_record
from .onnx import OnnxPredictor
from .openvino import OpenVinoPredictor, precision_of
from .paddle import PaddlePredictor
from .tensorrt import TrtPredictor, build_trt_engine, tensorrt_available

PathLike = Union[str, Path]
INFER_CFG = "infer_cfg.json"
RUN_MODES = ("paddle", "ort", "ort_int8", "openvino", "openvino_int8", "openvino_int8_bf16",
             "trt_fp16")
# run mode -> the infer_cfg "files" entry it runs
MODE_FILES = {"paddle": "paddle", "ort": "onnx", "ort_int8": "onnx_int8", "openvino": "onnx",
              "openvino_int8": "onnx_int8", "openvino_int8_bf16": "onnx_int8",
              "trt_fp16": "onnx"}
OUTPUT_CONTRACT = {
    "bbox": "[N, 6] float32: label, score, x1, y1, x2, y2 in original-image pixels",
    "bbox_num": "[B] int32: detections per image (N = B * num_top_queries)",
    "mask": "[N, H0, W0] int32 0/1: each image's masks at its original size"}


def write_infer_cfg(out_dir: PathLike, files: Dict[str, str], eval_size: Sequence[int],
                    batch: Optional[int], baked: bool, class_names: Sequence[str],
                    category_ids: Sequence[int], arch: str) -> Path:
    """out_dir/infer_cfg.json: what `mrtdetr deploy` needs besides the model files (given
    relative to out_dir). batch None: any batch size."""
    cfg = {"arch": arch, "eval_size": [int(s) for s in eval_size], "batch": batch,
           "baked": baked, "class_names": list(class_names),
           "category_ids": [int(c) for c in category_ids], "files": files,
           "outputs": OUTPUT_CONTRACT}
    path = Path(out_dir) / INFER_CFG
    path.write_text(json.dumps(cfg, indent=1))
    return path


def read_infer_cfg(model_dir: PathLike) -> Dict[str, Any]:
    """The infer_cfg.json of an exported folder; a clear error when it is not one."""
    path = Path(model_dir) / INFER_CFG
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --model_dir takes the folder that "
                                f"`mrtdetr export --output_dir DIR` wrote")
    cfg = json.loads(path.read_text())
    missing = [k for k in ("eval_size", "baked", "class_names", "files") if k not in cfg]
    if missing:
        raise UserError(f"{path}: missing {missing}; export again with `mrtdetr export`")
    return cfg


def load_deployed(model_dir: PathLike, run_mode: str, threads: int = 0) -> Callable:
    """The predictor (numpy inputs -> bbox, bbox_num, mask in original pixels) of `run_mode`
    on an exported folder."""
    if run_mode not in RUN_MODES:
        raise UserError(f"--run_mode {run_mode!r}: choose from {', '.join(RUN_MODES)}")
    cfg = read_infer_cfg(model_dir)
    entry = MODE_FILES[run_mode]
    if entry not in cfg["files"]:
        hint = " --int8" if entry == "onnx_int8" else ""
        raise FileNotFoundError(f"{model_dir} has no {entry} model for --run_mode {run_mode}: "
                                f"export it with `mrtdetr export ...{hint}`")
    path = Path(model_dir) / cfg["files"][entry]
    if run_mode == "trt_fp16":
        reason = tensorrt_available()
        if reason:
            raise RuntimeError(f"--run_mode trt_fp16 needs an NVIDIA GPU with TensorRT: "
                               f"{reason}")
        predictor = TrtPredictor(build_trt_engine(path, fp16=True))
    elif run_mode == "paddle":
        predictor = PaddlePredictor(path, threads=threads)
    elif run_mode.startswith("openvino"):  # fp32, int8, or int8 with the rest in bf16
        predictor = OpenVinoPredictor(path, threads=threads, precision=precision_of(run_mode))
    else:
        predictor = OnnxPredictor(path, threads=threads)
    # baked (the image its only input; --trt bakes the ONNX file, not the Paddle program)
    if "im_shape" not in predictor.input_names:
        return InOriginalFrame(predictor, cfg["eval_size"])
    return predictor


class InOriginalFrame:
    """A baked export's outputs (boxes and masks of the eval-size image) -> each image's
    original pixels: boxes scaled by 1 / scale_factor, masks resized (nearest) to the original
    size, as the unbaked exports return them."""

    def __init__(self, predictor: Callable, eval_size: Sequence[int]):
        self.predictor, self.eval_size = predictor, tuple(eval_size)

    def __call__(self, inputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """inputs: image [B, 3, h, w] (the eval size), im_shape and scale_factor [B, 2]."""
        if tuple(inputs["image"].shape[2:]) != self.eval_size:
            raise UserError(f"image of size {tuple(inputs['image'].shape[2:])}: this export "
                             f"is baked for {self.eval_size}; resize the image first "
                             f"(data.preprocess(rgb, {list(self.eval_size)}))")
        out = self.predictor({"image": inputs["image"]})
        origin = np.floor(inputs["im_shape"] / inputs["scale_factor"] + 0.5).astype(int)
        counts = out["bbox_num"].astype(int)
        image_of = np.repeat(np.arange(len(counts)), counts)  # detection -> its image
        bbox = out["bbox"].copy()
        ratio = origin[image_of] / np.array(self.eval_size)  # [N, 2] (h, w)
        bbox[:, 2:] *= np.tile(ratio[:, ::-1], 2)  # x by w, y by h
        return {"bbox": bbox, "bbox_num": out["bbox_num"],
                "mask": _resize_masks(out["mask"], origin, image_of)}


def _resize_masks(masks: np.ndarray, origin: np.ndarray, image_of: np.ndarray) -> np.ndarray:
    """[N, h, w] 0/1 -> [N, max H0, max W0]: each to its image's size, zeros around it."""
    canvas = np.zeros((len(masks), *origin.max(0)), masks.dtype)
    for i, (mask, image) in enumerate(zip(masks, image_of)):
        h0, w0 = origin[image]
        canvas[i, :h0, :w0] = cv2.resize(mask.astype(np.uint8), (int(w0), int(h0)),
                                         interpolation=cv2.INTER_NEAREST)
    return canvas


def coco_results(image_id: int, instances: Dict[str, np.ndarray],
                 category_ids: Sequence[int]) -> List[Dict[str, Any]]:
    """One image's instances -> COCO result dicts (bbox xywh, score, RLE segmentation)."""
    from pycocotools import mask as mask_utils

    results = []
    for box, score, label, mask in zip(instances["boxes"], instances["scores"],
                                       instances["labels"], instances["masks"]):
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        x1, y1, x2, y2 = (float(v) for v in box)
        category = category_ids[label] if label < len(category_ids) else int(label)
        results.append({"image_id": image_id, "category_id": int(category),
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score),
                        "segmentation": rle})
    return results


def deploy(model_dir: PathLike, images: Sequence[str], run_mode: str, threshold: float = 0.5,
           output_dir: PathLike = "output", run_benchmark: bool = False, threads: int = 0,
           warmup: int = 2, runs: int = 10) -> Dict[str, Any]:
    """`mrtdetr deploy`: drawn images and `bbox.json` (COCO results, image_id = position in
    `images`) in output_dir; with run_benchmark one latency record (`benchmark.latency_record`)
    on the first image. Returns {"drawn": [...], "results": path, "benchmark": record}."""
    if not images:
        raise UserError("deploy needs at least one image")
    cfg = read_infer_cfg(model_dir)
    predictor = Predictor(load_deployed(model_dir, run_mode, threads), threshold=threshold,
                          image_size=cfg["eval_size"], class_names=cfg["class_names"])
    output_dir = Path(output_dir)
    results, drawn = [], []
    for image_id, (_, saved, instances) in enumerate(
            predictor.save_drawings(list(images), str(output_dir))):
        results += coco_results(image_id, instances, cfg.get("category_ids", []))
        drawn.append(saved)
    results_path = output_dir / "bbox.json"
    results_path.write_text(json.dumps(results))
    summary: Dict[str, Any] = {"drawn": drawn, "results": str(results_path)}
    if run_benchmark:
        inputs = preprocess(read_image(images[0]), cfg["eval_size"])
        seconds = []
        for i in range(warmup + runs):
            start = time.perf_counter()
            predictor.model(inputs)
            if i >= warmup:
                seconds.append(time.perf_counter() - start)
        summary["benchmark"] = {"run_mode": run_mode, "arch": cfg.get("arch"),
                                "size": cfg["eval_size"], "batch": 1,
                                **latency_record(seconds, warmup, threads)}
    return summary
