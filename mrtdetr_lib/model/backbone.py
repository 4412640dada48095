"""PP-HGNetV2: the CNN backbone that turns an image into feature maps at strides 4, 8, 16 and 32.

HGNet ("high-performance GPU net", PaddleClas) stacks HG blocks: a chain of small convs whose
outputs are ALL concatenated, then squeezed (1x1) and excited (1x1) back, like DenseNet/VoVNet
aggregation. Mask RT-DETR (paper sec. 3) uses it as the backbone of every official size.
Mirrors `ppdet/modeling/backbones/hgnet_v2.py`; attribute names are the `.pdparams` keys.
"""

from typing import List, Sequence

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle import ParamAttr

from .layers import batch_norm

# stem (in, mid, out) and per stage: in, mid, out channels, blocks, downsample, light block,
# kernel size, layers per block. S..H are PaddleDetection's `arch_configs`; T is the course's
# tiny CPU backbone (out channels 32/64/128/256, one block of two layers per stage).
ARCH_CONFIGS = {
    "S": ((3, 24, 32), ((32, 32, 64, 1, False, False, 3, 3),
                        (64, 48, 256, 1, True, False, 3, 3),
                        (256, 96, 512, 2, True, True, 5, 3),
                        (512, 192, 1024, 1, True, True, 5, 3))),
    "M": ((3, 24, 32), ((32, 32, 96, 1, False, False, 3, 4),
                        (96, 64, 384, 1, True, False, 3, 4),
                        (384, 128, 768, 3, True, True, 5, 4),
                        (768, 256, 1536, 1, True, True, 5, 4))),
    "L": ((3, 32, 48), ((48, 48, 128, 1, False, False, 3, 6),
                        (128, 96, 512, 1, True, False, 3, 6),
                        (512, 192, 1024, 3, True, True, 5, 6),
                        (1024, 384, 2048, 1, True, True, 5, 6))),
    "X": ((3, 32, 64), ((64, 64, 128, 1, False, False, 3, 6),
                        (128, 128, 512, 2, True, False, 3, 6),
                        (512, 256, 1024, 5, True, True, 5, 6),
                        (1024, 512, 2048, 2, True, True, 5, 6))),
    "H": ((3, 48, 96), ((96, 96, 192, 2, False, False, 3, 6),
                        (192, 192, 512, 3, True, False, 3, 6),
                        (512, 384, 1024, 6, True, True, 5, 6),
                        (1024, 768, 2048, 3, True, True, 5, 6))),
    "T": ((3, 16, 16), ((16, 16, 32, 1, False, False, 3, 2),
                        (32, 32, 64, 1, True, False, 3, 2),
                        (64, 64, 128, 1, True, True, 5, 2),
                        (128, 96, 256, 1, True, True, 5, 2))),
}


class ConvBNAct(nn.Layer):
    """Conv (no bias) + BN + optional ReLU: [B, Cin, H, W] -> [B, Cout, H/stride, W/stride]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, groups: int = 1, use_act: bool = True, padding=None,
                 lr_mult: float = 1.0, frozen_norm: bool = False):
        super().__init__()
        # ppdet initialises every backbone conv with Kaiming normal (fan_in of the weight shape,
        # so depthwise convs get a larger std than paddle's default would give them).
        weight_attr = ParamAttr(learning_rate=lr_mult, initializer=nn.initializer.KaimingNormal())
        self.conv = nn.Conv2D(in_channels, out_channels, kernel_size, stride,
                              padding=(kernel_size - 1) // 2 if padding is None else padding,
                              groups=groups, weight_attr=weight_attr, bias_attr=False)
        self.bn = batch_norm(out_channels, lr_mult, frozen_norm)
        self.use_act = use_act

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.use_act else x


class LightConvBNAct(nn.Layer):
    """1x1 conv+BN (no act) then depthwise kxk conv+BN+ReLU: a cheap kxk conv for stages 3-4."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, **kw):
        super().__init__()
        self.conv1 = ConvBNAct(in_channels, out_channels, 1, use_act=False, **kw)
        self.conv2 = ConvBNAct(out_channels, out_channels, kernel_size, groups=out_channels, **kw)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.conv2(self.conv1(x))


class StemBlock(nn.Layer):
    """Stride-4 stem: [B, 3, H, W] -> [B, out, H/4, W/4]; the middle is pool | two 2x2 convs."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, **kw):
        super().__init__()
        # Paddle's padding="SAME" for a 2x2 stride-1 kernel pads 0 on top/left and 1 on the
        # bottom/right; explicit [top, bottom, left, right] keeps that exact and exportable.
        same_2x2 = [0, 1, 0, 1]
        self.stem1 = ConvBNAct(in_channels, mid_channels, 3, stride=2, **kw)
        self.stem2a = ConvBNAct(mid_channels, mid_channels // 2, 2, padding=same_2x2, **kw)
        self.stem2b = ConvBNAct(mid_channels // 2, mid_channels, 2, padding=same_2x2, **kw)
        self.stem3 = ConvBNAct(mid_channels * 2, mid_channels, 3, stride=2, **kw)
        self.stem4 = ConvBNAct(mid_channels, out_channels, 1, **kw)
        # ppdet's 2x2 max pool uses "SAME" too (right/bottom padding, ignored by the max)
        self.pool = nn.MaxPool2D(kernel_size=2, stride=1, padding=same_2x2, ceil_mode=True)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.stem1(x)
        pooled = self.pool(x)
        convolved = self.stem2b(self.stem2a(x))
        x = paddle.concat([pooled, convolved], axis=1)  # [B, 2*mid, H/2, W/2]
        return self.stem4(self.stem3(x))


class HG_Block(nn.Layer):
    """x -> N chained convs; concat [x, N outputs] -> 1x1 squeeze (out/2) -> 1x1 excite (out)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, kernel_size: int,
                 layer_num: int, identity: bool, light_block: bool, **kw):
        super().__init__()
        layer_type = LightConvBNAct if light_block else ConvBNAct
        self.layers = nn.LayerList(
            layer_type(in_channels if i == 0 else mid_channels, mid_channels, kernel_size, **kw)
            for i in range(layer_num))
        total_channels = in_channels + layer_num * mid_channels
        self.aggregation_squeeze_conv = ConvBNAct(total_channels, out_channels // 2, 1, **kw)
        self.aggregation_excitation_conv = ConvBNAct(out_channels // 2, out_channels, 1, **kw)
        self.identity = identity  # residual connection (every block of a stage but the first)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        outputs = [x]
        for layer in self.layers:
            outputs.append(layer(outputs[-1]))
        y = paddle.concat(outputs, axis=1)  # [B, in + N*mid, H, W]
        y = self.aggregation_excitation_conv(self.aggregation_squeeze_conv(y))
        return y + x if self.identity else y


class HG_Stage(nn.Layer):
    """Optional depthwise stride-2 downsample (conv+BN, no act), then `block_num` HG blocks."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, block_num: int,
                 downsample: bool, light_block: bool, kernel_size: int, layer_num: int, **kw):
        super().__init__()
        self.downsample = (ConvBNAct(in_channels, in_channels, 3, stride=2, groups=in_channels,
                                     use_act=False, **kw) if downsample else None)
        self.blocks = nn.Sequential(*[
            HG_Block(in_channels if i == 0 else out_channels, mid_channels, out_channels,
                     kernel_size, layer_num, identity=i > 0, light_block=light_block, **kw)
            for i in range(block_num)])

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        return self.blocks(x)


class PPHGNetV2(nn.Layer):
    """PP-HGNetV2: image [B, 3, H, W] -> feature maps at strides (4, 8, 16, 32)[return_idx].

    `lr_mult_list` scales the learning rate of (stem, stage1..4) through each parameter's
    ParamAttr, as PaddleDetection does. `freeze_at >= 0` freezes the stem (and stages
    0..freeze_at unless `freeze_stem_only`); `freeze_norm` makes every BN use its running
    statistics with an untrained scale/shift. (ppdet's `use_lab`, learnable affine blocks, is
    used by no Mask RT-DETR config, so it is not an option here.)
    """

    def __init__(self, arch: str, lr_mult_list: Sequence[float] = (1.0, 1.0, 1.0, 1.0, 1.0),
                 return_idx: Sequence[int] = (1, 2, 3), freeze_stem_only: bool = True,
                 freeze_at: int = 0, freeze_norm: bool = True):
        super().__init__()
        if arch not in ARCH_CONFIGS:
            raise ValueError(f"PPHGNetV2 arch {arch!r} unknown; choose one of "
                             f"{', '.join(ARCH_CONFIGS)}")
        if len(lr_mult_list) != 5:
            raise ValueError(f"PPHGNetV2 lr_mult_list needs 5 values (stem, stage1..4), "
                             f"got {list(lr_mult_list)}")
        stem_channels, stage_configs = ARCH_CONFIGS[arch]
        self.return_idx = list(return_idx)
        self.out_channels: List[int] = [stage_configs[i][2] for i in self.return_idx]
        self.out_strides: List[int] = [4 * 2 ** i for i in self.return_idx]

        self.stem = StemBlock(*stem_channels, lr_mult=lr_mult_list[0], frozen_norm=freeze_norm)
        self.stages = nn.LayerList(
            HG_Stage(*config, lr_mult=lr_mult, frozen_norm=freeze_norm)
            for config, lr_mult in zip(stage_configs, lr_mult_list[1:]))

        if freeze_at >= 0:
            frozen = [self.stem] + ([] if freeze_stem_only else list(self.stages[:freeze_at + 1]))
            for layer in frozen:
                for param in layer.parameters():
                    param.stop_gradient = True

    def forward(self, image: paddle.Tensor) -> List[paddle.Tensor]:
        """image [B, 3, H, W] (0..1) -> [B, out_channels[i], H/stride, W/stride] per return_idx."""
        x = self.stem(image)
        outs = []
        for idx, stage in enumerate(self.stages):
            x = stage(x)
            if idx in self.return_idx:
                outs.append(x)
        return outs
