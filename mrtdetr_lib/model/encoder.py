"""MaskHybridEncoder: the neck between the backbone and the decoder, plus the mask prototypes.

RT-DETR's hybrid encoder (paper sec. 4.2) runs self-attention (AIFI) only on the coarsest level
and mixes the levels with a CNN (CCFF: a top-down FPN and a bottom-up PAN of CSPRepLayers).
Mask RT-DETR adds MaskFeatFPN: it fuses the three outputs and the stride-4 backbone map into
`num_prototypes` mask prototypes at stride 4; each query's mask is later `embedding @ prototypes`.
Mirrors `ppdet/modeling/transformers/hybrid_encoder.py`; attribute names are the `.pdparams` keys.
"""

import math
from typing import List, Optional, Sequence, Tuple

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle import ParamAttr

from .layers import MultiHeadAttention, batch_norm, linear_init_


def _resize(x: paddle.Tensor, size, mode: str) -> paddle.Tensor:
    """Resize [B, C, h, w] to `size` (H, W) with half-pixel bilinear or nearest.

    Always `size=`, never `scale_factor=`: paddle saves scale factors as float64 attributes
    that paddle2onnx cannot export. For an exact x2 both give the same sampling grid.
    """
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


class BaseConv(nn.Layer):
    """Conv + BN + SiLU (x * sigmoid(x), as ppdet writes it): [B, Cin, H, W] -> [B, Cout, ...]."""

    def __init__(self, in_channels: int, out_channels: int, ksize: int, stride: int = 1):
        super().__init__()
        bound = 1 / math.sqrt(in_channels * ksize * ksize)  # ppdet's conv_init_
        init = nn.initializer.Uniform(-bound, bound)
        self.conv = nn.Conv2D(in_channels, out_channels, ksize, stride, padding=(ksize - 1) // 2,
                              weight_attr=ParamAttr(initializer=init), bias_attr=False)
        self.bn = batch_norm(out_channels)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.bn(self.conv(x))
        return x * F.sigmoid(x)


class ConvBNLayer(nn.Layer):
    """Conv + BN without activation: one branch of a RepVGG block."""

    def __init__(self, in_channels: int, out_channels: int, ksize: int):
        super().__init__()
        self.conv = nn.Conv2D(in_channels, out_channels, ksize, padding=(ksize - 1) // 2,
                              bias_attr=False)
        self.bn = batch_norm(out_channels)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.bn(self.conv(x))


class RepVggBlock(nn.Layer):
    """SiLU(3x3 conv+BN + 1x1 conv+BN): a 3x3 conv that trains like a ResNet block (RepVGG)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = ConvBNLayer(in_channels, out_channels, 3)
        self.conv2 = ConvBNLayer(in_channels, out_channels, 1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return F.silu(self.conv1(x) + self.conv2(x))


class CSPRepLayer(nn.Layer):
    """CSP block: conv3(RepVGG blocks(conv1(x)) + conv2(x)); [B, Cin] -> [B, Cout]."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int = 3,
                 expansion: float = 1.0):
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = BaseConv(in_channels, hidden, 1)
        self.conv2 = BaseConv(in_channels, hidden, 1)
        self.bottlenecks = nn.Sequential(*[RepVggBlock(hidden, hidden) for _ in range(num_blocks)])
        # the .pdparams have conv3 only when the hidden width differs (expansion != 1)
        self.conv3 = BaseConv(hidden, out_channels, 1) if hidden != out_channels else nn.Identity()

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))


class TransformerLayer(nn.Layer):
    """Post-norm transformer encoder layer: attention (q = k = x + pos, v = x), then an FFN."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 1024):
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, nhead)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        linear_init_(self.linear1)
        linear_init_(self.linear2)

    def forward(self, src: paddle.Tensor, pos_embed: paddle.Tensor) -> paddle.Tensor:
        """src [B, S, D], pos_embed [1, S, D] -> [B, S, D]."""
        query = src + pos_embed
        src = self.norm1(src + self.self_attn(query, query, src))
        hidden = F.gelu(self.linear1(src))  # the exact (erf) GELU, as ppdet's "gelu"
        return self.norm2(src + self.linear2(hidden))


class TransformerEncoder(nn.Layer):
    """`num_layers` TransformerLayers applied in turn, all with the same position embedding."""

    def __init__(self, num_layers: int, **layer_kw):
        super().__init__()
        self.layers = nn.LayerList(TransformerLayer(**layer_kw) for _ in range(num_layers))

    def forward(self, src: paddle.Tensor, pos_embed: paddle.Tensor) -> paddle.Tensor:
        for layer in self.layers:
            src = layer(src, pos_embed)
        return src


def build_2d_sincos_position_embedding(w, h, embed_dim: int = 256,
                                       temperature: float = 10000.0) -> paddle.Tensor:
    """Fixed 2-D sin-cos position embedding for a w x h map: [1, w*h, embed_dim].

    Kept exactly as PaddleDetection computes it: `meshgrid(arange(w), arange(h))` ("ij") makes
    token k (features flattened h-major, k = y*w + x) get gw = k // h, gh = k % h; for square
    maps the "w" half therefore encodes the row. The weights were trained with this.
    """
    if embed_dim % 4 != 0:
        raise ValueError(f"embed_dim {embed_dim} must be divisible by 4 for the 2-D sin-cos "
                         "position embedding")
    grid_w, grid_h = paddle.meshgrid(paddle.arange(w, dtype="float32"),
                                     paddle.arange(h, dtype="float32"))  # [w, h] each
    pos_dim = embed_dim // 4
    omega = 1.0 / temperature ** (paddle.arange(pos_dim, dtype="float32") / pos_dim)  # [D/4]
    out_w = grid_w.flatten()[:, None] @ omega[None]  # [w*h, D/4]
    out_h = grid_h.flatten()[:, None] @ omega[None]
    embed = paddle.concat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], axis=1)
    return embed[None]  # [1, w*h, D]


class Upsample2x(nn.Layer):
    """Bilinear (half-pixel) x2 upsampling: [B, C, H, W] -> [B, C, 2H, 2W]."""

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return _resize(x, [x.shape[2] * 2, x.shape[3] * 2], "bilinear")


class MaskFeatFPN(nn.Layer):
    """Fuse the neck outputs at strides 8, 16, 32 into one stride-8 map [B, out_channels, H/8, W/8].

    Each level gets log2(stride/8) (at least one) 3x3 BaseConvs, each followed by a bilinear x2
    upsample for the coarser levels; the three results are summed and passed to `output_conv`.
    """

    def __init__(self, in_channels: Sequence[int], fpn_strides: Sequence[int],
                 feat_channels: int = 256, out_channels: int = 256):
        super().__init__()
        if list(fpn_strides) != sorted(fpn_strides):
            raise ValueError(f"MaskFeatFPN fpn_strides must be ascending, got {fpn_strides}")
        self.scale_heads = nn.LayerList()
        for channels, stride in zip(in_channels, fpn_strides):
            head_length = max(1, int(math.log2(stride) - math.log2(fpn_strides[0])))
            head = []
            for k in range(head_length):
                # each BaseConv sits in its own Sequential: keys `scale_heads.i.j.0.conv.weight`
                head.append(nn.Sequential(BaseConv(channels if k == 0 else feat_channels,
                                                   feat_channels, 3)))
                if stride != fpn_strides[0]:
                    head.append(Upsample2x())
            self.scale_heads.append(nn.Sequential(*head))
        self.output_conv = BaseConv(feat_channels, out_channels, 3)

    def forward(self, feats: List[paddle.Tensor]) -> paddle.Tensor:
        output = self.scale_heads[0](feats[0])
        for head, feat in zip(self.scale_heads[1:], feats[1:]):
            # resize to the stride-8 size: an identity for sizes divisible by 32
            output = output + _resize(head(feat), output.shape[2:], "bilinear")
        return self.output_conv(output)


class MaskHybridEncoder(nn.Layer):
    """Backbone maps at strides 4..32 -> three hidden_dim maps (8, 16, 32) and mask prototypes.

    `in_channels`/`feat_strides` list all four backbone levels; the stride-4 map only feeds the
    mask branch. `use_encoder_idx` counts in those four levels (PaddleDetection's convention).
    With `eval_size` (H, W) the AIFI position embedding is computed once at init (a buffer not
    in the state_dict) and used in eval, so eval inputs must have that size; in training, or
    with `eval_size=None`, it is computed from each input's size (the same numbers).
    """

    def __init__(self, in_channels: Sequence[int], feat_strides: Sequence[int] = (4, 8, 16, 32),
                 hidden_dim: int = 256, use_encoder_idx: Sequence[int] = (3,),
                 num_encoder_layers: int = 1, nhead: int = 8, dim_feedforward: int = 1024,
                 num_prototypes: int = 32,
                 pe_temperature: int = 10000, expansion: float = 1.0, depth_mult: float = 1.0,
                 mask_feat_channels: Sequence[int] = (64, 64),
                 eval_size: Optional[Sequence[int]] = None):
        super().__init__()
        if len(in_channels) != 4 or list(feat_strides)[:1] != [4] or len(feat_strides) != 4:
            raise ValueError("MaskHybridEncoder needs 4 levels starting at stride 4, got "
                             f"in_channels={list(in_channels)}, feat_strides={list(feat_strides)}")
        x4_channels, in_channels = in_channels[0], list(in_channels[1:])
        self.feat_strides = list(feat_strides[1:])  # strides of the levels the FPN/PAN mixes
        self.use_encoder_idx = [i - 1 for i in use_encoder_idx]  # index into those 3 levels
        self.hidden_dim, self.pe_temperature = hidden_dim, pe_temperature
        self.eval_size = eval_size
        num_levels, num_blocks = len(in_channels), round(3 * depth_mult)

        self.input_proj = nn.LayerList(
            nn.Sequential(nn.Conv2D(c, hidden_dim, 1, bias_attr=False), batch_norm(hidden_dim))
            for c in in_channels)
        self.encoder = nn.LayerList(
            TransformerEncoder(num_encoder_layers, d_model=hidden_dim, nhead=nhead,
                               dim_feedforward=dim_feedforward)
            for _ in self.use_encoder_idx)
        # top-down FPN (coarse to fine) and bottom-up PAN (fine to coarse): num_levels - 1 each
        self.lateral_convs = nn.LayerList(BaseConv(hidden_dim, hidden_dim, 1)
                                          for _ in range(num_levels - 1))
        self.fpn_blocks = nn.LayerList(CSPRepLayer(2 * hidden_dim, hidden_dim, num_blocks,
                                                   expansion) for _ in range(num_levels - 1))
        self.downsample_convs = nn.LayerList(BaseConv(hidden_dim, hidden_dim, 3, stride=2)
                                             for _ in range(num_levels - 1))
        self.pan_blocks = nn.LayerList(CSPRepLayer(2 * hidden_dim, hidden_dim, num_blocks,
                                                   expansion) for _ in range(num_levels - 1))

        self.mask_feat_head = MaskFeatFPN([hidden_dim] * num_levels, self.feat_strides,
                                          mask_feat_channels[0], mask_feat_channels[1])
        self.enc_mask_lateral = BaseConv(x4_channels, mask_feat_channels[1], 3)
        self.enc_mask_output = nn.Sequential(
            BaseConv(mask_feat_channels[1], mask_feat_channels[1], 3),
            nn.Conv2D(mask_feat_channels[1], num_prototypes, 1))

        if eval_size is not None:
            for idx in self.use_encoder_idx:
                stride = self.feat_strides[idx]
                pos_embed = build_2d_sincos_position_embedding(
                    eval_size[1] // stride, eval_size[0] // stride, hidden_dim, pe_temperature)
                self.register_buffer(f"pos_embed{idx}", pos_embed, persistable=False)

    def _encode(self, feat: paddle.Tensor, encoder_idx: int, level: int) -> paddle.Tensor:
        """AIFI: [B, D, H, W] -> tokens [B, H*W, D] -> self-attention -> [B, D, H, W]."""
        h, w = feat.shape[2:]
        src = feat.flatten(2).transpose([0, 2, 1])  # [B, H*W, D], h-major tokens
        if self.training or self.eval_size is None:
            pos_embed = build_2d_sincos_position_embedding(w, h, self.hidden_dim,
                                                           self.pe_temperature)
        else:
            pos_embed = getattr(self, f"pos_embed{level}")
        memory = self.encoder[encoder_idx](src, pos_embed)
        return memory.transpose([0, 2, 1]).reshape([-1, self.hidden_dim, h, w])

    def forward(self, feats: List[paddle.Tensor]) -> Tuple[List[paddle.Tensor], paddle.Tensor]:
        """feats: 4 maps [B, in_channels[i], H/s, W/s], s = 4, 8, 16, 32 -> (enc_feats, mask_feat).

        enc_feats: 3 maps [B, hidden_dim, H/s, W/s], s = 8, 16, 32;
        mask_feat: [B, num_prototypes, H/4, W/4].
        """
        x4_feat, feats = feats[0], feats[1:]  # a new list: the caller's stays untouched
        proj_feats = [proj(feat) for proj, feat in zip(self.input_proj, feats)]
        for i, level in enumerate(self.use_encoder_idx):
            proj_feats[level] = self._encode(proj_feats[level], i, level)

        # top-down FPN: the lateral conv output REPLACES the coarser map (the PAN reuses it)
        inner_outs = [proj_feats[-1]]
        for k, level in enumerate(range(len(proj_feats) - 2, -1, -1)):
            coarse = self.lateral_convs[k](inner_outs[0])
            inner_outs[0] = coarse
            fine = proj_feats[level]
            upsampled = _resize(coarse, fine.shape[2:], "nearest")
            inner_outs.insert(0, self.fpn_blocks[k](paddle.concat([upsampled, fine], axis=1)))

        # bottom-up PAN
        outs = [inner_outs[0]]
        for k in range(len(proj_feats) - 1):
            downsampled = self.downsample_convs[k](outs[-1])
            outs.append(self.pan_blocks[k](paddle.concat([downsampled, inner_outs[k + 1]],
                                                         axis=1)))

        # mask prototypes: fused stride-8 map, up to stride 4, plus the backbone's stride-4 map
        mask_feat = _resize(self.mask_feat_head(outs), x4_feat.shape[2:], "bilinear")
        mask_feat = mask_feat + self.enc_mask_lateral(x4_feat)
        return outs, self.enc_mask_output(mask_feat)
