"""Denoising queries: noised copies of the ground truth that the decoder learns to repair.

DN-DETR (Li et al., 2022) and DINO (Zhang et al., 2023, sec. 3.3): during training, each ground
truth object is copied into `num_group` groups of extra queries with a randomly flipped label
and a jittered box. Their target is known (no Hungarian matching), which stabilises early
training. An attention mask keeps the groups from seeing each other and keeps the normal
(matching) queries from seeing any of them. Mirrors `get_denoising_training_group` in
`ppdet/modeling/transformers/utils.py`, random draws included (same calls, order, shapes).
"""

from typing import Dict, List, Optional, Tuple

import paddle

from .box_ops import inverse_sigmoid


def _pad_ground_truth(gt_class: List[paddle.Tensor], gt_bbox: List[paddle.Tensor], max_gt: int,
                      num_classes: int) -> Tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
    """Per-image ground truth padded to max_gt -> class [B, max_gt] (pad = num_classes, the 'no
    object' row), boxes [B, max_gt, 4] (pad = 0), pad mask [B, max_gt] (1 = real object)."""
    classes, boxes, real = [], [], []
    for cls, box in zip(gt_class, gt_bbox):
        n = int(cls.shape[0])
        classes.append(paddle.concat([cls.reshape([-1]).astype("int32"),
                                      paddle.full([max_gt - n], num_classes, "int32")]))
        boxes.append(paddle.concat([box.reshape([-1, 4]).astype("float32"),
                                    paddle.zeros([max_gt - n, 4])]))
        real.append(paddle.concat([paddle.ones([n]), paddle.zeros([max_gt - n])]))
    return paddle.stack(classes), paddle.stack(boxes), paddle.stack(real)


def denoising_attn_mask(max_gt: int, num_group: int, num_queries: int) -> paddle.Tensor:
    """[Qdn + Q, Qdn + Q] bool, True = may attend. Denoising query i belongs to group
    i // max_gt; a query never sees a denoising query of another group, and the matching
    queries (their own 'group') see none at all, so no answer leaks to them."""
    num_dn = max_gt * num_group
    index = paddle.arange(num_dn + num_queries)
    group = paddle.where(index < num_dn, index // max_gt, paddle.full_like(index, num_group))
    row, col = group.unsqueeze(1), group.unsqueeze(0)
    blocked = (row != col) & (col < num_group)  # the column is a denoising query of another group
    return ~blocked


def get_denoising_training_group(
        targets: Dict[str, List[paddle.Tensor]], num_classes: int, num_queries: int,
        class_embed: paddle.Tensor, num_denoising: int = 100, label_noise_ratio: float = 0.5,
        box_noise_scale: float = 1.0
) -> Tuple[Optional[paddle.Tensor], Optional[paddle.Tensor], Optional[paddle.Tensor],
           Optional[dict]]:
    """Build the denoising queries from a batch's ground truth (`targets` with, per image,
    `gt_class` [n_i, 1] ints and `gt_bbox` [n_i, 4] cxcywh). class_embed [K, D] -> (queries
    [B, Qdn, D], boxes_unact [B, Qdn, 4], attn_mask [Qdn + Q, Qdn + Q] bool True = attend,
    dn_meta), or four Nones when there is no denoising (num_denoising <= 0 or no object in the
    batch)."""
    if num_denoising <= 0:
        return None, None, None, None
    num_gts = [int(c.shape[0]) for c in targets["gt_class"]]
    max_gt = max(num_gts)
    if max_gt == 0:
        return None, None, None, None
    num_group = max(num_denoising // max_gt, 1)
    batch = len(num_gts)
    classes, boxes, real = _pad_ground_truth(targets["gt_class"], targets["gt_bbox"], max_gt,
                                             num_classes)
    classes = classes.tile([1, num_group])  # [B, Qdn]: group g holds the gts at g*max_gt + j
    boxes = boxes.tile([1, num_group, 1])
    real = real.tile([1, num_group])
    num_dn = max_gt * num_group
    # the positions of image i's real objects among its Qdn queries, group by group
    positive_idx = [(paddle.arange(num_group).unsqueeze(1) * max_gt +
                     paddle.arange(n).unsqueeze(0)).flatten() for n in num_gts]

    if label_noise_ratio > 0:
        # flip half of label_noise_ratio of the real labels to a random class
        classes = classes.flatten()
        noise = paddle.cast(paddle.rand(classes.shape) < label_noise_ratio * 0.5, "float32")
        chosen = paddle.nonzero(noise * real.flatten()).squeeze(-1)
        new_labels = paddle.randint_like(chosen, 0, num_classes, dtype=classes.dtype)
        classes = paddle.scatter(classes, chosen, new_labels).reshape([batch, num_dn])
    if box_noise_scale > 0:
        # move each corner by up to half the box size (scaled): cxcy by <= wh/2, wh by <= wh
        wh = boxes[..., 2:]
        diff = paddle.concat([wh * 0.5, wh], axis=-1) * box_noise_scale
        boxes = boxes + diff * (paddle.rand(boxes.shape) * 2.0 - 1.0)
    boxes_unact = inverse_sigmoid(boxes)

    # the padding label num_classes picks an all-zero embedding row
    table = paddle.concat([class_embed, paddle.zeros([1, class_embed.shape[-1]])])
    queries = paddle.gather(table, classes.flatten(), axis=0).reshape([batch, num_dn, -1])
    attn_mask = denoising_attn_mask(max_gt, num_group, num_queries)
    dn_meta = {"dn_positive_idx": positive_idx, "dn_num_group": num_group,
               "dn_num_split": [num_dn, num_queries]}
    return queries, boxes_unact, attn_mask, dn_meta
