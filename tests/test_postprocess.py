"""DETRPostProcess: top-k over (query, class), box scaling, mask resizing, batches, export."""

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from mrtdetr_lib.model.postprocess import DETRPostProcess


def _raw(batch: int = 2, queries: int = 6, classes: int = 3, seed: int = 0):
    paddle.seed(seed)
    return (paddle.rand([batch, queries, 4]) * 0.5 + 0.25, paddle.randn([batch, queries, classes]),
            paddle.randn([batch, queries, 8, 8]) * 3)


def test_topk_over_query_class_pairs_by_hand():
    boxes = paddle.to_tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]]])
    logits = paddle.to_tensor([[[0.0, 3.0], [2.0, 1.0]]])  # best pairs: (0, 1), (1, 0), (1, 1)
    post = DETRPostProcess(num_classes=2, num_top_queries=3)
    out = post(boxes, logits, paddle.zeros([1, 2, 4, 4]), paddle.to_tensor([[100.0, 100.0]]),
               paddle.to_tensor([[0.5, 0.25]]))  # original image: 200 high, 400 wide
    sig = 1 / (1 + np.exp(-np.array([3.0, 2.0, 1.0])))
    expected = [[1, sig[0], 160, 60, 240, 140],  # query 0: cx 0.5*400, w 0.2*400, ...
                [0, sig[1], 0, 100, 200, 200],  # query 1 twice, with two labels
                [1, sig[2], 0, 100, 200, 200]]
    np.testing.assert_allclose(out["bbox"].numpy(), expected, rtol=1e-6, atol=1e-4)
    assert out["bbox_num"].numpy().tolist() == [3] and out["bbox_num"].dtype == paddle.int32
    assert out["mask"].shape == [3, 200, 400] and out["mask"].dtype == paddle.int32


def test_boxes_are_not_clipped():
    post = DETRPostProcess(num_classes=1, num_top_queries=1)
    out = post(paddle.to_tensor([[[0.05, 0.5, 0.3, 0.3]]]), paddle.ones([1, 1, 1]),
               paddle.zeros([1, 1, 4, 4]), paddle.to_tensor([[10.0, 10.0]]), paddle.ones([1, 2]))
    assert out["bbox"].numpy()[0, 2] < 0


def test_masks_are_sigmoid_of_the_resized_logits_above_threshold():
    boxes, logits, masks = _raw(batch=1)
    for threshold in (0.5, 0.3):
        post = DETRPostProcess(num_classes=3, num_top_queries=4, mask_threshold=threshold)
        out = post(boxes, logits, masks, paddle.to_tensor([[32.0, 32.0]]),
                   paddle.to_tensor([[32 / 45, 32 / 27]]))  # original 45 x 27
        query = paddle.topk(F.sigmoid(logits).flatten(1), 4)[1][0] // 3
        resized = F.interpolate(masks[:, query], size=[45, 27], mode="bilinear",
                                align_corners=False)[0]
        np.testing.assert_array_equal(out["mask"].numpy(),
                                      (F.sigmoid(resized) > threshold).numpy().astype("int32"))


def test_batch_of_different_sizes_equals_single_images():
    """Each image's masks in the top-left of a [max h, max w] canvas, zeros around them."""
    boxes, logits, masks = _raw()
    post = DETRPostProcess(num_classes=3, num_top_queries=4)
    im_shape = paddle.full([2, 2], 32.0)
    scale_factor = paddle.to_tensor([[32 / 50, 32 / 70], [32 / 90, 32 / 30]])
    out = post(boxes, logits, masks, im_shape, scale_factor)
    assert out["mask"].shape == [8, 90, 70] and out["bbox_num"].numpy().tolist() == [4, 4]
    for i, (h, w) in enumerate([(50, 70), (90, 30)]):
        single = post(boxes[i:i + 1], logits[i:i + 1], masks[i:i + 1], im_shape[i:i + 1],
                      scale_factor[i:i + 1])
        rows = slice(4 * i, 4 * i + 4)
        np.testing.assert_array_equal(out["bbox"][rows].numpy(), single["bbox"].numpy())
        np.testing.assert_array_equal(out["mask"][rows, :h, :w].numpy(), single["mask"].numpy())
        assert out["mask"][rows].sum() == single["mask"].sum()  # nothing outside the image


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("batch_dim", [2, None])
def test_to_static_matches_eager(batch_dim):
    post = DETRPostProcess(num_classes=3, num_top_queries=4)
    boxes, logits, masks = _raw()
    im_shape = paddle.full([2, 2], 32.0)
    scale_factor = paddle.to_tensor([[32 / 50, 32 / 70], [32 / 90, 32 / 30]])
    eager = post(boxes, logits, masks, im_shape, scale_factor)
    spec = [paddle.static.InputSpec([batch_dim, 6, 4]), paddle.static.InputSpec([batch_dim, 6, 3]),
            paddle.static.InputSpec([batch_dim, 6, 8, 8]), paddle.static.InputSpec([batch_dim, 2]),
            paddle.static.InputSpec([batch_dim, 2])]
    static = paddle.jit.to_static(post, input_spec=spec, full_graph=True)(
        boxes, logits, masks, im_shape, scale_factor)
    for key in eager:
        np.testing.assert_array_equal(eager[key].numpy(), static[key].numpy(), err_msg=key)
