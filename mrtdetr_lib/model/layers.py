"""Small building blocks shared by the model's stages: norms without weight decay, MLP,
multi-head attention, inits.

Mirrors `ppdet/modeling/heads/detr_head.py` (MLP), `ppdet/modeling/layers.py`
(MultiHeadAttention) and `ppdet/modeling/initializer.py`. Attribute names are the `.pdparams`
keys (`layers.N`, `in_proj_weight`, `in_proj_bias`, `out_proj`). Paddle's Linear weight is
[in, out], so `x @ W` needs no transpose.
"""

import math

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle import ParamAttr
from paddle.regularizer import L2Decay


def norm_attr(lr_mult: float = 1.0, frozen: bool = False) -> ParamAttr:
    """A norm's scale/shift attribute as PaddleDetection sets it: never weight-decayed
    (L2Decay(0.0) overrides the optimiser's decay); `frozen`: not trained at all."""
    if frozen:
        return ParamAttr(learning_rate=0.0, regularizer=L2Decay(0.0), trainable=False)
    return ParamAttr(learning_rate=lr_mult, regularizer=L2Decay(0.0))


def batch_norm(channels: int, lr_mult: float = 1.0, frozen: bool = False) -> nn.BatchNorm2D:
    """BatchNorm2D without weight decay; frozen (ppdet's _freeze_norm): fixed scale/shift and
    running statistics even in train mode."""
    attr = norm_attr(lr_mult, frozen)
    return nn.BatchNorm2D(channels, weight_attr=attr, bias_attr=attr,
                          use_global_stats=True if frozen else None)


def layer_norm(dim: int) -> nn.LayerNorm:
    """LayerNorm without weight decay (the decoder's, as in PaddleDetection)."""
    return nn.LayerNorm(dim, weight_attr=norm_attr(), bias_attr=norm_attr())


def linear_init_(layer: nn.Linear) -> None:
    """Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias (PaddleDetection's default)."""
    bound = 1 / math.sqrt(layer.weight.shape[0])
    layer.weight.set_value(paddle.uniform(layer.weight.shape, min=-bound, max=bound))
    if layer.bias is not None:
        layer.bias.set_value(paddle.uniform(layer.bias.shape, min=-bound, max=bound))


def xavier_uniform_(param: paddle.Tensor) -> None:
    """Glorot uniform for a Linear [in, out] or conv [out, in, kh, kw] weight."""
    if param.ndim == 2:
        fan_in, fan_out = param.shape
    else:
        receptive = math.prod(param.shape[2:])
        fan_in, fan_out = param.shape[1] * receptive, param.shape[0] * receptive
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    param.set_value(paddle.uniform(param.shape, min=-bound, max=bound))


def bias_init_with_prob(prior_prob: float = 0.01) -> float:
    """The bias whose sigmoid is `prior_prob`: class logits start at 'probably background'."""
    return float(-math.log((1 - prior_prob) / prior_prob))


class MLP(nn.Layer):
    """`num_layers` Linear layers with ReLU between them (DETR's box head)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.LayerList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        for layer in self.layers:
            linear_init_(layer)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class MultiHeadAttention(nn.Layer):
    """Scaled dot-product attention over `num_heads` heads with one packed q/k/v projection.

    `in_proj_weight` is [D, 3D]: columns 0:D project the query, D:2D the key, 2D:3D the value.
    """

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        assert embed_dim % num_heads == 0, "embed_dim must be divisible by num_heads"
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.in_proj_weight = self.create_parameter([embed_dim, 3 * embed_dim])
        self.in_proj_bias = self.create_parameter([3 * embed_dim], is_bias=True)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        xavier_uniform_(self.in_proj_weight)
        xavier_uniform_(self.out_proj.weight)
        self.out_proj.bias.set_value(paddle.zeros_like(self.out_proj.bias))

    def _project(self, x: paddle.Tensor, index: int) -> paddle.Tensor:
        """[B, S, D] -> [B, heads, S, D/heads] with the index-th slice of the packed projection."""
        d = self.embed_dim
        x = F.linear(x, self.in_proj_weight[:, index * d:(index + 1) * d],
                     self.in_proj_bias[index * d:(index + 1) * d])
        return x.reshape([0, 0, self.num_heads, self.head_dim]).transpose([0, 2, 1, 3])

    def forward(self, query: paddle.Tensor, key: paddle.Tensor, value: paddle.Tensor,
                attn_mask: paddle.Tensor = None) -> paddle.Tensor:
        """query [B, Sq, D], key/value [B, Sk, D], attn_mask additive [Sq, Sk] -> [B, Sq, D]."""
        q, k, v = self._project(query, 0), self._project(key, 1), self._project(value, 2)
        scores = paddle.matmul(q, k, transpose_y=True) * (self.head_dim ** -0.5)
        if attn_mask is not None:
            scores = scores + attn_mask  # 0 where allowed, -inf where masked
        weights = F.softmax(scores, axis=-1)
        out = paddle.matmul(weights, v).transpose([0, 2, 1, 3])  # [B, Sq, heads, D/heads]
        return self.out_proj(out.reshape([0, 0, self.embed_dim]))
