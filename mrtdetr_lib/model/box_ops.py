"""Box and mask geometry shared by the model, the post-process and the loss.

Boxes without a suffix are normalised (cx, cy, w, h) in 0..1, as DETR predicts them; other
formats say so in their names (`_xyxy`, `_px`). Mirrors `ppdet/modeling/transformers/utils.py`.
"""

from typing import Tuple

import paddle


def box_cxcywh_to_xyxy(boxes: paddle.Tensor) -> paddle.Tensor:
    """[..., 4] (cx, cy, w, h) -> (x1, y1, x2, y2)."""
    center, size = boxes[..., :2], boxes[..., 2:]
    return paddle.concat([center - 0.5 * size, center + 0.5 * size], axis=-1)


def box_xyxy_to_cxcywh(boxes_xyxy: paddle.Tensor) -> paddle.Tensor:
    """[..., 4] (x1, y1, x2, y2) -> (cx, cy, w, h)."""
    x1, y1, x2, y2 = paddle.unbind(boxes_xyxy, axis=-1)
    return paddle.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1)


def inverse_sigmoid(x: paddle.Tensor, eps: float = 1e-5) -> paddle.Tensor:
    """log(x / (1 - x)) with x clipped to [0, 1] and both terms to >= eps (ppdet's exact form)."""
    x = x.clip(min=0.0, max=1.0)
    return paddle.log(x.clip(min=eps) / (1 - x).clip(min=eps))


def _extent(filled: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
    """filled [..., n] 0/1 -> (first index with a 1, last index + 1); no 1 gives (1e8, 1)."""
    # a broadcast, not expand_as: an export may have a symbolic batch (ONNX Expand takes no -1)
    index = paddle.arange(filled.shape[-1], dtype="float32") + paddle.zeros_like(filled)
    last = (index * filled).max(-1) + 1
    first = paddle.where(filled > 0, index, paddle.full_like(filled, 1e8)).min(-1)
    return first, last


def mask_to_box_coordinate(masks: paddle.Tensor, normalize: bool = False,
                           format: str = "xyxy") -> paddle.Tensor:
    """Tight box around each mask: [B, N, H, W] bool, or logits (a pixel is in where > 0) ->
    [B, N, 4]; an empty mask gives 0s.

    x_max / y_max are `last index + 1`, so a one-pixel mask has width 1; `normalize` divides
    by (W, H, W, H); `format` is "xyxy" or "xywh" (= cx, cy, w, h).
    """
    assert format in ("xyxy", "xywh"), format
    h, w = masks.shape[-2:]
    # Which columns / rows hold a pixel: the same box as ppdet's per-pixel min/max over H*W,
    # from [.., W] + [.., H] numbers (20x faster for 300 masks of 160x160). Logits: the max
    # first, then the threshold (`any(x > 0) == max(x) > 0`): no [B, N, H, W] 0/1 tensor (for
    # L's 300 masks OpenVINO spent about 3 ms on its compare and a cast on a generic kernel)
    if masks.dtype == paddle.bool:
        cols, rows = masks.any(axis=-2), masks.any(axis=-1)  # [B, N, W], [B, N, H]
    else:
        cols, rows = masks.max(axis=-2) > 0, masks.max(axis=-1) > 0
    cols, rows = cols.astype("float32"), rows.astype("float32")
    x_min, x_max = _extent(cols)
    y_min, y_max = _extent(rows)
    boxes = paddle.stack([x_min, y_min, x_max, y_max], axis=-1)
    boxes = boxes * cols.max(-1, keepdim=True)  # empty mask -> 0 box
    if normalize:
        boxes = boxes / paddle.to_tensor([w, h, w, h], dtype="float32")
    return boxes if format == "xyxy" else box_xyxy_to_cxcywh(boxes)


def box_iou(boxes1_xyxy: paddle.Tensor, boxes2_xyxy: paddle.Tensor,
            eps: float = 1e-9) -> paddle.Tensor:
    """Elementwise (broadcast) IoU of [..., 4] xyxy boxes -> [..., 1]; negative areas count 0."""
    x1, y1, x2, y2 = paddle.split(boxes1_xyxy, 4, axis=-1)
    gx1, gy1, gx2, gy2 = paddle.split(boxes2_xyxy, 4, axis=-1)
    overlap = ((paddle.minimum(x2, gx2) - paddle.maximum(x1, gx1)).clip(0)
               * (paddle.minimum(y2, gy2) - paddle.maximum(y1, gy1)).clip(0))
    area1 = ((x2 - x1) * (y2 - y1)).clip(0)
    area2 = ((gx2 - gx1) * (gy2 - gy1)).clip(0)
    return overlap / (area1 + area2 - overlap + eps)


def generalized_box_iou(boxes1_xyxy: paddle.Tensor, boxes2_xyxy: paddle.Tensor,
                        eps: float = 1e-10) -> paddle.Tensor:
    """Elementwise (broadcast) GIoU of [..., 4] xyxy boxes -> [..., 1] in [-1, 1].

    GIoU = IoU - (enclosing area - union) / enclosing area (Rezatofighi et al. 2019); it still
    has a gradient when boxes do not overlap, which is why DETR uses 1 - GIoU as a loss.
    """
    x1, y1, x2, y2 = paddle.split(boxes1_xyxy, 4, axis=-1)
    gx1, gy1, gx2, gy2 = paddle.split(boxes2_xyxy, 4, axis=-1)
    overlap = ((paddle.minimum(x2, gx2) - paddle.maximum(x1, gx1)).clip(0)
               * (paddle.minimum(y2, gy2) - paddle.maximum(y1, gy1)).clip(0))
    union = (x2 - x1) * (y2 - y1) + (gx2 - gx1) * (gy2 - gy1) - overlap + eps
    enclosing = ((paddle.maximum(x2, gx2) - paddle.minimum(x1, gx1))
                 * (paddle.maximum(y2, gy2) - paddle.minimum(y1, gy1)) + eps)
    return overlap / union - (enclosing - union) / enclosing
