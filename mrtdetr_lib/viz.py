"""Drawing for the course: instances (masks, boxes, labels) on an image, and image grids.

`draw_instances` takes the same dict for ground truth and predictions (Predictor's output:
`boxes` [n,4] x1,y1,x2,y2 pixels, `labels` [n], optional `masks` [n,H,W] and `scores` [n]) and
returns a new RGB uint8 array, so it works in notebooks, scripts and saved files alike.
The threshold explorer runs a model once (`collect_predictions`), then filters its cached
detections (`filter_predictions`, pure) as ipywidgets sliders move (`threshold_explorer`).
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

# matplotlib's tab10 colours (RGB): distinct, and readable on light and dark images
PALETTE = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40],
                    [148, 103, 189], [140, 86, 75], [227, 119, 194], [127, 127, 127],
                    [188, 189, 34], [23, 190, 207]], np.float32)


def draw_instances(image: np.ndarray, instances: Dict[str, Any],
                   class_names: Optional[Sequence[str]] = None, alpha: float = 0.45,
                   thickness: int = 2) -> np.ndarray:
    """RGB image (uint8, or float in 0..1) -> RGB uint8 with each instance's mask tinted and
    outlined, its box drawn and "label score" written; one colour per instance."""
    canvas = np.asarray(image)
    if canvas.dtype != np.uint8:  # a model input in 0..1
        canvas = np.clip(canvas * 255 + 0.5, 0, 255).astype(np.uint8)
    canvas = np.ascontiguousarray(canvas).copy()
    boxes = np.asarray(instances.get("boxes", np.zeros((0, 4))), np.float32).reshape(-1, 4)
    labels = np.asarray(instances.get("labels", np.zeros(len(boxes))), np.int64).reshape(-1)
    masks, scores = instances.get("masks"), instances.get("scores")
    for i, (box, label) in enumerate(zip(boxes, labels)):
        colour = PALETTE[i % len(PALETTE)]
        if masks is not None:
            mask = np.asarray(masks[i]).astype(bool)
            canvas[mask] = (canvas[mask] * (1 - alpha) + colour * alpha).astype(np.uint8)
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(canvas, contours, -1, colour.tolist(), 1)
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2 - 1, y2 - 1), colour.tolist(), thickness)
        name = class_names[label] if class_names is not None else str(label)
        text = name if scores is None else f"{name} {float(scores[i]):.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        top = max(y1 - th - base - 1, 0)
        cv2.rectangle(canvas, (x1, top), (x1 + tw + 2, top + th + base + 1), colour.tolist(), -1)
        cv2.putText(canvas, text, (x1 + 1, top + th), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def draw_sample(sample: Dict[str, Any], class_names: Optional[Sequence[str]] = None,
                normalized: bool = False) -> np.ndarray:
    """A data sample's image ([H,W,3] or [3,H,W]) with its targets drawn; `normalized`: the
    boxes are cx,cy,w,h in 0..1 (after NormalizeBox + BboxXYXY2XYWH), else x1,y1,x2,y2 pixels."""
    image = np.asarray(sample["image"])
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)  # after Permute
    if image.dtype != np.uint8 and image.max() > 1.5:  # float 0..255 (before NormalizeImage)
        image = image / 255.0
    boxes = np.asarray(sample["gt_bbox"], np.float32).reshape(-1, 4)
    if normalized:
        h, w = image.shape[:2]
        center, size = boxes[:, :2] * [w, h], boxes[:, 2:] * [w, h]
        boxes = np.concatenate([center - size / 2, center + size / 2], 1)
    instances = {"boxes": boxes, "labels": np.asarray(sample["gt_class"]).reshape(-1),
                 "masks": sample.get("gt_segm")}
    return draw_instances(image, instances, class_names)


def show_images(images: Sequence[np.ndarray], titles: Optional[Sequence[str]] = None,
                ncols: int = 4, size: float = 3.0) -> None:
    """Show RGB images in a matplotlib grid, a title above each (plt.show: nothing returned)."""
    import matplotlib.pyplot as plt

    nrows = (len(images) + ncols - 1) // ncols
    ncols = min(ncols, len(images))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k < len(images):
            ax.imshow(images[k])
            if titles is not None:
                ax.set_title(titles[k], fontsize=9)
    fig.tight_layout()
    plt.show()


# ---------------------------------------------------------------- the threshold explorer
def ground_truth(dataset: Any, index: int) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Image `index` of a COCOInstanceDataset, RGB uint8 as on disk, and its objects as
    instances (boxes [n,4] x1,y1,x2,y2 px, labels [n], masks [n,H,W] bool)."""
    from .data.coco import segmentation_to_mask
    from .infer import read_image

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


def collect_predictions(model: Any, images: Sequence[Any], image_size: Sequence[int],
                        class_names: Sequence[str]) -> PredictionCache:
    """Run a library MaskRTDETR once per image (path or RGB array), keeping all k detections
    with their mask probabilities (the post-process's `return_probs`)."""
    import paddle

    from .infer import preprocess, read_image

    post_process, was_training = model.post_process, model.training
    post_process.return_probs = True
    model.eval()
    cache = PredictionCache([], [], list(class_names))
    try:
        with paddle.no_grad():
            for image in images:
                rgb = read_image(image) if isinstance(image, str) else np.asarray(image)
                inputs = {k: paddle.to_tensor(v)
                          for k, v in preprocess(rgb, image_size).items()}
                out = model(inputs)
                bbox = out["bbox"].numpy()  # [k, 6] label, score, x1, y1, x2, y2 (one image)
                cache.images.append(rgb)
                cache.predictions.append({
                    "boxes": bbox[:, 2:], "scores": bbox[:, 1],
                    "labels": bbox[:, 0].astype(np.int64),
                    "mask_probs": out["mask"].numpy().astype(np.float16)})  # half the memory
    finally:
        post_process.return_probs = False
        if was_training:
            model.train()
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


def threshold_explorer(cache: PredictionCache, score_threshold: float = 0.5,
                       mask_threshold: float = 0.5) -> Any:
    """ipywidgets UI over a PredictionCache: image, score and mask thresholds, class filter;
    each change redraws from the cache (no model call)."""
    import ipywidgets as widgets

    image = widgets.IntSlider(0, 0, len(cache.images) - 1, description="image")
    score = widgets.FloatSlider(score_threshold, min=0.0, max=1.0, step=0.01,
                                description="score ≥")
    mask = widgets.FloatSlider(mask_threshold, min=0.05, max=0.95, step=0.05,
                               description="mask >")
    names = list(cache.class_names)
    classes = widgets.SelectMultiple(options=list(zip(names, range(len(names)))),
                                     value=tuple(range(len(names))), description="classes",
                                     rows=min(len(names), 6))
    picture, caption = widgets.Image(format="png"), widgets.HTML()

    def redraw(_: Any = None) -> None:
        rgb, count = draw_predictions(cache, image.value, score.value, mask.value,
                                      classes.value)
        picture.value = cv2.imencode(".png", rgb[..., ::-1])[1].tobytes()  # cv2 writes BGR
        caption.value = f"{count} of {len(cache.predictions[image.value]['scores'])} detections"

    for control in (image, score, mask, classes):
        control.observe(redraw, names="value")
    redraw()
    return widgets.HBox([picture, widgets.VBox([image, score, mask, classes, caption])])
