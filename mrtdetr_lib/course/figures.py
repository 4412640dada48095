"""Figures for the notebooks: image grids, data samples with their targets, precision-recall
curves. Built on `viz.draw_instances`, which the CLI's `infer` uses too."""

from typing import Any, Dict, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np

from ..viz import draw_instances


def boxes_to_pixels(boxes: Any, size: Sequence[int]) -> np.ndarray:
    """Normalised cxcywh boxes [..., 4] -> x1, y1, x2, y2 in pixels of an image of size (h, w)."""
    boxes = np.asarray(boxes, np.float32)
    h, w = size
    center, extent = boxes[..., :2] * [w, h], boxes[..., 2:] * [w, h]
    return np.concatenate([center - extent / 2, center + extent / 2], -1)


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
        boxes = boxes_to_pixels(boxes, image.shape[:2])
    instances = {"boxes": boxes, "labels": np.asarray(sample["gt_class"]).reshape(-1),
                 "masks": sample.get("gt_segm")}
    return draw_instances(image, instances, class_names)


def show_images(images: Sequence[np.ndarray], titles: Optional[Sequence[str]] = None,
                ncols: int = 4, size: float = 3.0) -> None:
    """Show RGB images in a matplotlib grid, a title above each (plt.show: nothing returned)."""
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


def plot_pr_curves(result: dict, iou: float = 0.5, ax: Any = None) -> Any:
    """Precision against recall per class at one IoU threshold (0.5:0.05:0.95) for one iou type."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4))
    if result["precision"] is not None:
        t = int(round((iou - 0.5) / 0.05))
        for k, (name, ap) in enumerate(result["per_class_ap"].items()):
            curve = np.clip(result["precision"][t, :, k], 0, None)  # -1 = no ground truth
            ax.plot(result["recall"], curve, label=f"{name} (AP {ap:.2f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"precision-recall at IoU {iou:.2f}")
    ax.legend(fontsize=8)
    return ax
