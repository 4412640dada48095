"""Drawing instances (masks, boxes, labels) on an image: the CLI's `infer` and the course.

`draw_instances` takes the same dict for ground truth and predictions (Predictor's output:
`boxes` [n,4] x1,y1,x2,y2 pixels, `labels` [n], optional `masks` [n,H,W] and `scores` [n]) and
returns a new RGB uint8 array, so it works in notebooks, scripts and saved files alike.
"""

from typing import Any, Dict, Optional, Sequence

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

