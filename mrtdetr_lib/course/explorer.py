"""Chapter 04's threshold explorer: run a model once, then filter its cached detections.

`collect_predictions` keeps every top-k detection with its mask probabilities; the pure
`filter_predictions` applies score / mask thresholds and a class filter; `threshold_explorer`
wires ipywidgets sliders to it, so moving a slider never calls the model again; `view_image`
is one of its views as a JPEG (a static copy for pages without a kernel). `match_instances`
and `score_sweep` judge the kept detections against the ground truth (COCO's greedy rule).
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import paddle
import paddle.nn.functional as F

from ..data import preprocess, read_image, segmentation_to_mask
from ..engine.evaluator import eval_mode
from ..infer import to_instances
from ..viz import draw_instances


def ground_truth(dataset: Any, index: int) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Image `index` of a COCOInstanceDataset, RGB uint8 as on disk, and its objects as
    instances (boxes [n,4] x1,y1,x2,y2 px, labels [n], masks [n,H,W] bool)."""
    record = dataset.records[index]
    masks = [segmentation_to_mask(s, record["h"], record["w"]) for s in record["gt_poly"]]
    masks = np.stack(masks).astype(bool) if masks else np.zeros((0, record["h"], record["w"]),
                                                                  bool)
    return read_image(record["im_file"]), {"boxes": record["gt_bbox"],
                                           "labels": record["gt_class"].reshape(-1),
                                           "masks": masks}


@dataclass
class PredictionCache:
    """Every top-k detection of a few images, kept so thresholds can change without the model.

    `predictions[i]`: boxes [k,4] x1,y1,x2,y2 px, scores [k] (sorted, highest first), labels [k],
    mask_probs [k,H,W] float16 in 0..1 (before any threshold) for `images[i]` [H,W,3] RGB.
    """

    images: List[np.ndarray]
    predictions: List[Dict[str, np.ndarray]]
    class_names: Sequence[str]


def predict_with_probabilities(model: Any, inputs: Dict[str, paddle.Tensor]
                               ) -> Dict[str, paddle.Tensor]:
    """An eval-mode MaskRTDETR's outputs for one image, `mask` [k, H0, W0] float32 holding the
    probabilities (sigmoid of the upsampled logits) of the same k detections instead of the
    post-process's 0/1 masks (those are the probabilities > 0.5)."""
    out = model.transformer(model.neck(model.backbone(inputs["image"])))
    boxes, logits, masks = out["dec_boxes"][-1], out["dec_logits"][-1], out["dec_masks"][-1]
    post = model.post_process
    result = post(boxes, logits, masks, inputs["im_shape"], inputs["scale_factor"])
    _, index = paddle.topk(F.sigmoid(logits).flatten(1), post.num_top_queries, axis=-1)
    query, _ = post.split_index(index, logits.shape[1])  # [1, k]: the rows of result["bbox"]
    height, width = (int(v) for v in paddle.floor(inputs["im_shape"] / inputs["scale_factor"]
                                                  + 0.5)[0])  # the original size, as post's
    chosen = paddle.gather(masks[0], query[0]).unsqueeze(0)  # [1, k, h, w] logits
    resized = F.interpolate(chosen, size=[height, width], mode="bilinear", align_corners=False)
    result["mask"] = F.sigmoid(resized.squeeze(0))
    return result


def collect_predictions(model: Any, images: Sequence[Any], image_size: Sequence[int],
                        class_names: Sequence[str]) -> PredictionCache:
    """Run a library MaskRTDETR once per image (path or RGB array), keeping all k detections
    with their mask probabilities (`predict_with_probabilities`)."""
    cache = PredictionCache([], [], list(class_names))
    with eval_mode(model), paddle.no_grad():
        for image in images:
            rgb = read_image(image) if isinstance(image, str) else np.asarray(image)
            inputs = {k: paddle.to_tensor(v) for k, v in preprocess(rgb, image_size).items()}
            out = predict_with_probabilities(model, inputs)
            instances = to_instances({k: v.numpy() for k, v in out.items()})  # all k
            probs = instances.pop("masks").astype(np.float16)  # half the memory
            cache.images.append(rgb)
            cache.predictions.append({**instances, "mask_probs": probs})
    return cache


def filter_predictions(prediction: Dict[str, np.ndarray], score_threshold: float = 0.5,
                       mask_threshold: float = 0.5,
                       classes: Optional[Sequence[int]] = None) -> Dict[str, np.ndarray]:
    """One image's cached detections -> the instances with score >= `score_threshold` and a
    label in `classes` (None: all), masks [n,H,W] bool = probability > `mask_threshold`
    (the post-process's rule: 0.5 gives its masks)."""
    keep = prediction["scores"] >= score_threshold
    if classes is not None:
        keep &= np.isin(prediction["labels"], np.asarray(list(classes), np.int64))
    return {"boxes": prediction["boxes"][keep], "scores": prediction["scores"][keep],
            "labels": prediction["labels"][keep],
            "masks": prediction["mask_probs"][keep] > mask_threshold}


def draw_predictions(cache: PredictionCache, index: int, score_threshold: float = 0.5,
                     mask_threshold: float = 0.5, classes: Optional[Sequence[int]] = None,
                     min_side: int = 384) -> Tuple[np.ndarray, int]:
    """Image `index` with its filtered detections drawn, enlarged so that its shorter side is
    at least `min_side` (labels stay readable on small images); returns (RGB, count)."""
    instances = filter_predictions(cache.predictions[index], score_threshold, mask_threshold,
                                   classes)
    image, instances = enlarge(cache.images[index], instances, min_side)
    return draw_instances(image, instances, cache.class_names), len(instances["scores"])


def enlarge(image: np.ndarray, instances: Dict[str, Any], min_side: int = 384
            ) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Image [H,W,3] and its instances scaled up by the whole factor that brings the shorter
    side to at least `min_side` (pixels stay square, masks stay exact); labels then fit."""
    scale = max(1, -(-min_side // min(image.shape[:2])))
    if scale == 1:
        return image, instances
    h, w = image.shape[:2]
    instances = dict(instances, boxes=np.asarray(instances["boxes"]) * scale)
    if instances.get("masks") is not None:
        instances["masks"] = np.asarray(instances["masks"]).repeat(scale, 1).repeat(scale, 2)
    return cv2.resize(image, (w * scale, h * scale), interpolation=cv2.INTER_NEAREST), instances


def view_image(cache: PredictionCache, index: int = 0, score_threshold: float = 0.5,
               mask_threshold: float = 0.5, classes: Optional[Sequence[int]] = None,
               quality: int = 90) -> bytes:
    """JPEG bytes of `draw_predictions`: what the threshold explorer shows for these values."""
    rgb, _ = draw_predictions(cache, index, score_threshold, mask_threshold, classes)
    return cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def threshold_explorer(cache: PredictionCache, score_threshold: float = 0.5,
                       mask_threshold: float = 0.5, index: int = 0) -> Any:
    """ipywidgets UI over a PredictionCache: image, score and mask thresholds, class filter;
    each change redraws from the cache (no model call). Its first view (image `index`) is
    `view_image(cache, index, score_threshold, mask_threshold)`."""
    import ipywidgets as widgets

    image = widgets.IntSlider(index, 0, len(cache.images) - 1, description="image")
    score = widgets.FloatSlider(score_threshold, min=0.0, max=1.0, step=0.01,
                                description="score ≥")
    mask = widgets.FloatSlider(mask_threshold, min=0.05, max=0.95, step=0.05,
                               description="mask >")
    names = list(cache.class_names)
    classes = widgets.SelectMultiple(options=list(zip(names, range(len(names)))),
                                     value=tuple(range(len(names))), description="classes",
                                     rows=min(len(names), 6))
    picture, caption = widgets.Image(format="jpeg"), widgets.HTML()

    def redraw(_: Any = None) -> None:
        kept = filter_predictions(cache.predictions[image.value], score.value, mask.value,
                                  classes.value)
        picture.value = view_image(cache, image.value, score.value, mask.value, classes.value)
        caption.value = (f"{len(kept['scores'])} of "
                         f"{len(cache.predictions[image.value]['scores'])} detections")

    for control in (image, score, mask, classes):
        control.observe(redraw, names="value")
    redraw()
    return widgets.HBox([picture, widgets.VBox([image, score, mask, classes, caption])])


def mask_iou(masks1: np.ndarray, masks2: np.ndarray) -> np.ndarray:
    """IoU of every pair of binary masks [n,H,W] x [m,H,W] -> [n,m] (0 where both are empty)."""
    pixels = int(np.prod(masks1.shape[1:]))  # reshape(0, -1) cannot infer it when n or m = 0
    a = masks1.reshape(len(masks1), pixels).astype(np.float32)  # [n, H*W]
    b = masks2.reshape(len(masks2), pixels).astype(np.float32)  # [m, H*W]
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return inter / np.maximum(union, 1.0)


def match_instances(predicted: Dict[str, np.ndarray], truth: Dict[str, np.ndarray],
                    iou_threshold: float = 0.5) -> np.ndarray:
    """[n] bool: True where a prediction (scores, labels, masks) is a true positive. COCO's
    greedy rule: from the highest score down, each takes the unmatched object of its class
    with the highest mask IoU, if that IoU >= `iou_threshold`."""
    order = np.argsort(-np.asarray(predicted["scores"]), kind="stable")
    iou = mask_iou(np.asarray(predicted["masks"]), np.asarray(truth["masks"]))  # [n, m]
    same_class = (np.asarray(predicted["labels"]).reshape(-1, 1)
                  == np.asarray(truth["labels"]).reshape(1, -1))
    iou = np.where(same_class, iou, -1.0)
    taken = np.zeros(iou.shape[1], bool)
    hits = np.zeros(iou.shape[0], bool)
    for i in order:
        candidates = np.where(taken, -1.0, iou[i])
        if candidates.size and candidates.max() >= iou_threshold:
            taken[candidates.argmax()] = hits[i] = True
    return hits


def score_sweep(cache: PredictionCache, truths: Sequence[Dict[str, np.ndarray]],
                thresholds: Sequence[float], mask_threshold: float = 0.5,
                iou_threshold: float = 0.5) -> List[Dict[str, float]]:
    """Per score threshold, over the cached images: the detections kept, how many are true
    positives (`match_instances`), precision (NaN when none is kept), recall and F1. The
    greedy matching goes by falling score, so one matching of all detections serves every
    threshold."""
    scores, hits, num_objects = [], [], 0
    for prediction, truth in zip(cache.predictions, truths):
        everything = filter_predictions(prediction, 0.0, mask_threshold)
        scores.append(everything["scores"])
        hits.append(match_instances(everything, truth, iou_threshold))
        num_objects += len(truth["labels"])
    scores, hits = np.concatenate(scores), np.concatenate(hits)
    rows = []
    for threshold in thresholds:
        kept = scores >= threshold
        found = int(hits[kept].sum())
        precision = found / kept.sum() if kept.any() else float("nan")
        recall = found / max(num_objects, 1)
        f1 = 2 * precision * recall / (precision + recall) if found else 0.0
        rows.append({"threshold": float(threshold), "kept": int(kept.sum()), "found": found,
                     "objects": num_objects, "precision": precision, "recall": recall,
                     "f1": f1})
    return rows
