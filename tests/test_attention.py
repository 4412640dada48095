"""Multi-scale deformable attention: bilinear sampling math, init, batching, export."""

import numpy as np
import paddle
import pytest

from mrtdetr_lib.model.attention import PPMSDeformableAttention, deformable_attention_core_func

SHAPES = [(6, 8), (3, 4)]


def _bilinear_zeros(image: np.ndarray, x: float, y: float) -> np.ndarray:
    """image [C, H, W] sampled at normalised (x, y) in 0..1, half-pixel centres, zero outside."""
    _, h, w = image.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = int(np.floor(px)), int(np.floor(py))
    out = np.zeros(image.shape[0])
    for dx, dy in [(0, 0), (1, 0), (0, 1), (1, 1)]:
        xi, yi = x0 + dx, y0 + dy
        weight = (1 - abs(px - xi)) * (1 - abs(py - yi))
        if 0 <= xi < w and 0 <= yi < h:
            out += weight * image[:, yi, xi]
    return out


def test_core_func_matches_a_loop_over_points():
    rng = np.random.default_rng(0)
    batch, queries, heads, head_dim, points = 2, 3, 2, 4, 2
    total = sum(h * w for h, w in SHAPES)
    value = rng.normal(size=(batch, total, heads, head_dim)).astype("float32")
    # some points outside the map (zeros padding) and on the border
    locations = rng.uniform(-0.2, 1.2, size=(batch, queries, heads, len(SHAPES), points, 2))
    weights = rng.uniform(size=(batch, queries, heads, len(SHAPES), points))
    out = deformable_attention_core_func(
        paddle.to_tensor(value), SHAPES, paddle.to_tensor(locations.astype("float32")),
        paddle.to_tensor(weights.astype("float32"))).numpy()
    assert out.shape == (batch, queries, heads * head_dim)

    starts = np.cumsum([0] + [h * w for h, w in SHAPES])
    expected = np.zeros((batch, queries, heads, head_dim))
    for b, q, m in np.ndindex(batch, queries, heads):
        for level, (h, w) in enumerate(SHAPES):
            image = value[b, starts[level]:starts[level + 1], m].T.reshape(head_dim, h, w)
            for p in range(points):
                x, y = locations[b, q, m, level, p]
                expected[b, q, m] += weights[b, q, m, level, p] * _bilinear_zeros(image, x, y)
    np.testing.assert_allclose(out, expected.reshape(out.shape), atol=1e-5)


def test_init_is_uniform_rings_around_the_reference():
    attn = PPMSDeformableAttention(embed_dim=16, num_heads=4, num_levels=2, num_points=3)
    bias = attn.sampling_offsets.bias.numpy().reshape(4, 2, 3, 2)  # [heads, levels, points, xy]
    np.testing.assert_allclose(bias[0, 0], [[1, 0], [2, 0], [3, 0]], atol=1e-6)  # head 0: +x
    np.testing.assert_allclose(bias[1, 1, 0], [0, 1], atol=1e-6)  # head 1: +y, same per level
    assert np.abs(attn.sampling_offsets.weight.numpy()).max() == 0
    assert np.abs(attn.attention_weights.weight.numpy()).max() == 0  # uniform softmax at start


def _random_attention(seed: int):
    paddle.seed(seed)
    attn = PPMSDeformableAttention(embed_dim=16, num_heads=4, num_levels=2, num_points=3)
    for p in attn.parameters():  # break the symmetric init so every path matters
        p.set_value(paddle.randn(p.shape) * 0.3)
    total = sum(h * w for h, w in SHAPES)
    query, value = paddle.randn([2, 5, 16]), paddle.randn([2, total, 16])
    boxes = paddle.concat([paddle.rand([2, 5, 2]), paddle.rand([2, 5, 2]) * 0.5], -1)
    return attn, query, boxes, value


def test_batch_equals_single():
    attn, query, boxes, value = _random_attention(1)
    out = attn(query, boxes, value, SHAPES)
    assert out.shape == [2, 5, 16]
    for i in range(2):
        single = attn(query[i:i + 1], boxes[i:i + 1], value[i:i + 1], SHAPES)
        np.testing.assert_allclose(out[i:i + 1].numpy(), single.numpy(), atol=1e-5)


def test_queries_are_independent():
    """Each query only reads the memory: dropping other queries changes nothing."""
    attn, query, boxes, value = _random_attention(2)
    out = attn(query, boxes, value, SHAPES)
    np.testing.assert_allclose(out[:, 2:3].numpy(),
                               attn(query[:, 2:3], boxes[:, 2:3], value, SHAPES).numpy(),
                               atol=1e-5)


@pytest.mark.filterwarnings("ignore")
def test_to_static_matches_eager():
    attn, query, boxes, value = _random_attention(3)
    eager = attn(query, boxes, value, SHAPES)

    class Wrapper(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, query, boxes, value):
            return self.attn(query, boxes, value, SHAPES)

    static = paddle.jit.to_static(Wrapper(), full_graph=True)(query, boxes, value)
    np.testing.assert_allclose(eager.numpy(), static.numpy(), atol=1e-5)
