"""Multi-scale deformable attention: each query looks at a few learnt points per level.

Deformable DETR (Zhu et al., 2021, sec. 4.1): instead of attending to all H*W memory tokens, a
query predicts `num_points` sampling offsets per head and level around its reference box and a
softmax weight for each; the output is the weighted sum of the bilinearly sampled values.
Mirrors `PPMSDeformableAttention` (`ppdet/modeling/transformers/rtdetr_transformer.py`) and the
pure-paddle `deformable_attention_core_func` (`transformers/utils.py`): plain `grid_sample`, no
custom op, so it exports to ONNX (GridSample, opset 16) and TensorRT.
"""

import math
from typing import List, Sequence, Tuple

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle import ParamAttr

from .layers import xavier_uniform_


def deformable_attention_core_func(value: paddle.Tensor, spatial_shapes: Sequence[Tuple[int, int]],
                                   sampling_locations: paddle.Tensor,
                                   attention_weights: paddle.Tensor) -> paddle.Tensor:
    """Sample and mix: value [B, S, heads, c], locations [B, Q, heads, L, P, 2] in 0..1 (x, y),
    weights [B, Q, heads, L, P] -> [B, Q, heads*c]. B is left to reshape (-1): it may be
    symbolic in an export, where B * heads would not be a size."""
    _, _, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    value_list = value.split([h * w for h, w in spatial_shapes], axis=1)
    grids = 2 * sampling_locations - 1  # grid_sample wants -1..1
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes):
        # [B, h*w, heads, c] -> [B*heads, c, h, w]: every head samples its own slice of channels
        # (as an NHWC -> NCHW transpose: OpenVINO has a fast kernel for that one)
        value_l = value_list[level].reshape([0, h, w, -1]).transpose([0, 3, 1, 2]).reshape(
            [-1, head_dim, h, w])
        # [B, Q, heads, P, 2] -> [B*heads, Q*P, 1, 2]: one column of points (the same numbers
        # as a [Q, P] grid, and paddle's CPU kernel is twice as fast on it)
        grid_l = grids[:, :, :, level].transpose([0, 2, 1, 3, 4]).reshape(
            [-1, num_queries * num_points, 1, 2])
        # align_corners=False + zeros padding: a point outside the map contributes nothing
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros",
                                     align_corners=False).reshape(
            [-1, head_dim, num_queries, num_points]))
    # [B, Q, heads, L, P] -> [B*heads, 1, Q, L*P]
    weights = attention_weights.transpose([0, 2, 1, 3, 4]).reshape(
        [-1, 1, num_queries, num_levels * num_points])
    # reshape with 0s, not flatten(-2): paddle2onnx writes flatten's shape as numbers, and a
    # symbolic B*heads came out as -4
    stacked = paddle.stack(sampled, axis=-2).reshape([0, 0, 0, -1])  # [B*heads, c, Q, L*P]
    out = (stacked * weights).sum(-1)  # [B*heads, c, Q]
    return out.reshape([-1, num_heads * head_dim, num_queries]).transpose([0, 2, 1])


class PPMSDeformableAttention(nn.Layer):
    """Deformable cross-attention of queries [B, Q, D] into a flattened multi-level memory."""

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, num_levels: int = 4,
                 num_points: int = 4, lr_mult: float = 0.1):
        super().__init__()
        assert embed_dim % num_heads == 0, "embed_dim must be divisible by num_heads"
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.num_levels, self.num_points = num_levels, num_points
        self.head_dim = embed_dim // num_heads
        total_points = num_heads * num_levels * num_points
        self.sampling_offsets = nn.Linear(embed_dim, total_points * 2,
                                          weight_attr=ParamAttr(learning_rate=lr_mult),
                                          bias_attr=ParamAttr(learning_rate=lr_mult))
        self.attention_weights = nn.Linear(embed_dim, total_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Offsets start as rings around the reference: head k points at angle 2*pi*k/heads,
        point p at distance p+1; uniform attention weights (Deformable DETR's init)."""
        self.sampling_offsets.weight.set_value(paddle.zeros_like(self.sampling_offsets.weight))
        angles = paddle.arange(self.num_heads, dtype="float32") * (2.0 * math.pi / self.num_heads)
        direction = paddle.stack([angles.cos(), angles.sin()], -1)  # [heads, 2]
        direction = direction / direction.abs().max(-1, keepdim=True)  # onto the unit square
        scale = paddle.arange(1, self.num_points + 1, dtype="float32").reshape([1, 1, -1, 1])
        grid = direction.reshape([self.num_heads, 1, 1, 2]).tile(
            [1, self.num_levels, self.num_points, 1]) * scale  # [heads, L, P, 2]
        self.sampling_offsets.bias.set_value(grid.flatten())
        for param in (self.attention_weights.weight, self.attention_weights.bias,
                      self.value_proj.bias, self.output_proj.bias):
            param.set_value(paddle.zeros_like(param))
        xavier_uniform_(self.value_proj.weight)
        xavier_uniform_(self.output_proj.weight)

    def forward(self, query: paddle.Tensor, reference_boxes: paddle.Tensor, value: paddle.Tensor,
                spatial_shapes: List[Tuple[int, int]]) -> paddle.Tensor:
        """query [B, Q, D], reference_boxes [B, Q, 4] (cx, cy, w, h in 0..1), value [B, S, D]
        (levels flattened h-major, S = sum h*w of `spatial_shapes`) -> [B, Q, D]."""
        num_queries = query.shape[1]  # B stays 0 (copied) or -1: symbolic in an export
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        value = self.value_proj(value).reshape([0, -1, heads, self.head_dim])
        offsets = self.sampling_offsets(query).reshape(
            [-1, num_queries, heads, levels, points, 2])
        weights = self.attention_weights(query).reshape(
            [-1, num_queries, heads, levels * points])
        weights = F.softmax(weights).reshape([-1, num_queries, heads, levels, points])
        # offsets are in units of half the box size / num_points (ppdet's 4-d reference path)
        boxes = reference_boxes[:, :, None, None, None, :]  # [B, Q, 1, 1, 1, 4]
        locations = boxes[..., :2] + offsets / points * boxes[..., 2:] * 0.5
        out = deformable_attention_core_func(value, spatial_shapes, locations, weights)
        return self.output_proj(out)
