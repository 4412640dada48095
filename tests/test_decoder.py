"""MaskRTDETRTransformer: anchors, query selection, mask-enhanced init, decoder invariances."""

import numpy as np
import paddle
import pytest

from mrtdetr_lib.model.decoder import MaskRTDETRTransformer, generate_anchors

TINY = dict(num_classes=4, hidden_dim=32, num_queries=20, backbone_feat_channels=[32] * 3,
            num_prototypes=8, nhead=4, num_decoder_layers=3, dim_feedforward=64,
            num_denoising=12, label_noise_ratio=0.5, box_noise_scale=1.0)


def _transformer(seed: int = 0, **overrides) -> MaskRTDETRTransformer:
    paddle.seed(seed)
    model = MaskRTDETRTransformer(**{**TINY, **overrides})
    last = model.bbox_head.layers[-1]  # zero at init; give the box refinement something to do
    last.weight.set_value(paddle.randn(last.weight.shape) * 0.1)
    return model


def _feats(batch: int = 2, size=(128, 160), seed: int = 0):
    paddle.seed(seed)
    h, w = size
    enc = [paddle.randn([batch, 32, h // s, w // s]) for s in (8, 16, 32)]
    return enc, paddle.randn([batch, 8, h // 4, w // 4])


def _targets():
    return {"gt_class": [paddle.to_tensor([[1], [3]], "int32"), paddle.to_tensor([[2]], "int32")],
            "gt_bbox": [paddle.to_tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.3, 0.1, 0.1]]),
                        paddle.to_tensor([[0.6, 0.4, 0.3, 0.3]])]}


# ---------------------------------------------------------------- anchors
@pytest.mark.parametrize("size", [640, 512])
def test_anchors_equal_reference(ref_dir, size):
    fixtures = np.load(ref_dir / "unit_fixtures.npz")
    anchors, valid = generate_anchors([(size // s, size // s) for s in (8, 16, 32)])
    # Within one float32 ulp, not bit-equal: paddle's vectorised log rounds differently on
    # another CPU kind (on this project's AVX-512 Xeon, 124 of 21504 values at 512 px differ by
    # exactly one ulp from the fixture's machine; 640 px is bit-equal). Invalid anchors (+inf)
    # must still match exactly.
    ours, theirs = anchors.numpy()[0], fixtures[f"anchors_{size}"]
    finite = np.isfinite(theirs)
    np.testing.assert_array_equal(np.isfinite(ours), finite)
    np.testing.assert_array_max_ulp(ours[finite], theirs[finite], maxulp=1)
    np.testing.assert_array_equal(valid.numpy()[0], fixtures[f"anchors_valid_{size}"]
                                  .reshape(-1, 1))


def test_anchors_non_square_follow_the_map():
    anchors, valid = generate_anchors([(2, 4)])
    centers = 1 / (1 + np.exp(-anchors.numpy()[0, :, :2]))
    np.testing.assert_allclose(centers[:4, 0], [0.125, 0.375, 0.625, 0.875], rtol=1e-5)  # x / w
    np.testing.assert_allclose(centers[::4, 1], [0.25, 0.75], rtol=1e-5)  # y / h
    assert valid.numpy().all()


def test_eval_anchors_are_buffers_not_weights():
    fixed, free = _transformer(eval_size=(128, 128)), _transformer(eval_size=None)
    assert list(fixed.state_dict()) == list(free.state_dict())
    assert not any("anchor" in k or "valid" in k for k in fixed.state_dict())
    assert fixed.anchors.shape == [1, 16 * 16 + 8 * 8 + 4 * 4, 4]


# ---------------------------------------------------------------- mask-enhanced boxes
def test_mask_enhanced_reference_equals_reference(ref_dir):
    fixtures = np.load(ref_dir / "unit_fixtures.npz")
    shape = fixtures["m2b_masks_shape"]
    masks = np.unpackbits(fixtures["m2b_masks_packbits"])[:np.prod(shape)].reshape(shape)
    logits = paddle.to_tensor(np.where(masks, 1.0, -1.0).astype("float32")[None])
    ref_unact = _transformer().mask_enhanced_reference(logits).numpy()[0]
    np.testing.assert_array_equal(ref_unact, fixtures["m2b_inverse_sigmoid"])


# ---------------------------------------------------------------- whole transformer
def test_eval_outputs_and_fixed_equals_free_size():
    fixed, free = _transformer(eval_size=(128, 160)), _transformer(eval_size=None)
    free.set_state_dict(fixed.state_dict())
    fixed.eval()
    free.eval()
    feats = _feats()
    out = fixed(feats)
    assert out["dec_logits"].shape == [1, 2, 20, 4] and out["dec_boxes"].shape == [1, 2, 20, 4]
    assert out["dec_masks"].shape == [1, 2, 20, 32, 40]
    assert out["enc_masks"].shape == [2, 20, 32, 40] and out["dn_meta"] is None
    for key, value in free(feats).items():
        if value is not None:
            np.testing.assert_array_equal(value.numpy(), out[key].numpy(), err_msg=key)
    with pytest.raises(ValueError, match="eval_size"):
        fixed(_feats(size=(96, 96)))


def test_batch_equals_single():
    model = _transformer()
    model.eval()
    feats = _feats()
    out = model(feats)
    for i in range(2):
        single = model(([f[i:i + 1] for f in feats[0]], feats[1][i:i + 1]))
        for key in ("dec_logits", "dec_boxes", "dec_masks"):
            np.testing.assert_allclose(out[key][:, i].numpy(), single[key][:, 0].numpy(),
                                       atol=1e-4, err_msg=key)


def test_steps_compose_to_forward():
    """The public steps a notebook runs give exactly what forward gives."""
    model = _transformer()
    model.eval()
    enc, mask_feat = _feats()
    memory, shapes = model.project_memory(enc)
    assert memory.shape == [2, 16 * 20 + 8 * 10 + 4 * 5, 32] and shapes == [(16, 20), (8, 10),
                                                                              (4, 5)]
    output_memory, logits, boxes_unact = model.score_memory(memory, shapes)
    index, content, _ = model.select_queries(output_memory, logits, boxes_unact)
    np.testing.assert_array_equal(index.numpy(),
                                  paddle.topk(logits.max(-1), 20, axis=1)[1].numpy())
    _, enc_masks = model.predict(content, mask_feat)
    ref_unact = model.mask_enhanced_reference(enc_masks)
    hidden, boxes = model.decoder(content, ref_unact, memory, shapes, model.bbox_head,
                                  model.query_pos_head)
    assert len(hidden) == len(boxes) == 3
    logits, masks = model.predict(hidden[-1], mask_feat)
    out = model((enc, mask_feat))
    np.testing.assert_array_equal(out["dec_logits"][0].numpy(), logits.numpy())
    np.testing.assert_array_equal(out["dec_boxes"][0].numpy(), boxes[-1].numpy())
    np.testing.assert_array_equal(out["dec_masks"][0].numpy(), masks.numpy())


def test_eval_idx_stops_early():
    model = _transformer(eval_idx=1)
    model.eval()
    enc, mask_feat = _feats()
    memory, shapes = model.project_memory(enc)
    hidden, _ = model.decoder(paddle.randn([2, 20, 32]), paddle.randn([2, 20, 4]), memory,
                              shapes, model.bbox_head, model.query_pos_head)
    assert len(hidden) == 2
    model.train()
    hidden, _ = model.decoder(paddle.randn([2, 20, 32]), paddle.randn([2, 20, 4]), memory,
                              shapes, model.bbox_head, model.query_pos_head)
    assert len(hidden) == 3


def test_denoising_queries_do_not_leak_into_matching_queries():
    """With the attention mask, the matching queries' outputs ignore the denoising queries."""
    model = _transformer()
    model.eval()
    enc, _ = _feats()
    memory, shapes = model.project_memory(enc)
    content, ref_unact = paddle.randn([2, 20, 32]), paddle.randn([2, 20, 4])
    model.train()  # the denoising group is built in training only
    dn_content, dn_ref, attn_mask, meta = model.denoising_group(**_targets())
    model.eval()
    additive = paddle.where(attn_mask, paddle.zeros(attn_mask.shape),
                            paddle.full(attn_mask.shape, float("-inf")))
    hidden, boxes = model.decoder(paddle.concat([dn_content, content], 1),
                                  paddle.concat([dn_ref, ref_unact], 1), memory, shapes,
                                  model.bbox_head, model.query_pos_head, additive)
    alone_hidden, alone_boxes = model.decoder(content, ref_unact, memory, shapes, model.bbox_head,
                                              model.query_pos_head)
    num_dn = meta["dn_num_split"][0]
    np.testing.assert_allclose(hidden[-1][:, num_dn:].numpy(), alone_hidden[-1].numpy(),
                               atol=1e-4)
    np.testing.assert_allclose(boxes[-1][:, num_dn:].numpy(), alone_boxes[-1].numpy(), atol=1e-5)


def test_training_outputs_and_gradients():
    model = _transformer()
    model.train()
    out = model(_feats(), **_targets())
    num_dn = out["dn_meta"]["dn_num_split"][0]  # 12 // 2 = 6 groups of 2
    assert num_dn == 12 and out["dec_logits"].shape == [3, 2, 32, 4]
    assert out["dec_masks"].shape == [3, 2, 32, 32, 40]
    assert out["init_boxes"].shape == [2, 32, 4] and out["enc_boxes"].shape == [2, 20, 4]
    loss = sum(out[k].mean() for k in out if k != "dn_meta")
    loss.backward()
    missing = [n for n, p in model.named_parameters() if not p.stop_gradient and p.grad is None]
    assert missing == []


def test_look_forward_twice_values_equal_eval():
    """Training's box of layer i (gradient through layer i-1's box) equals eval's value."""
    model = _transformer()
    enc, _ = _feats()
    memory, shapes = model.project_memory(enc)
    args = (paddle.randn([2, 20, 32]), paddle.randn([2, 20, 4]), memory.detach(), shapes,
            model.bbox_head, model.query_pos_head)
    model.train()
    _, train_boxes = model.decoder(*args)
    model.eval()
    _, eval_boxes = model.decoder(*args)
    for a, b in zip(train_boxes, eval_boxes):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


def test_num_queries_is_not_a_weight():
    a, b = _transformer(num_queries=20), _transformer(num_queries=7)
    assert [(k, v.shape) for k, v in a.state_dict().items()] == \
           [(k, v.shape) for k, v in b.state_dict().items()]
    b.set_state_dict(a.state_dict())
    b.eval()
    assert b(_feats())["dec_logits"].shape == [1, 2, 7, 4]
