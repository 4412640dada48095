"""MaskDINOLoss: the training loss of Mask RT-DETR, computed on the model's raw predictions.

For every prediction set (the last decoder layer, and as auxiliary terms the encoder proposals,
the decoder input and the earlier layers) the queries are matched to the ground truth (Hungarian
matching; denoising queries know their object already) and five terms are summed:
  class  varifocal loss whose target is the IoU of the matched prediction (mask IoU for the last
         layer, box IoU for the aux ones), so that scores rank masks by quality (paper sec. 3)
  bbox   L1 on normalised cx, cy, w, h        giou  1 - generalised IoU
  mask   BCE on sampled points                dice  1 - dice overlap on the same points
Points are sampled where the mask is uncertain (PointRend, Kirillov et al. 2020).
ppdet loops over the sets; here every step is one operator over all of them (on a CPU a step is
many small operators, so fewer, larger ones are cheaper), with the same numbers: the random
points are drawn first, in ppdet's order, and the sums are taken per set.
Mirrors `ppdet/modeling/losses/detr_loss.py` (DETRLoss, DINOLoss, MaskDINOLoss); the keys and
their sum `loss` are PaddleDetection's.
"""

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..config import COEFF, TERMS, LossConfig
from ..model.box_ops import box_cxcywh_to_xyxy, box_iou, generalized_box_iou
from .matcher import HungarianMatcher, MatchIndices


def varifocal_loss(logits: paddle.Tensor, target_score: paddle.Tensor, one_hot: paddle.Tensor,
                   normalizer, alpha: float = 0.75, gamma: float = 2.0) -> paddle.Tensor:
    """VFL (Zhang et al. 2021): BCE towards the IoU target, negatives down-weighted by p^gamma.

    logits, target_score, one_hot [.., B, Q, K] -> [..] (mean over queries, sum over B, K).
    """
    prob = F.sigmoid(logits)
    weight = alpha * prob.pow(gamma) * (1 - one_hot) + target_score * one_hot
    loss = F.binary_cross_entropy_with_logits(logits, target_score, weight=weight,
                                              reduction="none")
    return loss.mean(-2).sum([-2, -1]) / normalizer


def sigmoid_focal_loss(logits: paddle.Tensor, one_hot: paddle.Tensor, normalizer,
                       alpha: float = 0.25, gamma: float = 2.0) -> paddle.Tensor:
    """Focal loss (Lin et al. 2017), used when no IoU target exists (no objects in the batch)."""
    prob = F.sigmoid(logits)
    loss = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none")
    p_t = prob * one_hot + (1 - prob) * (1 - one_hot)
    loss = loss * (1 - p_t) ** gamma * (alpha * one_hot + (1 - alpha) * (1 - one_hot))
    return loss.mean(-2).sum([-2, -1]) / normalizer


def mask_iou(pred_logits: paddle.Tensor, gt_masks: paddle.Tensor) -> paddle.Tensor:
    """IoU of thresholded masks [n, h, w] (logits) vs [n, H, W], at 2x the prediction -> [n, 1]."""
    pred = F.interpolate(pred_logits.unsqueeze(0), scale_factor=2, mode="bilinear",
                         align_corners=False).squeeze(0)
    gt = F.interpolate(gt_masks.unsqueeze(0), size=pred.shape[-2:], mode="bilinear",
                       align_corners=False).squeeze(0)
    pred = (F.sigmoid(pred.flatten(1)) > 0.5).astype(pred.dtype)
    gt = (gt.flatten(1) > 0.5).astype(pred.dtype)
    inter = (pred * gt).sum(1)
    union = pred.sum(1) + gt.sum(1) - inter
    return ((inter + 1e-2) / (union + 1e-2)).unsqueeze(-1)


def dn_match_indices(gt_class: List[paddle.Tensor], dn_positive_idx: List[paddle.Tensor],
                     dn_num_group: int) -> MatchIndices:
    """Denoising queries are built from the gts, group by group: query k of a group <-> gt k."""
    indices = []
    for labels, positive in zip(gt_class, dn_positive_idx):
        gt_idx = paddle.arange(len(labels), dtype="int64").tile([dn_num_group])
        indices.append((positive.astype("int64"), gt_idx))
    return indices


class MaskDINOLoss(nn.Layer):
    """The loss dict of Mask RT-DETR from `outputs = model(inputs)` (train mode) and `inputs`."""

    def __init__(self, num_classes: int = 80, matcher: Optional[HungarianMatcher] = None,
                 loss_coeff: Optional[Dict[str, float]] = None, aux_loss: bool = True,
                 use_vfl: bool = True, vfl_iou_type: str = "mask",
                 num_sample_points: int = 12544, oversample_ratio: float = 3.0,
                 important_sample_ratio: float = 0.75):
        super().__init__()
        assert vfl_iou_type in ("mask", "bbox"), vfl_iou_type
        self.num_classes = num_classes
        self.matcher = matcher or HungarianMatcher()
        self.loss_coeff = loss_coeff or dict(COEFF)
        self.aux_loss, self.use_vfl, self.vfl_iou_type = aux_loss, use_vfl, vfl_iou_type
        self.num_sample_points = num_sample_points
        self.num_oversample_points = int(num_sample_points * oversample_ratio)
        self.num_important_points = int(num_sample_points * important_sample_ratio)

    def forward(self, outputs: Dict[str, Any], inputs: Dict[str, Any]) -> Dict[str, paddle.Tensor]:
        """outputs: the model's train-mode dict; inputs: per-image gt_class [n, 1], gt_bbox
        [n, 4] (cxcywh 0..1), gt_segm [n, H, W] -> {loss_<term>[_aux][_dn]: [], loss: []}."""
        dtype = outputs["masks"].dtype  # the masks as floats (gt_mask), once for every set
        inputs = {**inputs, "gt_mask": [m.astype(dtype) for m in inputs["gt_segm"]]}
        num_gts = self._num_gts(inputs["gt_class"])
        losses = self._prediction_set_losses(outputs["boxes"], outputs["logits"],
                                             outputs["masks"], inputs, num_gts)
        dn_meta = outputs.get("dn_meta")
        if dn_meta is not None:
            indices = dn_match_indices(inputs["gt_class"], dn_meta["dn_positive_idx"],
                                       dn_meta["dn_num_group"])
            losses.update(self._prediction_set_losses(
                outputs["dn_boxes"], outputs["dn_logits"], outputs["dn_masks"], inputs,
                num_gts * dn_meta["dn_num_group"], postfix="_dn", indices=indices))
        else:
            losses.update({k + "_dn": paddle.zeros([]) for k in list(losses)})
        losses["loss"] = paddle.add_n(list(losses.values()))
        return losses

    @staticmethod
    def _num_gts(gt_class: List[paddle.Tensor]) -> paddle.Tensor:
        """Objects per GPU, averaged over GPUs (as ppdet), at least 1: the loss normaliser."""
        num = paddle.to_tensor(float(sum(len(c) for c in gt_class)))
        world = paddle.distributed.get_world_size()
        if world > 1:
            paddle.distributed.all_reduce(num)
            num = num / world
        return num.clip(min=1.0)

    def _prediction_set_losses(self, boxes, logits, masks, inputs, num_gts, postfix="",
                               indices: Optional[MatchIndices] = None) -> Dict[str, paddle.Tensor]:
        """Losses of the last layer plus the sum over the earlier predictions (`_aux`).

        boxes [P, B, Q, 4], logits [P, B, Q, K], masks [P, B, Q, h, w]; `indices` fixes the
        matching (denoising), otherwise every prediction set is matched on its own.
        The sets are handled together, the last layer first and then the others in order
        (ppdet's loop): every step below is one operator over all of them.
        """
        if self.aux_loss:  # ppdet's order: the last layer, then the earlier ones
            # one gather, not concat([x[-1:], x[:-1]]): paddle's CPU slice backward took
            # ~20 ms a step on the masks alone
            order = paddle.to_tensor([len(boxes) - 1, *range(len(boxes) - 1)])
            boxes, logits, masks = (paddle.gather(x, order) for x in (boxes, logits, masks))
        else:
            boxes, logits, masks = boxes[-1:], logits[-1:], masks[-1:]
        sets, batch, num_queries = boxes.shape[:3]
        gt_counts = [len(c) for c in inputs["gt_class"]]
        has_gts = sum(gt_counts) > 0
        if indices is None:  # Hungarian: min(Q, n_i) pairs per image
            num_matched = sum(min(num_queries, n) for n in gt_counts)
        else:
            num_matched = sum(len(src) for src, _ in indices)
        match_points, mask_draws = self._draw(sets, batch, num_matched, has_gts, indices is None)
        if indices is None:
            set_indices = self.matcher.match_sets(boxes, logits, masks, inputs["gt_bbox"],
                                                  inputs["gt_class"], inputs["gt_mask"],
                                                  match_points)
        else:
            set_indices = [indices] * sets
        pred_idx, gt_idx = self._flat_indices(set_indices, num_queries, gt_counts)
        zero = paddle.zeros([sets])
        terms = {term: zero for term in TERMS}
        iou = None
        if has_gts:
            if self.use_vfl:  # the IoU is a target: no gradient through it
                iou = self._iou_targets(boxes.detach(), masks.detach(), inputs, pred_idx,
                                        gt_idx, num_matched)
            terms.update(self._box_losses(boxes, inputs["gt_bbox"], pred_idx, gt_idx,
                                          num_gts))
            terms.update(self._mask_losses(masks, inputs["gt_mask"], pred_idx, gt_idx, num_gts,
                                           mask_draws))
        terms["class"] = self._class_loss(logits, inputs["gt_class"], pred_idx, gt_idx,
                                          num_gts, iou)
        losses = {f"loss_{term}{postfix}": terms[term][0] for term in TERMS}
        if self.aux_loss:
            for term in TERMS:
                losses[f"loss_{term}_aux{postfix}"] = (terms[term][1:].sum() if sets > 1
                                                       else paddle.zeros([]))
        return losses

    def _draw(self, sets: int, batch: int, num_matched: int, has_gts: bool, match: bool):
        """Every random number of the sets, drawn in ppdet's order (per set: the matcher's
        points, then the mask loss's), so that computing the sets together changes none:
        (matcher points [P, B, 1, S, 2] or None, the mask loss's draws over all P*n rows)."""
        if not has_gts:  # nothing is matched or sampled
            return None, None
        match_points, mask_draws = [], []
        for _ in range(sets):
            if match:
                match_points.append(self.matcher.sample_points(batch))
            mask_draws.append(self._point_draws(num_matched))
        points = paddle.stack(match_points) if match else None
        return points, [paddle.concat(d) for d in zip(*mask_draws)]

    @staticmethod
    def _flat_indices(set_indices: List[MatchIndices], num_queries: int,
                      gt_counts: List[int]) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """Per set and image (query idx, gt idx) -> rows of the flattened predictions [P*B*Q]
        and of the concatenated gts [N], set after set, image after image (ppdet's order)."""
        batch, gt_start = len(gt_counts), np.cumsum([0] + gt_counts[:-1])
        pred, gt = [], []
        for s, indices in enumerate(set_indices):
            for i, (src, dst) in enumerate(indices):
                pred.append(src.numpy() + (s * batch + i) * num_queries)
                gt.append(dst.numpy() + gt_start[i])
        return (paddle.to_tensor(np.concatenate(pred).astype("int64")),
                paddle.to_tensor(np.concatenate(gt).astype("int64")))

    def _iou_targets(self, boxes, masks, inputs, pred_idx, gt_idx, num_matched):
        """The VFL targets [P*n]: box IoU of every matched pair; with vfl_iou_type "mask" the
        last layer's (the first n rows) is the mask IoU."""
        iou = box_iou(box_cxcywh_to_xyxy(paddle.gather(boxes.flatten(0, 2), pred_idx)),
                      box_cxcywh_to_xyxy(paddle.gather(paddle.concat(inputs["gt_bbox"]),
                                                       gt_idx))).flatten()
        if self.vfl_iou_type != "mask":
            return iou
        last = mask_iou(paddle.gather(masks.flatten(0, 2), pred_idx[:num_matched]),
                        paddle.gather(paddle.concat(inputs["gt_mask"]), gt_idx[:num_matched]))
        return paddle.concat([last.flatten(), iou[num_matched:]])

    def _class_loss(self, logits, gt_class, pred_idx, gt_idx, num_gts, iou) -> paddle.Tensor:
        """Varifocal loss against one-hot labels scaled by the matched IoU (focal without gts):
        logits [P, B, Q, K] -> [P]."""
        sets, batch, num_queries = logits.shape[:3]
        labels = paddle.full([sets * batch * num_queries], self.num_classes, dtype="int64")
        score = paddle.zeros([sets * batch * num_queries])  # no object, unless matched
        if len(pred_idx) > 0:
            labels = paddle.scatter(labels, pred_idx, paddle.gather(
                paddle.concat(gt_class).flatten().astype("int64"), gt_idx))
            if iou is not None:
                score = paddle.scatter(score, pred_idx, iou)
        one_hot = F.one_hot(labels.reshape([sets, batch, num_queries]),
                            self.num_classes + 1)[..., :-1]
        normalizer = num_gts / num_queries
        if iou is None:
            return self.loss_coeff["class"] * sigmoid_focal_loss(logits, one_hot, normalizer)
        target = score.reshape([sets, batch, num_queries, 1]) * one_hot
        return self.loss_coeff["class"] * varifocal_loss(logits, target, one_hot, normalizer)

    def _box_losses(self, boxes, gt_bbox, pred_idx, gt_idx, num_gts) -> Dict[str, paddle.Tensor]:
        """L1 and 1 - GIoU of the matched boxes, summed per set and divided by the gts: [P]."""
        sets = boxes.shape[0]
        pred = paddle.gather(boxes.flatten(0, 2), pred_idx)
        target = paddle.gather(paddle.concat(gt_bbox), gt_idx)
        l1 = (pred - target).abs().reshape([sets, -1]).sum(1) / num_gts
        giou = generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target))
        return {"bbox": self.loss_coeff["bbox"] * l1,
                "giou": self.loss_coeff["giou"] * (1 - giou).reshape([sets, -1]).sum(1)
                / num_gts}

    def _mask_losses(self, masks, gt_mask, pred_idx, gt_idx, num_gts,
                     draws) -> Dict[str, paddle.Tensor]:
        """BCE and dice of the matched masks at uncertain + random points, per set: [P]."""
        sets = masks.shape[0]
        pred = paddle.gather(masks.flatten(0, 2), pred_idx).unsqueeze(1)  # [P*n, 1, h, w]
        target = paddle.gather(paddle.concat(gt_mask), gt_idx).unsqueeze(1)  # [P*n, 1, H, W]
        points = 2.0 * self._uncertain_points(pred, draws).unsqueeze(1) - 1.0  # [P*n, 1, S, 2]
        pred = F.grid_sample(pred, points, align_corners=False).squeeze([1, 2])  # [P*n, S]
        target = F.grid_sample(target, points, align_corners=False).squeeze([1, 2]).detach()
        bce = F.binary_cross_entropy_with_logits(pred, target, reduction="none").mean(1)
        prob = F.sigmoid(pred)
        dice = 1 - (2 * (prob * target).sum(1) + 1) / (prob.sum(-1) + target.sum(-1) + 1)
        return {"mask": self.loss_coeff["mask"] * bce.reshape([sets, -1]).sum(1) / num_gts,
                "dice": self.loss_coeff["dice"] * dice.reshape([sets, -1]).sum(1) / num_gts}

    def _point_draws(self, num: int) -> List[paddle.Tensor]:
        """The random numbers of `_uncertain_points` for `num` masks, in its order: the 3S
        candidates [num, 1, 3S, 2] and the random top-up [num, S - important, 2] (or S
        uniform points [num, S, 2] when no point is important)."""
        if self.num_important_points == 0:
            return [paddle.rand([num, self.num_sample_points, 2])]
        draws = [paddle.rand([num, 1, self.num_oversample_points, 2])]
        num_random = self.num_sample_points - self.num_important_points
        if num_random > 0:
            draws.append(paddle.rand([num, num_random, 2]))
        return draws

    @paddle.no_grad()
    def _uncertain_points(self, pred: paddle.Tensor,
                          draws: Optional[List[paddle.Tensor]] = None) -> paddle.Tensor:
        """[n, 1, h, w] logits -> [n, S, 2] points in 0..1: the most uncertain of 3S random
        points (logit nearest 0), topped up with random ones (PointRend's sampling).
        `draws`: the random numbers of `_point_draws(n)` (drawn here when None)."""
        draws = draws if draws is not None else self._point_draws(pred.shape[0])
        if self.num_important_points == 0:  # important_sample_ratio 0: uniform points only
            return draws[0]
        candidates = draws[0]
        logits = F.grid_sample(pred, 2.0 * candidates - 1.0, align_corners=False)
        uncertainty = -paddle.abs(logits.squeeze([1, 2]))  # [n, 3S]
        _, top = paddle.topk(uncertainty, self.num_important_points, axis=1)
        points = paddle.take_along_axis(candidates.squeeze(1), top.unsqueeze(-1), axis=1)
        if len(draws) > 1:
            points = paddle.concat([points, draws[1]], axis=1)
        return points


def build_criterion(config: Optional[LossConfig] = None, num_classes: int = 80,
                    **overrides: Any) -> MaskDINOLoss:
    """MaskDINOLoss from a LossConfig (default: PaddleDetection's) with fields overridden."""
    cfg = dataclasses.replace(config or LossConfig(), **overrides)
    matcher = HungarianMatcher(cfg.matcher_coeff, cfg.num_sample_points, cfg.alpha, cfg.gamma)
    return MaskDINOLoss(num_classes, matcher, cfg.loss_coeff, cfg.aux_loss, cfg.use_vfl,
                        cfg.vfl_iou_type, cfg.num_sample_points, cfg.oversample_ratio,
                        cfg.important_sample_ratio)
