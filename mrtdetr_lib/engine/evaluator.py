"""COCO box and mask AP through pycocotools, for a library model or any predictor callable.

Mirrors PaddleDetection's `COCOMetric` (`ppdet/metrics/metrics.py`, `json_results.py`,
`coco_utils.py`): eval outputs -> COCO results json (boxes as x,y,w,h; masks as RLE; contiguous
labels mapped back to the data set's category ids) -> `COCOeval` `bbox` and `segm`. Also keeps
per-class AP and precision/recall curves, which ppdet only draws to files (the course's tables
and figures read them).
"""

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np
import paddle
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..data import LoaderWithErrors, load_coco, mask_to_rle
from ..files import atomic_write

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = {"bbox": "bbox", "mask": "segm"}  # our key -> COCOeval's iouType


def _numpy(value: Any) -> np.ndarray:
    return value.numpy() if isinstance(value, paddle.Tensor) else np.asarray(value)


def to_coco_results(outputs: Dict[str, Any], im_ids: Sequence[int],
                    cat_ids: Sequence[int]) -> Dict[str, List[dict]]:
    """Eval outputs of one batch (`bbox` [N,6], `bbox_num` [B], `mask` [N,H0,W0]) -> COCO dicts."""
    boxes, counts = _numpy(outputs["bbox"]), _numpy(outputs["bbox_num"]).reshape(-1)
    masks = _numpy(outputs["mask"]) if "mask" in outputs else None
    results: Dict[str, List[dict]] = {"bbox": [], "mask": []}
    start = 0
    for im_id, count in zip(im_ids, counts):
        for row in range(start, start + int(count)):
            label, score, x1, y1, x2, y2 = (float(v) for v in boxes[row])
            if label < 0:  # padding rows of an empty image
                continue
            common = {"image_id": int(im_id), "category_id": int(cat_ids[int(label)]),
                      "score": score}
            results["bbox"].append({**common, "bbox": [x1, y1, x2 - x1, y2 - y1]})
            if masks is not None:
                results["mask"].append({**common, "segmentation": mask_to_rle(masks[row])})
        start += int(count)
    return results


class COCOEvaluator:
    """Collects results batch by batch, then runs COCOeval for boxes and masks."""

    def __init__(self, coco_gt: Union[COCO, str], cat_ids: Optional[Sequence[int]] = None,
                 iou_types: Iterable[str] = ("bbox", "mask")):
        self.coco_gt = load_coco(coco_gt) if isinstance(coco_gt, str) else coco_gt
        self.cat_ids = (list(cat_ids) if cat_ids is not None
                        else sorted(self.coco_gt.getCatIds()))
        self.iou_types = tuple(iou_types)
        self.results: Dict[str, List[dict]] = {key: [] for key in self.iou_types}
        self.image_ids: set = set()  # only these are scored (a subset: max_images, quick runs)

    def update(self, im_ids: Sequence[int], outputs: Dict[str, Any]) -> None:
        """Add the eval outputs of one batch whose images have COCO ids `im_ids`."""
        im_ids = [int(i) for i in _numpy(im_ids).reshape(-1)]
        self.image_ids.update(im_ids)
        results = to_coco_results(outputs, im_ids, self.cat_ids)
        for key in self.iou_types:
            self.results[key] += results[key]

    def save(self, output_dir: str) -> List[str]:
        """Write `bbox.json` / `mask.json` (ppdet's names) and return their paths."""
        return [atomic_write(os.path.join(output_dir, f"{key}.json"),
                             lambda tmp, data=results: Path(tmp).write_text(json.dumps(data)))
                for key, results in self.results.items()]

    def accumulate(self, verbose: bool = False) -> Dict[str, dict]:
        """Run COCOeval; per iou type: `stats` (12 numbers, STAT_NAMES), per-class AP, PR curves."""
        return {key: self._evaluate(key, verbose) for key in self.iou_types}

    def coco_eval(self, key: str) -> COCOeval:
        """A COCOeval of the `key` results ("bbox" or "mask", at least one) on the images seen,
        before `evaluate()`; pycocotools prints as it loads them."""
        # loadRes adds keys (area, id) to the dicts it gets: give it copies
        detections = self.coco_gt.loadRes([dict(r) for r in self.results[key]])
        coco_eval = COCOeval(self.coco_gt, detections, IOU_TYPES[key])
        coco_eval.params.imgIds = sorted(self.image_ids)
        return coco_eval

    def _evaluate(self, key: str, verbose: bool) -> dict:
        names = [self.coco_gt.cats[c]["name"] for c in self.cat_ids]
        if not self.results[key]:  # loadRes fails on an empty list; no detections = AP 0
            return {"stats": np.zeros(12), "per_class_ap": dict.fromkeys(names, 0.0),
                    "precision": None, "recall": np.linspace(0, 1, 101)}
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            coco_eval = self.coco_eval(key)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        if verbose:
            print(f"{key}:\n{log.getvalue().split('DONE', 2)[-1].strip()}")
        # precision [T iou thresholds, R=101 recall points, K classes, A areas, M max dets]
        precision = coco_eval.eval["precision"]
        order = [coco_eval.params.catIds.index(c) for c in self.cat_ids]
        precision = precision[:, :, order, 0, -1]  # all areas, 100 detections: [T,R,K]
        per_class = {}
        for k, name in enumerate(names):
            valid = precision[:, :, k][precision[:, :, k] > -1]
            per_class[name] = float(valid.mean()) if valid.size else float("nan")
        return {"stats": np.asarray(coco_eval.stats), "per_class_ap": per_class,
                "precision": precision, "recall": np.asarray(coco_eval.params.recThrs)}


def summary(metrics: Dict[str, dict]) -> Dict[str, float]:
    """Flat {"bbox_AP": .., "bbox_AP50": .., "mask_AP": ..} of `accumulate()`'s result."""
    return {f"{key}_{name}": float(value) for key, result in metrics.items()
            for name, value in zip(STAT_NAMES, result["stats"])}


def evaluate_predictor(predict: Callable[[Dict[str, Any]], Dict[str, Any]], loader: Iterable,
                       coco_gt: Union[COCO, str], cat_ids: Optional[Sequence[int]] = None,
                       output_dir: Optional[str] = None, verbose: bool = False,
                       progress: bool = True) -> Dict[str, dict]:
    """COCO AP of any `predict(inputs) -> eval outputs` (library, Paddle Inference, ONNX, ...).

    Each batch must carry `im_id` [B] or [B,1] plus what `predict` reads (`image`, `im_shape`,
    `scale_factor`); outputs as the model's eval outputs, as tensors or numpy arrays.
    """
    from tqdm.auto import tqdm

    evaluator = COCOEvaluator(coco_gt, cat_ids)
    for inputs in tqdm(loader, desc="eval", disable=not progress, leave=False):
        evaluator.update(inputs["im_id"], predict(inputs))
    if output_dir:
        evaluator.save(output_dir)
    return evaluator.accumulate(verbose)


@contextlib.contextmanager
def eval_mode(model: paddle.nn.Layer) -> Iterator[paddle.nn.Layer]:
    """`with eval_mode(model):` runs the block in eval mode (BatchNorm statistics, no
    denoising), then puts the model back in training mode if it was in it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        if was_training:
            model.train()


def evaluate(model: paddle.nn.Layer, data: Any, output_dir: Optional[str] = None,
             verbose: bool = False, progress: bool = True) -> Dict[str, dict]:
    """COCO AP of a library model on a data set (one with `coco` and `cat_ids`) or its loader."""
    loader = data
    if not hasattr(data, "batch_sampler"):  # a data set: evaluate it one image at a time
        loader = LoaderWithErrors(data, paddle.io.BatchSampler(data, batch_size=1))
    dataset = getattr(loader, "dataset", data)
    with eval_mode(model), paddle.no_grad():
        return evaluate_predictor(model, loader, dataset.coco, dataset.cat_ids, output_dir,
                                  verbose, progress)

