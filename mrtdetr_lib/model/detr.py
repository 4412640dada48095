"""MaskRTDETR: the whole model, image in, instances (eval) or raw predictions (training) out.

backbone (PPHGNetV2) -> neck (MaskHybridEncoder) -> transformer (MaskRTDETRTransformer) ->
post-process (DETRPostProcess) in eval, or MaskDINOHead's output split in training (that head
has no weights; the split sits next to the join, in decoder.py; its loss lives in
loss/criterion.py). Mirrors `ppdet/modeling/architectures/
detr.py` (`DETR`) and `heads/detr_head.py` (`MaskDINOHead`). `build_model` is the one place
that reads a ModelConfig.
"""

import dataclasses
from typing import Any, Dict, Optional, Union

import paddle
import paddle.nn as nn

from ..config import ModelConfig, model_config
from .backbone import PPHGNetV2
from .decoder import MaskRTDETRTransformer, split_predictions
from .encoder import MaskHybridEncoder
from .postprocess import DETRPostProcess


class MaskRTDETR(nn.Layer):
    """Mask RT-DETR: `backbone`, `transformer`, `neck` (the official state_dict order)."""

    def __init__(self, backbone: nn.Layer, transformer: nn.Layer, neck: nn.Layer,
                 post_process: nn.Layer):
        super().__init__()
        self.backbone, self.transformer, self.neck = backbone, transformer, neck
        self.post_process = post_process  # no weights

    def forward(self, inputs: Dict[str, Any]) -> Dict[str, Any]:
        """inputs: image [B, 3, H, W] (0..1), im_shape [B, 2], scale_factor [B, 2]; training
        also gt_class (list of [n_i, 1] int), gt_bbox (list of [n_i, 4] cxcywh 0..1).

        Eval -> bbox [B*k, 6] (label, score, x1, y1, x2, y2 original pixels), bbox_num [B]
        int32, mask [B*k, H0, W0] int32 (k = num_top_queries).
        Training -> raw predictions, P = 1 (encoder) + 1 (decoder input, only with
        denoising) + L (decoder layers; the last entry is the final layer), M = H/4 x W/4:
            logits [P, B, Q, K], boxes [P, B, Q, 4] (sigmoid cxcywh), masks [P, B, Q, *M]
            (logits); dn_logits [P_dn, B, Qdn, K], dn_boxes [P_dn, B, Qdn, 4], dn_masks
            [P_dn, B, Qdn, *M] with P_dn = 1 + L, or None without denoising; dn_meta
            {dn_positive_idx: list of B int64 [n_i * groups], dn_num_group: int,
            dn_num_split: [Qdn, Q]} or None.
        """
        self._check_size(inputs["image"])
        feats = self.neck(self.backbone(inputs["image"]))
        if self.training:  # the targets make the denoising queries
            return split_predictions(self.transformer(feats, inputs.get("gt_class"),
                                                      inputs.get("gt_bbox")))
        out = self.transformer(feats)
        return self.post_process(out["dec_boxes"][-1], out["dec_logits"][-1],
                                 out["dec_masks"][-1], inputs["im_shape"], inputs["scale_factor"])


    def _check_size(self, image: paddle.Tensor) -> None:
        """Eval with a fixed eval_size only takes that input size (static shapes only)."""
        eval_size, size = self.transformer.eval_size, tuple(image.shape[2:])
        if not self.training and eval_size and min(size) > 0 and size != eval_size:
            raise ValueError(f"image size {size} does not match eval_size {eval_size}; build "
                             "the model with eval_size=None to take any size")


def build_model(arch: Union[str, ModelConfig] = "l", **overrides: Any) -> MaskRTDETR:
    """A MaskRTDETR from a preset name ("s", "m", "l", "x", "h", "tiny") or a ModelConfig,
    with ModelConfig fields overridden, e.g. build_model("l", num_queries=100, eval_size=None).
    """
    if isinstance(arch, ModelConfig):
        cfg = dataclasses.replace(arch, **overrides)
    else:
        cfg = model_config(arch, **overrides)
    eval_size: Optional[tuple] = tuple(cfg.eval_size) if cfg.eval_size else None
    backbone = PPHGNetV2(cfg.arch, lr_mult_list=cfg.lr_mult_list, return_idx=cfg.return_idx,
                         freeze_stem_only=cfg.freeze_stem_only, freeze_at=cfg.freeze_at,
                         freeze_norm=cfg.freeze_norm)
    neck = MaskHybridEncoder(
        backbone.out_channels, feat_strides=backbone.out_strides,
        hidden_dim=cfg.encoder_hidden_dim, use_encoder_idx=cfg.use_encoder_idx,
        num_encoder_layers=cfg.num_encoder_layers, nhead=cfg.encoder_nhead,
        dim_feedforward=cfg.encoder_dim_feedforward, num_prototypes=cfg.num_prototypes,
        pe_temperature=cfg.pe_temperature, expansion=cfg.expansion, depth_mult=cfg.depth_mult,
        mask_feat_channels=cfg.mask_feat_channels, eval_size=eval_size)
    transformer = MaskRTDETRTransformer(
        num_classes=cfg.num_classes, hidden_dim=cfg.hidden_dim, num_queries=cfg.num_queries,
        backbone_feat_channels=[cfg.encoder_hidden_dim] * 3, feat_strides=[8, 16, 32],
        num_prototypes=cfg.num_prototypes, num_levels=cfg.num_levels,
        num_decoder_points=cfg.num_decoder_points, nhead=cfg.nhead,
        num_decoder_layers=cfg.num_decoder_layers, dim_feedforward=cfg.dim_feedforward,
        num_denoising=cfg.num_denoising, label_noise_ratio=cfg.label_noise_ratio,
        box_noise_scale=cfg.box_noise_scale, mask_enhanced=cfg.mask_enhanced,
        eval_size=eval_size, eval_idx=cfg.eval_idx)
    post_process = DETRPostProcess(cfg.num_classes, cfg.num_top_queries, cfg.mask_threshold)
    return MaskRTDETR(backbone, transformer, neck, post_process)
