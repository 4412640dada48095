"""MaskRTDETR and build_model: manifests, training outputs, eval invariances, parity with ppdet."""

import json

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from conftest import reference_dir

import mrtdetr_lib
from mrtdetr_lib.model import build_model

ARCHS = ["S", "M", "L", "X", "H"]


def _tiny(seed: int = 0, **overrides):
    paddle.seed(seed)
    return build_model("tiny", **overrides)


def _inputs(batch: int = 1, size=(256, 256), origin=None, seed: int = 0):
    """Model inputs for `batch` images resized to `size` from `origin` (h, w) per image."""
    paddle.seed(seed)
    origin = origin or [size] * batch
    scale = [[size[0] / h, size[1] / w] for h, w in origin]
    return {"image": paddle.rand([batch, 3, *size]),
            "im_shape": paddle.to_tensor([list(map(float, size))] * batch),
            "scale_factor": paddle.to_tensor(scale, dtype="float32")}


def _targets(inputs, counts=(2, 1)):
    rng = np.random.default_rng(0)
    h, w = inputs["image"].shape[2:]
    inputs["gt_class"] = [paddle.to_tensor(rng.integers(0, 4, (n, 1)).astype("int32"))
                          for n in counts]
    inputs["gt_bbox"] = [paddle.to_tensor(rng.uniform(0.2, 0.5, (n, 4)).astype("float32"))
                         for n in counts]
    inputs["gt_segm"] = [paddle.zeros([n, h, w], "uint8") for n in counts]
    return inputs


# ---------------------------------------------------------------- weights layout
@pytest.mark.parametrize("arch", ARCHS)
def test_state_dict_matches_manifest(ref_dir, arch):
    """Names, shapes, order (backbone, transformer, neck) and stop_gradient as ppdet's."""
    manifest = json.loads((ref_dir / f"manifest_{arch}.json").read_text())
    expected = [(p["name"], p["shape"], p["stop_gradient"]) for p in manifest["params"]]
    actual = [(name, list(t.shape), t.stop_gradient)
              for name, t in build_model(arch.lower()).state_dict().items()]
    assert actual == expected


def test_build_model_config_and_errors():
    cfg = mrtdetr_lib.model_config("tiny", num_queries=30)
    model = build_model(cfg, num_top_queries=10)
    assert model.transformer.num_queries == 30 and model.post_process.num_top_queries == 10
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("xl")
    with pytest.raises(ValueError, match="num_queries"):
        build_model("tiny", num_queries="many")


# ---------------------------------------------------------------- eval (tiny preset)
def test_eval_outputs():
    model = _tiny()
    model.eval()
    out = model(_inputs(origin=[(300, 200)]))
    assert out["bbox"].shape == [50, 6] and out["bbox_num"].numpy().tolist() == [50]
    assert out["mask"].shape == [50, 300, 200] and out["mask"].dtype == paddle.int32
    assert set(np.unique(out["mask"].numpy())) <= {0, 1}
    labels, scores = out["bbox"][:, 0].numpy(), out["bbox"][:, 1].numpy()
    assert ((labels >= 0) & (labels < 4)).all() and (np.diff(scores) <= 0).all()


def test_batch_of_two_equals_two_single_runs():
    model = _tiny()
    model.eval()
    inputs = _inputs(batch=2, origin=[(256, 256), (200, 300)])
    out = model(inputs)
    assert out["mask"].shape == [100, 256, 300]
    for i, (h, w) in enumerate([(256, 256), (200, 300)]):
        single = model({k: v[i:i + 1] for k, v in inputs.items()})
        rows = slice(50 * i, 50 * (i + 1))
        np.testing.assert_allclose(out["bbox"][rows].numpy(), single["bbox"].numpy(),
                                   atol=1e-4, rtol=1e-4)
        flipped = (out["mask"][rows, :h, :w].numpy() != single["mask"].numpy()).sum()
        assert flipped <= 20, flipped  # float noise of batched convs at exactly-0 logits
        assert out["mask"][rows].sum() == out["mask"][rows, :h, :w].sum()


def test_free_eval_size_equals_fixed_and_other_sizes_run():
    fixed, free = _tiny(), _tiny(seed=1, eval_size=None)
    free.set_state_dict(fixed.state_dict())
    fixed.eval()
    free.eval()
    inputs = _inputs()
    for key, value in fixed(inputs).items():
        np.testing.assert_array_equal(value.numpy(), free(inputs)[key].numpy(), err_msg=key)
    out = free(_inputs(size=(192, 288)))
    assert out["mask"].shape == [50, 192, 288] and np.isfinite(out["bbox"].numpy()).all()
    with pytest.raises(ValueError, match="eval_size"):
        fixed(_inputs(size=(192, 288)))


def test_fewer_queries_use_the_same_weights():
    model = _tiny(num_queries=100)
    small = _tiny(seed=1, num_queries=30, num_top_queries=20)
    small.set_state_dict(model.state_dict())
    small.eval()
    assert small(_inputs())["bbox"].shape == [20, 6]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("eval_size", [(256, 256), None])
def test_to_static_matches_eager(eval_size):
    """Export path: a fixed 256 input with eval_size, or free batch and size without."""
    model = _tiny(eval_size=eval_size)
    model.eval()
    size = eval_size or (None, None)
    batch = 1 if eval_size else None
    spec = [{"image": paddle.static.InputSpec([batch, 3, *size], "float32", "image"),
             "im_shape": paddle.static.InputSpec([batch, 2], "float32", "im_shape"),
             "scale_factor": paddle.static.InputSpec([batch, 2], "float32", "scale_factor")}]
    static = paddle.jit.to_static(model, input_spec=spec, full_graph=True)
    runs = [_inputs(origin=[(240, 320)])]
    if eval_size is None:
        runs.append(_inputs(batch=2, size=(192, 224), origin=[(192, 224), (300, 200)]))
    for inputs in runs:
        eager, exported = model(inputs), static(inputs)
        np.testing.assert_allclose(eager["bbox"].numpy(), exported["bbox"].numpy(), atol=1e-4)
        assert (eager["mask"].numpy() != exported["mask"].numpy()).sum() <= 20


# ---------------------------------------------------------------- training (tiny preset)
def test_training_outputs_with_denoising():
    model = _tiny()
    model.train()
    out = model(_targets(_inputs(batch=2)))  # 2 gts max -> 50 // 2 = 25 groups, 50 dn queries
    layers = 3
    assert out["logits"].shape == [2 + layers, 2, 100, 4]  # enc, init, layers
    assert out["boxes"].shape == [2 + layers, 2, 100, 4]
    assert out["masks"].shape == [2 + layers, 2, 100, 64, 64]
    assert out["dn_logits"].shape == [1 + layers, 2, 50, 4]
    assert out["dn_masks"].shape == [1 + layers, 2, 50, 64, 64]
    assert out["dn_meta"]["dn_num_split"] == [50, 100] and out["dn_meta"]["dn_num_group"] == 25
    boxes = out["boxes"].numpy()
    assert ((boxes >= 0) & (boxes <= 1)).all()

    loss = sum(out[k].mean() for k in ("logits", "boxes", "masks", "dn_logits", "dn_boxes",
                                       "dn_masks"))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if not p.stop_gradient and p.grad is None]
    assert missing == []


def test_training_outputs_without_denoising():
    model = _tiny(num_denoising=0)
    model.train()
    out = model(_targets(_inputs(batch=2)))
    assert out["logits"].shape == [1 + 3, 2, 100, 4]  # enc, layers
    assert out["dn_logits"] is None and out["dn_masks"] is None and out["dn_meta"] is None
    no_objects = _tiny()
    no_objects.train()
    assert no_objects(_targets(_inputs(batch=2), counts=(0, 0)))["dn_boxes"] is None


# ---------------------------------------------------------------- parity with PaddleDetection
def _forward_fixtures():
    return sorted(p.name for p in reference_dir().glob("fwd_*.npz"))


def _reference_inputs(data):
    """The README's exact input recipe: u8 * float32(1/255), HWC -> [1, 3, H, W]."""
    image = data["input_rgb_u8"].astype(np.float32) * np.float32(1 / 255)
    return {"image": paddle.to_tensor(image.transpose(2, 0, 1)[None]),
            "im_shape": paddle.to_tensor(data["im_shape"]),
            "scale_factor": paddle.to_tensor(data["scale_factor"])}


def _run_steps(model, inputs):
    """The eval forward step by step, keeping every intermediate (numpy, batch 1)."""
    t = model.transformer
    enc_feats, mask_feat = model.neck(model.backbone(inputs["image"]))
    memory, shapes = t.project_memory(enc_feats)
    anchors, valid = t.anchors_for(shapes)
    output_memory, logits, boxes_unact = t.score_memory(memory, shapes)
    index, content, ref_unact = t.select_queries(output_memory, logits, boxes_unact)
    enc_logits, enc_masks = t.predict(content, mask_feat)
    init_ref_unact = t.mask_enhanced_reference(enc_masks)
    hidden, boxes = t.decoder(content, init_ref_unact, memory, shapes, t.bbox_head,
                              t.query_pos_head)
    pred_logits, pred_masks = t.predict(hidden[-1], mask_feat)
    post = model.post_process(boxes[-1], pred_logits, pred_masks, inputs["im_shape"],
                              inputs["scale_factor"])
    ours = dict(
        mask_feat=mask_feat, memory=memory, anchors=anchors, valid_mask=valid,
        output_memory=output_memory, enc_logits=logits, enc_bbox_head_out=boxes_unact - anchors,
        index=index, content=content, enc_out_logits=enc_logits,
        enc_out_bboxes=F.sigmoid(ref_unact),
        enc_out_mask_embed=t.mask_query_head(t.dec_norm(content)), enc_out_masks=enc_masks,
        init_ref_unact=init_ref_unact, hidden=paddle.stack(hidden, 1),  # [B, L, Q, D]
        bbox_head_out=paddle.stack([t.bbox_head(h) for h in hidden], 1), pred_logits=pred_logits,
        pred_boxes=boxes[-1], pred_mask_embed=t.mask_query_head(t.dec_norm(hidden[-1])),
        pred_masks=pred_masks, **post)
    return {k: v.numpy()[0] if k not in ("bbox", "bbox_num", "mask") else v.numpy()
            for k, v in ours.items()}


@pytest.fixture(scope="module", params=_forward_fixtures())
def parity_run(request, ref_dir, refweights):
    """(reference npz, our step-by-step results, weights, inputs, arch, eval_size) per fixture."""
    data = np.load(ref_dir / request.param)
    info = json.loads((ref_dir / request.param.replace(".npz", ".info.json")).read_text())
    manifest = json.loads((ref_dir / f"manifest_{info['arch']}.json").read_text())
    weights = refweights.reference_weights(manifest)  # Linear weights are [in, out] already
    model = build_model(info["arch"].lower(), eval_size=tuple(info["eval_size"]))
    model.set_state_dict(weights)
    model.eval()
    inputs = _reference_inputs(data)
    with paddle.no_grad():
        ours = _run_steps(model, inputs)
    return dict(data=data, ours=ours, weights=weights, inputs=inputs, info=info)


def _close(name, actual, expected, atol, rtol=0.0):
    np.testing.assert_allclose(actual, expected, atol=atol, rtol=rtol, err_msg=name)
    diff = float(np.abs(actual.astype(np.float64) - expected).max())
    print(f"{name}: max |diff| {diff:.3g}")
    return diff


def _by_anchor(ours, data):
    """Row permutation putting our queries in the reference's order (matched by anchor)."""
    position = {anchor: i for i, anchor in enumerate(ours["index"].tolist())}
    return np.array([position[a] for a in data["enc_topk_index"].tolist()])


def test_encoder_side_parity(parity_run, ref_dir):
    data, ours = parity_run["data"], parity_run["ours"]
    _close("mask_feat", ours["mask_feat"], data["mask_feat"][0], 1e-3)
    _close("memory_sub8", ours["memory"][::8], data["memory_sub8"], 1e-3, 1e-3)
    np.testing.assert_array_equal(ours["anchors"], data["anchors"])
    np.testing.assert_array_equal(ours["valid_mask"][:, 0], data["valid_mask"])
    size = parity_run["info"]["eval_size"][0]
    fixtures = np.load(ref_dir / "unit_fixtures.npz")
    if f"anchors_{size}" in fixtures:
        np.testing.assert_array_equal(ours["anchors"], fixtures[f"anchors_{size}"])
    _close("output_memory_sub8", ours["output_memory"][::8], data["output_memory_sub8"], 1e-3,
           1e-3)
    _close("enc_logits_max", ours["enc_logits"].max(-1), data["enc_logits_max"], 1e-3)
    _close("enc_logits_sub8", ours["enc_logits"][::8], data["enc_logits_sub8"], 1e-3)
    valid = data["valid_mask"]
    _close("enc_bbox_head_out", ours["enc_bbox_head_out"][valid],
           data["enc_bbox_head_out"][valid], 1e-3, 1e-3)


def test_query_selection_parity(parity_run):
    data, ours = parity_run["data"], parity_run["ours"]
    # the top-k SET: adjacent scores inside it may be closer than float noise
    assert set(ours["index"].tolist()) == set(data["enc_topk_index"].tolist())
    order = _by_anchor(ours, data)
    _close("dec_init_target", ours["content"][order], data["dec_init_target"], 1e-3, 1e-3)
    _close("enc_out_logits", ours["enc_out_logits"][order], data["enc_out_logits"], 1e-3)
    _close("enc_out_bboxes", ours["enc_out_bboxes"][order], data["enc_out_bboxes"], 1e-4)
    _close("enc_out_mask_embed", ours["enc_out_mask_embed"][order], data["enc_out_mask_embed"],
           1e-3, 1e-3)
    _close("enc_out_masks_q0to3", ours["enc_out_masks"][order[:4]], data["enc_out_masks_q0to3"],
           1e-3)
    _close("dec_init_ref_unact", ours["init_ref_unact"][order], data["dec_init_ref_unact"], 1e-3,
           1e-3)


def test_decoder_and_head_parity(parity_run):
    data, ours = parity_run["data"], parity_run["ours"]
    order = _by_anchor(ours, data)
    _close("dec_hidden", ours["hidden"][:, order], data["dec_hidden"], 1e-3, 1e-3)
    _close("dec_bbox_head_out", ours["bbox_head_out"][:, order], data["dec_bbox_head_out"],
           1e-3, 1e-3)
    _close("pred_logits", ours["pred_logits"][order], data["pred_logits"], 1e-3)
    _close("pred_boxes", ours["pred_boxes"][order], data["pred_boxes"], 1e-4)
    _close("pred_mask_embed", ours["pred_mask_embed"][order], data["pred_mask_embed"], 1e-3,
           1e-3)
    _close("pred_masks_sel", ours["pred_masks"][order[data["pred_masks_queries"]]],
           data["pred_masks_sel"], 1e-3)


def test_postprocess_parity(parity_run):
    """Detections matched by (anchor, label), never by row: the top-100 has near-ties."""
    data, ours = parity_run["data"], parity_run["ours"]
    num_classes = data["pred_logits"].shape[-1]
    ref_query, ref_label = np.divmod(data["post_topk_flat_index"], num_classes)
    ref_keys = list(zip(data["enc_topk_index"][ref_query].tolist(), ref_label.tolist()))
    # our rows: the same top-k the post-process takes, its labels must be the bbox labels
    scores = F.sigmoid(paddle.to_tensor(ours["pred_logits"])).flatten()
    flat = paddle.topk(scores, len(ref_keys))[1].numpy()
    query, label = np.divmod(flat, num_classes)
    np.testing.assert_array_equal(ours["bbox"][:, 0], label)
    our_rows = {key: row for row, key in
                enumerate(zip(ours["index"][query].tolist(), label.tolist()))}
    assert set(our_rows) == set(ref_keys)
    rows = np.array([our_rows[key] for key in ref_keys])

    assert ours["bbox_num"].tolist() == data["bbox_num"].tolist()
    np.testing.assert_array_equal(ours["bbox"][rows, 0], data["bbox"][:, 0])
    _close("post scores", ours["bbox"][rows, 1], data["bbox"][:, 1], 1e-4)
    _close("post boxes px", ours["bbox"][rows, 2:], data["bbox"][:, 2:], 0.05)
    shape = data["mask_shape"]
    ref_masks = np.unpackbits(data["mask_packbits"])[:np.prod(shape)].reshape(shape)
    assert ours["mask"].shape == tuple(shape)
    flipped = int((ours["mask"][rows] != ref_masks).sum())
    print(f"post masks: {flipped} of {ref_masks.size} pixels differ")
    assert flipped <= 300


def test_forward_equals_steps_with_free_eval_size(parity_run):
    """model(inputs) with eval_size=None (anchors and position embedding computed on the fly)
    is bit-identical to the step-by-step run with precomputed ones."""
    model = build_model(parity_run["info"]["arch"].lower(), eval_size=None)
    model.set_state_dict(parity_run["weights"])
    model.eval()
    with paddle.no_grad():
        out = model(parity_run["inputs"])
    for key in ("bbox", "bbox_num", "mask"):
        np.testing.assert_array_equal(out[key].numpy(), parity_run["ours"][key], err_msg=key)


def test_train_mode_query_selection_matches_reference(parity_run, ref_dir):
    """Train-mode BN (batch statistics) selects the reference's train-mode top-300 set."""
    loss_log = json.loads((ref_dir / "loss_L_000000014439_640.json").read_text())
    if parity_run["info"]["arch"] != loss_log["arch"]:
        pytest.skip("the loss fixture is for another arch")
    model = build_model(loss_log["arch"].lower(), num_denoising=0)
    model.set_state_dict(parity_run["weights"])
    model.train()
    t = model.transformer
    with paddle.no_grad():
        enc_feats, _ = model.neck(model.backbone(parity_run["inputs"]["image"]))
        memory, shapes = t.project_memory(enc_feats)
        index, _, _ = t.select_queries(*t.score_memory(memory, shapes))
    assert set(index.numpy()[0].tolist()) == set(
        loss_log["A_dn0_injected_rng"]["train_enc_topk"]["index"])


def test_s_with_free_eval_size_runs_at_other_sizes(ref_dir, refweights):
    """No S forward fixture: with its reference weights, non-square inputs give sane outputs."""
    manifest = json.loads((ref_dir / "manifest_S.json").read_text())
    model = build_model("s", eval_size=None, num_top_queries=30)
    model.set_state_dict(refweights.reference_weights(manifest))
    model.eval()
    with paddle.no_grad():
        out = model(_inputs(size=(320, 416), origin=[(480, 640)]))
    assert out["bbox"].shape == [30, 6] and np.isfinite(out["bbox"].numpy()).all()
    assert out["mask"].shape == [30, 480, 640] and out["bbox_num"].numpy().tolist() == [30]
