"""MaskRTDETRTransformer: from encoder maps to per-query classes, boxes and masks.

RT-DETR (Zhao et al., 2024, sec. 4.3) picks the decoder's queries from the encoder memory
("uncertainty-minimal" top-k on the class score); Mask RT-DETR (PaddleDetection) adds mask
prototypes: a query's mask is `mask_query_head(query) @ prototypes`, and the decoder's initial
reference box is the tight box around the selected query's encoder mask ("mask-enhanced
anchor box initialization", Mask DINO sec. 3.3). Six post-norm decoder layers refine
content and box: self-attention, deformable cross-attention (attention.py), FFN.
Mirrors `ppdet/modeling/transformers/mask_rtdetr_transformer.py` (`MaskRTDETR`,
`MaskTransformerDecoder`) and `rtdetr_transformer.py` (`TransformerDecoderLayer`).
Every step is a public method so a notebook can run and inspect them one by one.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle import ParamAttr

from .attention import PPMSDeformableAttention
from .box_ops import inverse_sigmoid, mask_to_box_coordinate
from .denoising import get_denoising_training_group
from .layers import (
    MLP,
    MultiHeadAttention,
    batch_norm,
    bias_init_with_prob,
    layer_norm,
    linear_init_,
    xavier_uniform_,
)

Shapes = List[Tuple[int, int]]



def generate_anchors(spatial_shapes: Shapes, grid_size: float = 0.05,
                     eps: float = 0.01) -> Tuple[paddle.Tensor, paddle.Tensor]:
    """One anchor per memory token -> (anchors [1, S, 4] inverse-sigmoid cxcywh, +inf where
    invalid; valid_mask [1, S, 1] bool). Level l: cell centres, side 0.05 * 2^l; an anchor is
    valid when all four numbers lie in (eps, 1 - eps), i.e. not touching the border."""
    anchors = []
    for level, (h, w) in enumerate(spatial_shapes):
        y, x = paddle.meshgrid(paddle.arange(h, dtype="float32"),
                               paddle.arange(w, dtype="float32"))
        # ppdet divides (x, y) by (h, w); (w, h) is the same on square maps and right otherwise
        centers = (paddle.stack([x, y], -1) + 0.5) / paddle.to_tensor([w, h], dtype="float32")
        sizes = paddle.ones_like(centers) * grid_size * (2.0 ** level)
        anchors.append(paddle.concat([centers, sizes], -1).reshape([1, h * w, 4]))
    anchors = paddle.concat(anchors, 1)
    valid_mask = ((anchors > eps) & (anchors < 1 - eps)).all(-1, keepdim=True)
    anchors = paddle.log(anchors / (1 - anchors))
    return paddle.where(valid_mask, anchors, paddle.full_like(anchors, float("inf"))), valid_mask


class TransformerDecoderLayer(nn.Layer):
    """Post-norm decoder layer: self-attention -> deformable cross-attention -> FFN."""

    def __init__(self, d_model: int = 256, n_head: int = 8, dim_feedforward: int = 1024,
                 n_levels: int = 4, n_points: int = 4):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, n_head)
        self.norm1 = layer_norm(d_model)
        self.cross_attn = PPMSDeformableAttention(d_model, n_head, n_levels, n_points, 1.0)
        self.norm2 = layer_norm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm3 = layer_norm(d_model)
        for linear in (self.linear1, self.linear2):
            linear_init_(linear)
            xavier_uniform_(linear.weight)

    def forward(self, content: paddle.Tensor, reference_boxes: paddle.Tensor,
                memory: paddle.Tensor, spatial_shapes: Shapes,
                attn_mask: Optional[paddle.Tensor] = None,
                query_pos_embed: Optional[paddle.Tensor] = None) -> paddle.Tensor:
        """content [B, Q, D] (ppdet: `tgt`), reference_boxes [B, Q, 4] (0..1), memory [B, S, D],
        attn_mask additive [Q, Q] or None, query_pos_embed [B, Q, D] -> [B, Q, D]."""
        q = k = content + query_pos_embed  # position goes into queries/keys, not values
        attended = self.self_attn(q, k, content, attn_mask=attn_mask)
        content = self.norm1(content + attended)
        cross = self.cross_attn(content + query_pos_embed, reference_boxes, memory,
                                spatial_shapes)
        content = self.norm2(content + cross)
        ffn = self.linear2(F.relu(self.linear1(content)))
        return self.norm3(content + ffn)


class MaskTransformerDecoder(nn.Layer):
    """The decoder layers and their box refinement; in eval it stops at layer `eval_idx`."""

    def __init__(self, num_layers: int, eval_idx: int = -1, **layer_kw):
        super().__init__()
        self.layers = nn.LayerList(TransformerDecoderLayer(**layer_kw) for _ in range(num_layers))
        self.eval_idx = eval_idx if eval_idx >= 0 else num_layers + eval_idx

    def forward(self, content: paddle.Tensor, ref_unact: paddle.Tensor, memory: paddle.Tensor,
                spatial_shapes: Shapes, bbox_head: nn.Layer, query_pos_head: nn.Layer,
                attn_mask: Optional[paddle.Tensor] = None
                ) -> Tuple[List[paddle.Tensor], List[paddle.Tensor]]:
        """content [B, Q, D], ref_unact [B, Q, 4] -> per run layer: hidden [B, Q, D] and
        boxes [B, Q, 4] (sigmoid cxcywh, the refined reference after that layer)."""
        num_layers = len(self.layers) if self.training else self.eval_idx + 1
        hidden, boxes = [], []
        ref = F.sigmoid(ref_unact)  # the reference the layer samples around (no gradient)
        prev = ref  # the previous layer's box with its gradient (training)
        output = content
        for layer in self.layers[:num_layers]:
            output = layer(output, ref, memory, spatial_shapes, attn_mask, query_pos_head(ref))
            delta = bbox_head(output)  # a refinement in inverse-sigmoid space
            box = F.sigmoid(delta + inverse_sigmoid(ref))
            # DINO's "look forward twice": the loss on layer i's box also reaches layer i-1
            # through `prev`; equal in value to `box`, only the gradient path differs.
            boxes.append(F.sigmoid(delta + inverse_sigmoid(prev)) if self.training else box)
            hidden.append(output)
            prev, ref = box, (box.detach() if self.training else box)
        return hidden, boxes


class MaskRTDETRTransformer(nn.Layer):
    """Encoder maps + mask prototypes -> classes, boxes and masks of `num_queries` queries.

    Weights are PaddleDetection's `transformer.*`: `input_proj`, `decoder`,
    `denoising_class_embed`, `query_pos_head`, `mask_query_head`, `enc_output`, `dec_norm`,
    and ONE `score_head`/`bbox_head` shared by query selection and every decoder layer.
    No weight depends on `num_queries`. With `eval_size` the anchors are computed once here.
    """

    def __init__(self, num_classes: int = 80, hidden_dim: int = 256, num_queries: int = 300,
                 backbone_feat_channels: Sequence[int] = (512, 1024, 2048),
                 feat_strides: Sequence[int] = (8, 16, 32), num_prototypes: int = 32,
                 num_levels: int = 3, num_decoder_points: int = 4, nhead: int = 8,
                 num_decoder_layers: int = 6, dim_feedforward: int = 1024,
                 num_denoising: int = 100,
                 label_noise_ratio: float = 0.4, box_noise_scale: float = 0.4,
                 mask_enhanced: bool = True, eval_size: Optional[Sequence[int]] = None,
                 eval_idx: int = -1):
        super().__init__()
        if len(backbone_feat_channels) != num_levels or len(feat_strides) != num_levels:
            raise ValueError(f"MaskRTDETRTransformer needs {num_levels} levels, got channels "
                             f"{list(backbone_feat_channels)} and strides {list(feat_strides)}")
        self.num_classes, self.hidden_dim, self.num_queries = num_classes, hidden_dim, num_queries
        self.feat_strides = list(feat_strides)
        self.num_denoising, self.label_noise_ratio = num_denoising, label_noise_ratio
        self.box_noise_scale, self.mask_enhanced = box_noise_scale, mask_enhanced
        self.eval_size = tuple(eval_size) if eval_size else None

        self.input_proj = nn.LayerList(nn.Sequential(
            ("conv", nn.Conv2D(c, hidden_dim, 1, bias_attr=False)),
            ("norm", batch_norm(hidden_dim)))
            for c in backbone_feat_channels)
        self.decoder = MaskTransformerDecoder(
            num_decoder_layers, eval_idx, d_model=hidden_dim, n_head=nhead,
            dim_feedforward=dim_feedforward, n_levels=num_levels, n_points=num_decoder_points)
        self.denoising_class_embed = nn.Embedding(
            num_classes, hidden_dim, weight_attr=ParamAttr(initializer=nn.initializer.Normal()))
        self.query_pos_head = MLP(4, 2 * hidden_dim, hidden_dim, num_layers=2)
        self.mask_query_head = MLP(hidden_dim, hidden_dim, num_prototypes, num_layers=3)
        self.enc_output = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), layer_norm(hidden_dim))
        self.dec_norm = layer_norm(hidden_dim)
        self.score_head = nn.Linear(hidden_dim, num_classes)
        self.bbox_head = MLP(hidden_dim, hidden_dim, 4, num_layers=3)
        self._reset_parameters()

        if self.eval_size:  # precomputed for export; buffers outside the state_dict
            self.eval_shapes = [(self.eval_size[0] // s, self.eval_size[1] // s)
                                for s in self.feat_strides]
            anchors, valid_mask = generate_anchors(self.eval_shapes)
            self.register_buffer("anchors", anchors, persistable=False)
            self.register_buffer("valid_mask", valid_mask, persistable=False)

    def _reset_parameters(self) -> None:
        """PaddleDetection's init: class bias at prior 0.01, last box layer zero, Xavier."""
        linear_init_(self.score_head)
        self.score_head.bias.set_value(
            paddle.full_like(self.score_head.bias, bias_init_with_prob(0.01)))
        last = self.bbox_head.layers[-1]
        last.weight.set_value(paddle.zeros_like(last.weight))
        last.bias.set_value(paddle.zeros_like(last.bias))
        linear_init_(self.enc_output[0])
        xavier_uniform_(self.enc_output[0].weight)
        for layer in self.query_pos_head.layers:
            xavier_uniform_(layer.weight)
        for proj in self.input_proj:
            xavier_uniform_(proj.conv.weight)

    # ------------------------------------------------------------------ steps
    def project_memory(self, feats: List[paddle.Tensor]) -> Tuple[paddle.Tensor, Shapes]:
        """3 maps [B, C_l, h_l, w_l] -> memory [B, S, D] (levels flattened h-major, S = sum
        h_l*w_l) and the levels' (h, w)."""
        memory, spatial_shapes = [], []
        for proj, feat in zip(self.input_proj, feats):
            h, w = feat.shape[2:]
            # NCHW -> NHWC, then flatten (h-major tokens): as flatten(2).transpose([0, 2, 1])
            # OpenVINO moved the transpose past the concat into each of the six value
            # projections (6 x 0.9 ms for L); this one it runs once, with a fast kernel
            memory.append(proj(feat).transpose([0, 2, 3, 1]).flatten(1, 2))  # [B, h*w, D]
            spatial_shapes.append((h, w))
        return paddle.concat(memory, 1), spatial_shapes

    def anchors_for(self, spatial_shapes: Shapes) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """(anchors [1, S, 4], valid_mask [1, S, 1]): precomputed in eval with eval_size."""
        if self.training or self.eval_size is None:
            return generate_anchors(spatial_shapes)
        if [tuple(s) for s in spatial_shapes] != self.eval_shapes:
            raise ValueError(f"input of feature sizes {spatial_shapes} does not match eval_size "
                             f"{self.eval_size}; build the model with eval_size=None (any "
                             f"input size) or resize the images to {self.eval_size}")
        return self.anchors, self.valid_mask

    def score_memory(self, memory: paddle.Tensor, spatial_shapes: Shapes
                     ) -> Tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
        """Every memory token as a proposal -> output_memory [B, S, D], class logits [B, S, K],
        box logits [B, S, 4] (bbox_head + anchor, inverse-sigmoid space; +inf if invalid)."""
        anchors, valid_mask = self.anchors_for(spatial_shapes)
        memory = paddle.where(valid_mask, memory, paddle.zeros_like(memory))  # border tokens
        output_memory = self.enc_output(memory)
        boxes_unact = self.bbox_head(output_memory) + anchors
        return output_memory, self.score_head(output_memory), boxes_unact

    def select_queries(self, output_memory: paddle.Tensor, logits: paddle.Tensor,
                       boxes_unact: paddle.Tensor
                       ) -> Tuple[paddle.Tensor, paddle.Tensor, paddle.Tensor]:
        """Top num_queries tokens by best class logit -> (index [B, Q] into S, content
        [B, Q, D] the queries' content, ref_unact [B, Q, 4] their box logits)."""
        _, index = paddle.topk(logits.max(-1), self.num_queries, axis=1)
        # paddle.shape and a broadcast (not .shape[0], expand_as): the batch axis may be
        # symbolic in an export (ONNX Expand takes no -1)
        batch = paddle.arange(paddle.shape(index)[0]).astype(index.dtype).unsqueeze(-1)
        batch_index = paddle.stack([batch + paddle.zeros_like(index), index], -1)  # [B,Q,2]
        return (index, paddle.gather_nd(output_memory, batch_index),
                paddle.gather_nd(boxes_unact, batch_index))

    def predict(self, query: paddle.Tensor, mask_feat: paddle.Tensor
                ) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """Shared heads: query [B, Q, D], prototypes [B, M, h, w] -> class logits [B, Q, K],
        mask logits [B, Q, h, w] (= mask_query_head(query) @ prototypes)."""
        query = self.dec_norm(query)
        mask_embed = self.mask_query_head(query)  # [B, Q, M]
        masks = paddle.bmm(mask_embed, mask_feat.flatten(2))  # [B, Q, h*w]
        return self.score_head(query), masks.reshape([0, 0, *mask_feat.shape[2:]])

    def mask_enhanced_reference(self, masks: paddle.Tensor) -> paddle.Tensor:
        """Mask logits [B, Q, h, w] -> box logits [B, Q, 4] of each mask's tight box
        (an empty mask gives box 0, i.e. inverse_sigmoid = log(1e-5))."""
        boxes = mask_to_box_coordinate(masks, normalize=True, format="xywh")
        return inverse_sigmoid(boxes)

    def denoising_group(self, gt_class: Optional[List[paddle.Tensor]] = None,
                        gt_bbox: Optional[List[paddle.Tensor]] = None):
        """Training only: (queries [B, Qdn, D], boxes_unact [B, Qdn, 4], attn_mask, dn_meta)
        from per image gt_class [n_i, 1] and gt_bbox [n_i, 4] (cxcywh 0..1)."""
        if not self.training or gt_class is None:
            return None, None, None, None
        return get_denoising_training_group(
            {"gt_class": gt_class, "gt_bbox": gt_bbox}, self.num_classes, self.num_queries,
            self.denoising_class_embed.weight, self.num_denoising, self.label_noise_ratio,
            self.box_noise_scale)

    # ------------------------------------------------------------------ forward
    def forward(self, feats: Tuple[List[paddle.Tensor], paddle.Tensor],
                gt_class: Optional[List[paddle.Tensor]] = None,
                gt_bbox: Optional[List[paddle.Tensor]] = None
                ) -> Dict[str, Optional[paddle.Tensor]]:
        """(3 maps [B, C_l, h, w], prototypes [B, M, H/4, W/4]), training targets per image
        gt_class [n_i, 1] and gt_bbox [n_i, 4] (they make the denoising queries) -> dict:

        dec_logits [L', B, Qt, K], dec_boxes [L', B, Qt, 4], dec_masks [L', B, Qt, H/4, W/4]:
            per decoder layer (training: all L; eval: only layer eval_idx, L' = 1);
            Qt = Qdn + Q, the denoising queries first.
        enc_logits [B, Q, K], enc_boxes [B, Q, 4], enc_masks [B, Q, H/4, W/4]: the selected
            encoder proposals. init_logits/boxes/masks [B, Qt, ...]: the decoder's input
            queries (training with denoising, else None). dn_meta: dict or None.
        `split_predictions` (below) parts the denoising queries from the others again.
        """
        enc_feats, mask_feat = feats
        memory, spatial_shapes = self.project_memory(enc_feats)
        output_memory, logits, boxes_unact = self.score_memory(memory, spatial_shapes)
        _, content, ref_unact = self.select_queries(output_memory, logits, boxes_unact)
        out = {"enc_boxes": F.sigmoid(ref_unact)}
        out["enc_logits"], out["enc_masks"] = self.predict(content, mask_feat)
        if self.mask_enhanced:
            ref_unact = self.mask_enhanced_reference(out["enc_masks"])
        content = content.detach()  # the decoder starts from the proposals, not through them

        dn_content, dn_ref_unact, attn_mask, dn_meta = self.denoising_group(gt_class, gt_bbox)
        out.update(init_logits=None, init_boxes=None, init_masks=None, dn_meta=dn_meta)
        if dn_meta is not None:  # denoising queries go first
            content = paddle.concat([dn_content, content], 1)
            ref_unact = paddle.concat([dn_ref_unact, ref_unact], 1)
            out["init_boxes"] = F.sigmoid(ref_unact)
            out["init_logits"], out["init_masks"] = self.predict(content, mask_feat)
            attn_mask = paddle.where(attn_mask, paddle.zeros(attn_mask.shape),
                                     paddle.full(attn_mask.shape, float("-inf")))

        hidden, boxes = self.decoder(content, ref_unact.detach(), memory, spatial_shapes,
                                     self.bbox_head, self.query_pos_head, attn_mask)
        if not self.training:
            hidden = hidden[-1:]  # eval predicts only the eval_idx layer
        preds = [self.predict(h, mask_feat) for h in hidden]
        out["dec_logits"] = paddle.stack([p[0] for p in preds])
        out["dec_masks"] = paddle.stack([p[1] for p in preds])
        out["dec_boxes"] = paddle.stack(boxes[-len(hidden):])
        return out


def split_predictions(out: Dict[str, Any]) -> Dict[str, Any]:
    """MaskDINOHead's split of the transformer output into matching and denoising parts.

    logits/boxes/masks [P, B, Q, ...]: encoder proposals, then (with denoising) the decoder's
    input queries, then every decoder layer; dn_logits/dn_boxes/dn_masks [P_dn, B, Qdn, ...]:
    input queries + every layer for the denoising queries (None without denoising).
    """
    dn_meta = out["dn_meta"]
    result = {"dn_meta": dn_meta}
    for key in ("logits", "boxes", "masks"):
        per_layer = out["dec_" + key]  # [L, B, Qdn + Q, ...]
        if dn_meta is None:
            result["dn_" + key] = None
        else:
            per_layer = paddle.concat([out["init_" + key].unsqueeze(0), per_layer])
            result["dn_" + key], per_layer = paddle.split(per_layer, dn_meta["dn_num_split"],
                                                          axis=2)
        result[key] = paddle.concat([out["enc_" + key].unsqueeze(0), per_layer])
    return result
