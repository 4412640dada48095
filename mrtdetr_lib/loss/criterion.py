"""MaskDINOLoss: the training loss of Mask RT-DETR, computed on the model's raw predictions.

For every prediction set (the last decoder layer, and as auxiliary terms the encoder proposals,
the decoder input and the earlier layers) the queries are matched to the ground truth (Hungarian
matching; denoising queries know their object already) and five terms are summed:
  class  varifocal loss whose target is the IoU of the matched prediction (mask IoU for the last
         layer, box IoU for the aux ones), so that scores rank masks by quality (paper sec. 3)
  bbox   L1 on normalised cx, cy, w, h        giou  1 - generalised IoU
  mask   BCE on sampled points                dice  1 - dice overlap on the same points
Points are sampled where the mask is uncertain (PointRend, Kirillov et al. 2020).
Mirrors `ppdet/modeling/losses/detr_loss.py` (DETRLoss, DINOLoss, MaskDINOLoss); the keys and
their sum `loss` are PaddleDetection's.
"""

import dataclasses
from typing import Any, Dict, List, Optional

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from ..config import COEFF, TERMS, LossConfig
from ..model.box_ops import box_cxcywh_to_xyxy, box_iou, generalized_box_iou
from .matcher import HungarianMatcher, MatchIndices


def varifocal_loss(logits: paddle.Tensor, target_score: paddle.Tensor, one_hot: paddle.Tensor,
                   normalizer, alpha: float = 0.75, gamma: float = 2.0) -> paddle.Tensor:
    """VFL (Zhang et al. 2021): BCE towards the IoU target, negatives down-weighted by p^gamma.

    logits, target_score, one_hot [B, Q, K] -> scalar (mean over queries, sum over the rest).
    """
    prob = F.sigmoid(logits)
    weight = alpha * prob.pow(gamma) * (1 - one_hot) + target_score * one_hot
    loss = F.binary_cross_entropy_with_logits(logits, target_score, weight=weight,
                                              reduction="none")
    return loss.mean(1).sum() / normalizer


def sigmoid_focal_loss(logits: paddle.Tensor, one_hot: paddle.Tensor, normalizer,
                       alpha: float = 0.25, gamma: float = 2.0) -> paddle.Tensor:
    """Focal loss (Lin et al. 2017), used when no IoU target exists (no objects in the batch)."""
    prob = F.sigmoid(logits)
    loss = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none")
    p_t = prob * one_hot + (1 - prob) * (1 - one_hot)
    loss = loss * (1 - p_t) ** gamma * (alpha * one_hot + (1 - alpha) * (1 - one_hot))
    return loss.mean(1).sum() / normalizer


def gather_matched(per_image: Any, indices: MatchIndices, side: int) -> paddle.Tensor:
    """Concatenate the matched rows of every image: side 0 = predictions, 1 = ground truth."""
    return paddle.concat([paddle.gather(t, idx[side], axis=0)
                          for t, idx in zip(per_image, indices) if len(idx[side]) > 0])


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
        """
        iou_type = self.vfl_iou_type
        losses = self._losses(boxes[-1], logits[-1], masks[-1], inputs, num_gts, postfix,
                              indices, iou_type)
        if not self.aux_loss:
            return losses
        aux = [self._losses(boxes[i], logits[i], masks[i], inputs, num_gts, postfix, indices,
                            "bbox") for i in range(len(boxes) - 1)]
        for term in TERMS:
            terms = [a[f"loss_{term}{postfix}"] for a in aux]
            losses[f"loss_{term}_aux{postfix}"] = paddle.add_n(terms) if terms else paddle.zeros([])
        return losses

    def _losses(self, boxes, logits, masks, inputs, num_gts, postfix, indices,
                iou_type) -> Dict[str, paddle.Tensor]:
        """The five terms of one prediction set: boxes [B, Q, 4], logits [B, Q, K], masks."""
        if indices is None:
            indices = self.matcher(boxes, logits, masks, inputs["gt_bbox"],
                                   inputs["gt_class"], inputs["gt_mask"])
        has_gts = sum(len(c) for c in inputs["gt_class"]) > 0
        iou = None
        if self.use_vfl and has_gts:  # the IoU is a target: no gradient through it
            if iou_type == "mask":
                iou = mask_iou(gather_matched(masks.detach(), indices, 0),
                               gather_matched(inputs["gt_mask"], indices, 1))
            else:
                iou = box_iou(box_cxcywh_to_xyxy(gather_matched(boxes.detach(), indices, 0)),
                              box_cxcywh_to_xyxy(gather_matched(inputs["gt_bbox"], indices, 1)))
        losses = {f"loss_class{postfix}": self._class_loss(logits, inputs["gt_class"], indices,
                                                          num_gts, iou)}
        zero = paddle.zeros([])
        for term in ("bbox", "giou", "mask", "dice"):
            losses[f"loss_{term}{postfix}"] = zero
        if has_gts:
            box_terms = self._box_losses(boxes, inputs["gt_bbox"], indices, num_gts)
            mask_terms = self._mask_losses(masks, inputs["gt_mask"], indices, num_gts)
            for term, value in {**box_terms, **mask_terms}.items():
                losses[f"loss_{term}{postfix}"] = value
        return losses

    def _class_loss(self, logits, gt_class, indices, num_gts, iou) -> paddle.Tensor:
        """Varifocal loss against one-hot labels scaled by the matched IoU (focal without gts)."""
        batch, num_queries = logits.shape[:2]
        labels = paddle.full([batch * num_queries], self.num_classes, dtype="int64")  # no object
        score = paddle.zeros([batch * num_queries])
        if sum(len(c) for c in gt_class) > 0:
            flat = paddle.concat([src + i * num_queries for i, (src, _) in enumerate(indices)])
            labels = paddle.scatter(labels, flat, gather_matched(gt_class, indices, 1)
                                    .flatten().astype("int64"))
            if iou is not None:
                score = paddle.scatter(score, flat, iou.flatten())
        one_hot = F.one_hot(labels.reshape([batch, num_queries]), self.num_classes + 1)[..., :-1]
        normalizer = num_gts / num_queries
        if iou is None:
            return self.loss_coeff["class"] * sigmoid_focal_loss(logits, one_hot, normalizer)
        target = score.reshape([batch, num_queries, 1]) * one_hot
        return self.loss_coeff["class"] * varifocal_loss(logits, target, one_hot, normalizer)

    def _box_losses(self, boxes, gt_bbox, indices, num_gts) -> Dict[str, paddle.Tensor]:
        """L1 and 1 - GIoU of the matched boxes, summed and divided by the number of gts."""
        pred = gather_matched(boxes, indices, 0)
        target = gather_matched(gt_bbox, indices, 1)
        l1 = F.l1_loss(pred, target, reduction="sum") / num_gts
        giou = generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target))
        return {"bbox": self.loss_coeff["bbox"] * l1,
                "giou": self.loss_coeff["giou"] * (1 - giou).sum() / num_gts}

    def _mask_losses(self, masks, gt_mask, indices, num_gts) -> Dict[str, paddle.Tensor]:
        """BCE and dice of the matched masks at uncertain + random points."""
        pred = gather_matched(masks, indices, 0).unsqueeze(1)  # [n, 1, h, w]
        target = gather_matched(gt_mask, indices, 1).unsqueeze(1)  # [n, 1, H, W]
        points = 2.0 * self._uncertain_points(pred).unsqueeze(1) - 1.0  # [n, 1, S, 2]
        pred = F.grid_sample(pred, points, align_corners=False).squeeze([1, 2])  # [n, S]
        target = F.grid_sample(target, points, align_corners=False).squeeze([1, 2]).detach()
        bce = F.binary_cross_entropy_with_logits(pred, target, reduction="none").mean(1).sum()
        prob = F.sigmoid(pred)
        dice = 1 - (2 * (prob * target).sum(1) + 1) / (prob.sum(-1) + target.sum(-1) + 1)
        return {"mask": self.loss_coeff["mask"] * bce / num_gts,
                "dice": self.loss_coeff["dice"] * dice.sum() / num_gts}

    @paddle.no_grad()
    def _uncertain_points(self, pred: paddle.Tensor) -> paddle.Tensor:
        """[n, 1, h, w] logits -> [n, S, 2] points in 0..1: the most uncertain of 3S random
        points (logit nearest 0), topped up with random ones (PointRend's sampling)."""
        num = pred.shape[0]
        if self.num_important_points == 0:  # important_sample_ratio 0: uniform points only
            return paddle.rand([num, self.num_sample_points, 2])
        candidates = paddle.rand([num, 1, self.num_oversample_points, 2])
        logits = F.grid_sample(pred, 2.0 * candidates - 1.0, align_corners=False)
        uncertainty = -paddle.abs(logits.squeeze([1, 2]))  # [n, 3S]
        _, top = paddle.topk(uncertainty, self.num_important_points, axis=1)
        points = paddle.take_along_axis(candidates.squeeze(1), top.unsqueeze(-1), axis=1)
        num_random = self.num_sample_points - self.num_important_points
        if num_random > 0:
            points = paddle.concat([points, paddle.rand([num, num_random, 2])], axis=1)
        return points


def build_criterion(config: Optional[LossConfig] = None, num_classes: int = 80,
                    **overrides: Any) -> MaskDINOLoss:
    """MaskDINOLoss from a LossConfig (default: PaddleDetection's) with fields overridden."""
    cfg = dataclasses.replace(config or LossConfig(), **overrides)
    matcher = HungarianMatcher(cfg.matcher_coeff, cfg.num_sample_points, cfg.alpha, cfg.gamma)
    return MaskDINOLoss(num_classes, matcher, cfg.loss_coeff, cfg.aux_loss, cfg.use_vfl,
                        cfg.vfl_iou_type, cfg.num_sample_points, cfg.oversample_ratio,
                        cfg.important_sample_ratio)
