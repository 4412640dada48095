"""HungarianMatcher: the one-to-one assignment of predictions to ground-truth objects.

DETR (Carion et al. 2020, sec. 3.1) trains a set predictor: every ground-truth object is paired
with exactly one query by minimising a matching cost, and the loss is computed on those pairs.
Mask RT-DETR's cost adds mask terms to DETR's: focal class cost, L1 and GIoU on boxes, and
binary cross-entropy and dice on masks sampled at shared random points.
Mirrors `ppdet/modeling/transformers/matchers.py`.
"""

from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from scipy.optimize import linear_sum_assignment

from ..config import COEFF
from ..model.box_ops import box_cxcywh_to_xyxy, generalized_box_iou

MatchIndices = List[Tuple[paddle.Tensor, paddle.Tensor]]  # per image: (query idx, gt idx)


def focal_class_cost(probs: paddle.Tensor, alpha: float, gamma: float) -> paddle.Tensor:
    """Focal loss of predicting the class minus that of not predicting it: [..] -> [..]."""
    neg = (1 - alpha) * probs ** gamma * -(1 - probs + 1e-8).log()
    pos = alpha * (1 - probs) ** gamma * -(probs + 1e-8).log()
    return pos - neg


def per_image(cost: np.ndarray, num_gts: List[int]) -> Iterator[np.ndarray]:
    """[B, Q, N] costs against all the batch's gts -> each image's [Q, n_i] block of its own."""
    start = 0
    for i, count in enumerate(num_gts):
        yield cost[i, :, start:start + count]
        start += count


def point_mask_costs(mask_logits: paddle.Tensor, gt_masks: paddle.Tensor,
                     num_points: int) -> Tuple[paddle.Tensor, paddle.Tensor]:
    """BCE and dice costs of mask logits [.., M, S] against gt masks [.., N, S] (S points)
    -> [.., M, N] (leading dimensions: prediction sets, each its own matmul)."""
    pos = F.binary_cross_entropy_with_logits(mask_logits, paddle.ones_like(mask_logits),
                                             reduction="none")
    neg = F.binary_cross_entropy_with_logits(mask_logits, paddle.zeros_like(mask_logits),
                                             reduction="none")
    # BCE summed over points, for every (prediction, gt) pair at once, as two matmuls.
    cost_mask = (paddle.matmul(pos, gt_masks, transpose_y=True)
                 + paddle.matmul(neg, 1 - gt_masks, transpose_y=True)) / num_points
    probs = F.sigmoid(mask_logits)
    numerator = 2 * paddle.matmul(probs, gt_masks, transpose_y=True)
    denominator = probs.sum(-1, keepdim=True) + gt_masks.sum(-1).unsqueeze(-2)
    cost_dice = 1 - (numerator + 1) / (denominator + 1)
    return cost_mask, cost_dice


class HungarianMatcher(nn.Layer):
    """Minimum-cost matching of B images' Q predictions to their ground truth (no weights)."""

    def __init__(self, matcher_coeff: Optional[Dict[str, float]] = None,
                 num_sample_points: int = 12544, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        self.matcher_coeff = matcher_coeff or dict(COEFF)
        self.num_sample_points = num_sample_points
        self.alpha, self.gamma = alpha, gamma

    def sample_points(self, batch: int) -> paddle.Tensor:
        """The mask points of one prediction set: [B, 1, S, 2] in -1..1, one set per image."""
        return 2.0 * paddle.rand([batch, 1, self.num_sample_points, 2]) - 1.0

    def forward(self, boxes: paddle.Tensor, logits: paddle.Tensor, masks: paddle.Tensor,
                gt_bbox: List[paddle.Tensor], gt_class: List[paddle.Tensor],
                gt_mask: List[paddle.Tensor]) -> MatchIndices:
        """boxes [B, Q, 4] cxcywh, logits [B, Q, K], masks [B, Q, h, w] logits; per image
        gt_bbox [n, 4], gt_class [n, 1], gt_mask [n, H, W] float -> B (query idx, gt idx)."""
        return self.match_sets(boxes.unsqueeze(0), logits.unsqueeze(0), masks.unsqueeze(0),
                               gt_bbox, gt_class, gt_mask)[0]

    @paddle.no_grad()
    def match_sets(self, boxes: paddle.Tensor, logits: paddle.Tensor, masks: paddle.Tensor,
                   gt_bbox: List[paddle.Tensor], gt_class: List[paddle.Tensor],
                   gt_mask: List[paddle.Tensor], points: Optional[paddle.Tensor] = None
                   ) -> List[MatchIndices]:
        """`forward` for P prediction sets at once (boxes [P, B, Q, 4], ...): one cost tensor
        [P, B*Q, N], one assignment per set and image. `points` [P, B, 1, S, 2] are the sets'
        mask points (drawn here when None, set after set)."""
        sets, batch, num_queries = boxes.shape[:3]
        num_gts = [len(c) for c in gt_class]
        empty = paddle.zeros([0], dtype="int64")
        if sum(num_gts) == 0:
            return [[(empty, empty) for _ in range(batch)] for _ in range(sets)]
        if points is None:
            points = paddle.stack([self.sample_points(batch) for _ in range(sets)])
        cost = self.weighted_sum(self.set_cost_terms(boxes, logits, masks, gt_bbox, gt_class,
                                                     gt_mask, num_gts, points))
        result = []
        for per_set in cost.reshape([sets, batch, num_queries, -1]).numpy():
            indices = []
            for block in per_image(per_set, num_gts):
                if block.shape[1] == 0:
                    indices.append((empty, empty))
                    continue
                rows, cols = linear_sum_assignment(block)
                indices.append((paddle.to_tensor(rows, dtype="int64"),
                                paddle.to_tensor(cols, dtype="int64")))
            result.append(indices)
        return result

    def weighted_sum(self, terms: Dict[str, paddle.Tensor]) -> paddle.Tensor:
        """The matching cost: the terms of `cost_terms` times `matcher_coeff`, [.., B*Q, N]."""
        coeff = self.matcher_coeff  # ppdet's order of additions (box terms first)
        cost = coeff["class"] * terms["class"] + coeff["bbox"] * terms["bbox"] \
            + coeff["giou"] * terms["giou"]
        return cost + coeff["mask"] * terms["mask"] + coeff["dice"] * terms["dice"]

    def cost_terms(self, boxes, logits, masks, gt_bbox, gt_class, gt_mask,
                    num_gts) -> Dict[str, paddle.Tensor]:
        """The unweighted costs of every prediction of one set against every gt, each
        [B*Q, N]; draws the set's mask points."""
        terms = self.set_cost_terms(boxes.unsqueeze(0), logits.unsqueeze(0), masks.unsqueeze(0),
                                    gt_bbox, gt_class, gt_mask, num_gts,
                                    self.sample_points(len(num_gts)).unsqueeze(0))
        return {k: v[0] for k, v in terms.items()}

    def set_cost_terms(self, boxes, logits, masks, gt_bbox, gt_class, gt_mask, num_gts,
                       points) -> Dict[str, paddle.Tensor]:
        """`cost_terms` of P sets (boxes [P, B, Q, 4], ..., points [P, B, 1, S, 2]) -> each
        [P, B*Q, N]: every term is one operator over all sets."""
        sets, batch = boxes.shape[:2]
        probs = F.sigmoid(logits.flatten(1, 2))  # [P, B*Q, K]
        pred_boxes = boxes.flatten(1, 2).unsqueeze(2)  # [P, B*Q, 1, 4]
        target_ids = paddle.concat(gt_class).flatten().astype("int64")  # [N]
        target_boxes = paddle.concat(gt_bbox)  # [N, 4]

        cost_class = focal_class_cost(paddle.gather(probs, target_ids, axis=2), self.alpha,
                                      self.gamma)
        cost_bbox = (pred_boxes - target_boxes).abs().sum(-1)
        giou = generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes),
                                   box_cxcywh_to_xyxy(target_boxes)).squeeze(-1)

        # All queries of an image share one set of random points (cheap: no per-pair sampling).
        pred_points = F.grid_sample(masks.flatten(0, 1), points.flatten(0, 1),
                                    align_corners=False)  # [P*B, Q, 1, S]
        pred_points = pred_points.reshape([sets, -1, self.num_sample_points])  # [P, B*Q, S]
        # Each gt is sampled at its image's points of every set at once: [N, 1, P*S, 2].
        image_of_gt = paddle.to_tensor([i for i, n in enumerate(num_gts) for _ in range(n)],
                                       dtype="int64")
        gt_points = paddle.gather(points, image_of_gt, axis=1).transpose([1, 2, 0, 3, 4])
        target = F.grid_sample(paddle.concat(gt_mask).unsqueeze(1),
                               gt_points.reshape([len(image_of_gt), 1, -1, 2]),
                               align_corners=False)  # [N, 1, 1, P*S]
        target = target.reshape([-1, sets, self.num_sample_points]).transpose([1, 0, 2])
        cost_mask, cost_dice = point_mask_costs(pred_points, target, self.num_sample_points)
        return {"class": cost_class, "bbox": cost_bbox, "giou": (1 - giou) - 1,  # ppdet: GIoU
                "mask": cost_mask, "dice": cost_dice}                            # loss - 1
