"""DETRPostProcess: raw query predictions -> the top detections in original-image pixels.

A DETR has no NMS: each query is one candidate. With a sigmoid (focal-loss) classifier every
(query, class) pair is a candidate of its own, so the top `num_top_queries` pairs are taken
over the flattened Q*K scores; a query may appear twice with two labels. Boxes are scaled to
the original image size; masks go from stride 4 straight to the original size (bilinear) and
are thresholded. Mirrors `DETRPostProcess` (`ppdet/modeling/post_process.py`) with
use_focal_loss=True, with_mask=True, bbox_decode_type='origin'.
"""

import math
from typing import Dict, Optional, Tuple

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .box_ops import box_cxcywh_to_xyxy


class DETRPostProcess(nn.Layer):
    """Top-k (query, class) pairs -> bbox [B*k, 6], bbox_num [B], mask [B*k, H0, W0] int32.

    A weightless layer so it exports (paddle.jit.to_static) together with the model. The input
    image is taken to be the whole resized image (no padding), as PaddleDetection's
    Resize(keep_ratio=False) readers make it.
    """

    def __init__(self, num_classes: int = 80, num_top_queries: int = 100,
                 mask_threshold: float = 0.5):
        super().__init__()
        self.num_classes, self.num_top_queries = num_classes, num_top_queries
        self.mask_threshold = mask_threshold
        # sigmoid(x) > t  <=>  x > log(t / (1 - t)): threshold the logits, skip 40M sigmoids
        self.logit_threshold = math.log(mask_threshold / (1 - mask_threshold))
        # (h, w), set by a dynamic-batch export (im_shape/scale_factor baked in): every image's
        # original size, so one resize to a known size serves any batch size
        self.same_size: Optional[Tuple[int, int]] = None

    def resize_masks(self, masks: paddle.Tensor, origin_shape: paddle.Tensor) -> paddle.Tensor:
        """masks [B, k, h, w] logits, origin_shape [B, 2] (h, w) -> [B*k, H0max, W0max] 0/1
        int32.

        Each image's masks are resized to its own original size. When the sizes differ, every
        image's masks sit in the top-left corner of one [max h, max w] canvas, zeros around
        them (PaddleDetection's MaskPostProcess layout, padded with 0 instead of -1); crop
        `mask[i, :h0, :w0]` to get them back. Loops over the (static) batch size; with
        `same_size` (a dynamic-batch export) one resize serves the whole batch instead.
        The canvas is built by concatenating zeros, not with `F.pad`: paddle2onnx 2.1 reads
        paddle 3.3's pad value (a double attribute) as a float, so the exported Pad filled
        the canvas with whatever bytes lay in memory (issue 15).
        """
        size = origin_shape.astype("int32")  # [B, 2]
        if self.same_size:
            return self._resize_same_size(masks)
        batch = masks.shape[0]
        out = []
        for i in range(batch):
            resized = F.interpolate(masks[i:i + 1], size=[size[i, 0], size[i, 1]],
                                    mode="bilinear", align_corners=False).squeeze(0)
            # [k, h0, w0]; squeeze, not [0]: an exported slice copies ~40M values. The k masks
            # stay channels of one image: as k images of one channel OpenVINO's resize (which
            # vectorises over channels) took over 20x longer for L in bf16 (268 ms against 7)
            # bool -> int32 in one cast: through float32 as well, OpenVINO took 231 ms for L at 640
            # in bf16 instead of 209 (paddle.where exports as broadcast arithmetic: 374 ms)
            binary = (resized > self.logit_threshold).astype("int32")
            if batch > 1:  # zeros up to the largest image of the batch
                binary = _zero_pad(binary, size[:, 0].max(), size[:, 1].max())
            out.append(binary)
        return out[0] if batch == 1 else paddle.concat(out)  # [B*k, H0, W0]

    def _resize_same_size(self, masks: paddle.Tensor) -> paddle.Tensor:
        """masks [B, k, h, w] logits, all to `same_size` -> [B*k, H0, W0]: no loop over the
        batch, so B stays symbolic in an export (and no padding: there is nothing to pad)."""
        height, width = self.same_size
        resized = F.interpolate(masks, size=[height, width], mode="bilinear",
                                align_corners=False).reshape([-1, height, width])
        return (resized > self.logit_threshold).astype("int32")

    def split_index(self, index: paddle.Tensor,
                    num_queries: int) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """index [B, k] into the flattened [Q, K] scores -> (query [B, k], label [B, k]) int64.

        Both are read from integer tables (the query and the label of every flat index), not
        computed as `index // K`: paddle2onnx exports floor_divide as Cast(int->float) -> Div ->
        Floor -> Cast, which a weakly typed FP16 TensorRT engine may run in half precision,
        where integers above 2048 round (L: 300 x 80 = 24,000 flat indices, about 1 in 20 would
        pick the wrong query). The tables fold into ONNX constants; Gather is exact in any engine.
        """
        k = self.num_classes
        query_table = paddle.arange(num_queries, dtype="int64").unsqueeze(1).expand(
            [num_queries, k]).flatten()  # [Q*K] = 0 (K times), 1 (K times), ...
        label_table = paddle.arange(k, dtype="int64").tile([num_queries])  # [Q*K] = 0..K-1, ...
        flat = index.flatten()  # [B*k]: paddle's gather takes a 1-D index
        return (paddle.gather(query_table, flat).reshape(index.shape),  # [B, k]
                paddle.gather(label_table, flat).reshape(index.shape))

    def forward(self, boxes: paddle.Tensor, logits: paddle.Tensor, masks: paddle.Tensor,
                im_shape: paddle.Tensor, scale_factor: paddle.Tensor) -> Dict[str, paddle.Tensor]:
        """boxes [B, Q, 4] (cxcywh 0..1), logits [B, Q, K], masks [B, Q, h, w] logits,
        im_shape / scale_factor [B, 2] -> {"bbox": [B*k, 6] (label, score, x1, y1, x2, y2 in
        original pixels, unclipped), "bbox_num": [B] int32, "mask": [B*k, H0, W0] int32}."""
        origin_shape = paddle.floor(im_shape / scale_factor + 0.5)  # [B, 2] (h, w)
        scale = origin_shape.flip([1]).tile([1, 2]).unsqueeze(1)  # [B, 1, 4] = (w, h, w, h)
        boxes_xyxy_px = box_cxcywh_to_xyxy(boxes) * scale

        # reshape([0, -1]), not flatten(1): one unknown size for a symbolic batch in an export
        scores, index = paddle.topk(F.sigmoid(logits).reshape([0, -1]), self.num_top_queries,
                                    axis=-1)
        query_index, labels = self.split_index(index, logits.shape[1])  # [B, k] each
        # a symbolic batch axis survives paddle.shape and a broadcast, not .shape[0], expand_as
        batch = paddle.arange(paddle.shape(index)[0]).astype(index.dtype).unsqueeze(-1)
        query = paddle.stack([batch + paddle.zeros_like(index), query_index],
                             -1)  # [B, k, 2] = (image, query)
        boxes_xyxy_px = paddle.gather_nd(boxes_xyxy_px, query)  # [B, k, 4]
        masks = paddle.gather_nd(masks, query)  # [B, k, h, w]

        bbox = paddle.concat([labels.unsqueeze(-1).astype("float32"), scores.unsqueeze(-1),
                              boxes_xyxy_px], axis=-1).reshape([-1, 6])
        bbox_num = paddle.full_like(scores[:, 0], self.num_top_queries, dtype="int32")  # [B]
        return {"bbox": bbox, "bbox_num": bbox_num,
                "mask": self.resize_masks(masks, origin_shape)}


def _zero_pad(masks: paddle.Tensor, height: paddle.Tensor, width: paddle.Tensor) -> paddle.Tensor:
    """[k, h, w] -> [k, height, width]: masks top-left, exact zeros to the right and below."""
    k, h, w = masks.shape[0], paddle.shape(masks)[1], paddle.shape(masks)[2]
    right = paddle.zeros([k, h, width - w], masks.dtype)
    masks = paddle.concat([masks, right], axis=2)
    below = paddle.zeros([k, height - h, width], masks.dtype)
    return paddle.concat([masks, below], axis=1)
