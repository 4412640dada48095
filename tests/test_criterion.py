"""MaskDINOLoss: toy-size behaviour, then parity with PaddleDetection's loss fixtures."""

import json

import numpy as np
import paddle
import pytest
from conftest import reference_dir

import mrtdetr_lib as mrt
from mrtdetr_lib.loss.criterion import TERMS, mask_iou, varifocal_loss

KEYS = [f"loss_{t}{a}{d}" for d in ("", "_dn") for a in ("", "_aux") for t in TERMS]


def _tiny_batch(counts=(2, 1), size=128, seed=0):
    rng = np.random.default_rng(seed)
    inputs = {"image": paddle.to_tensor(rng.random((len(counts), 3, size, size), "float32")),
              "im_shape": paddle.to_tensor([[size, size]] * len(counts), dtype="float32"),
              "scale_factor": paddle.ones([len(counts), 2]), "gt_class": [], "gt_bbox": [],
              "gt_segm": []}
    for n in counts:
        boxes = rng.uniform(0.3, 0.7, (n, 2))
        boxes = np.concatenate([boxes, rng.uniform(0.1, 0.3, (n, 2))], 1).astype("float32")
        segm = np.zeros((n, size, size), "uint8")
        for k, (cx, cy, w, h) in enumerate(boxes * size):
            segm[k, int(cy - h / 2):int(cy + h / 2), int(cx - w / 2):int(cx + w / 2)] = 1
        inputs["gt_class"].append(paddle.to_tensor(rng.integers(0, 4, (n, 1)).astype("int32")))
        inputs["gt_bbox"].append(paddle.to_tensor(boxes))
        inputs["gt_segm"].append(paddle.to_tensor(segm))
    return inputs


@pytest.mark.parametrize("num_denoising", [0, 20])
def test_keys_and_gradients_on_tiny(num_denoising):
    paddle.seed(0)
    model = mrt.build_model("tiny", eval_size=None, num_denoising=num_denoising)
    model.train()
    inputs = _tiny_batch()
    losses = mrt.build_criterion(num_classes=4, num_sample_points=256)(model(inputs), inputs)
    assert sorted(losses) == sorted(KEYS + ["loss"])
    assert all(v.shape == [] and np.isfinite(float(v)) for v in losses.values())
    total = sum(float(v) for k, v in losses.items() if k != "loss")
    assert float(losses["loss"]) == pytest.approx(total, rel=1e-5)
    dn_sum = sum(float(v) for k, v in losses.items() if k.endswith("_dn"))
    assert (dn_sum == 0) == (num_denoising == 0)
    losses["loss"].backward()
    grad = model.transformer.score_head.weight.grad
    assert grad is not None and np.isfinite(grad.numpy()).all() and float(grad.abs().sum()) > 0


def test_images_without_objects():
    paddle.seed(0)
    model = mrt.build_model("tiny", eval_size=None, num_denoising=20)
    model.train()
    inputs = _tiny_batch(counts=(0, 0))
    losses = mrt.build_criterion(num_classes=4, num_sample_points=256)(model(inputs), inputs)
    assert float(losses["loss_class"]) > 0  # every query learns "no object"
    for key in ("loss_bbox", "loss_giou", "loss_mask", "loss_dice", "loss_bbox_dn"):
        assert float(losses[key]) == 0.0
    inputs = _tiny_batch(counts=(0, 2))  # one empty image next to one with objects
    losses = mrt.build_criterion(num_classes=4, num_sample_points=256)(model(inputs), inputs)
    assert float(losses["loss_bbox"]) > 0 and np.isfinite(float(losses["loss"]))


def test_perfect_prediction_has_near_zero_box_and_mask_terms():
    inputs = _tiny_batch(counts=(2,), size=64)
    gt_box, gt_mask = inputs["gt_bbox"][0], inputs["gt_segm"][0].astype("float32")
    queries = 5
    boxes = paddle.concat([gt_box, paddle.full([queries - 2, 4], 0.5)]).unsqueeze(0)
    logits = paddle.full([1, queries, 4], -12.0)
    masks = paddle.full([1, queries, 64, 64], -30.0)
    masks[0, :2] = gt_mask * 60 - 30  # +-30 logits where the gt is / is not
    for k in range(2):
        logits[0, k, int(inputs["gt_class"][0].numpy()[k, 0])] = 12.0
    outputs = {"logits": logits.unsqueeze(0), "boxes": boxes.unsqueeze(0),
               "masks": masks.unsqueeze(0), "dn_meta": None}
    criterion = mrt.build_criterion(num_classes=4, num_sample_points=256)
    losses = criterion(outputs, inputs)
    assert float(losses["loss_bbox"]) < 1e-6 and float(losses["loss_giou"]) < 1e-5
    assert float(losses["loss_class"]) < 0.05
    # Mask terms are sampled where the mask is uncertain (its border), so even a perfect mask
    # keeps some loss there; it must still be far below that of the masks swapped.
    outputs["masks"] = paddle.concat([masks[:, 1:2], masks[:, :1], masks[:, 2:]], 1)[None]
    swapped = criterion(outputs, inputs)
    for term in ("loss_mask", "loss_dice"):
        assert float(losses[term]) < 0.3 * float(swapped[term])


def test_varifocal_loss_and_mask_iou_by_hand():
    logits = paddle.to_tensor([[[2.0, -1.0]]])
    target = paddle.to_tensor([[[0.6, 0.0]]])
    one_hot = paddle.to_tensor([[[1.0, 0.0]]])
    p = 1 / (1 + np.exp(-np.array([2.0, -1.0])))
    bce = -(np.array([0.6, 0.0]) * np.log(p) + (1 - np.array([0.6, 0.0])) * np.log(1 - p))
    weight = np.array([0.6, 0.75 * p[1] ** 2])  # positives: IoU; negatives: alpha * p^gamma
    assert float(varifocal_loss(logits, target, one_hot, 1.0)) == pytest.approx(
        (bce * weight).sum(), rel=1e-5)
    pred = paddle.full([1, 8, 8], -10.0)
    pred[0, :4, :] = 10.0  # top half
    gt = paddle.zeros([1, 16, 16])
    gt[0, :, :8] = 1.0  # left half: overlap is a quarter of the image
    expected = (64 + 0.01) / (192 + 0.01)
    assert mask_iou(pred, gt).item() == pytest.approx(expected, rel=1e-4)


def test_uniform_points_when_no_point_is_important():
    """important_sample_ratio 0 samples S uniform points (no oversampling, no top-k of 0)."""
    criterion = mrt.build_criterion(num_classes=4, num_sample_points=64,
                                    important_sample_ratio=0.0)
    paddle.seed(3)
    points = criterion._uncertain_points(paddle.randn([5, 1, 8, 8]))
    assert points.shape == [5, 64, 2]
    assert float(points.min()) >= 0.0 and float(points.max()) < 1.0


def test_build_criterion_reads_the_config():
    crit = mrt.build_criterion(mrt.get_config("tiny").loss, num_classes=4)
    assert crit.num_sample_points == 2048 and crit.num_classes == 4
    assert mrt.build_criterion().matcher.matcher_coeff == {"class": 4, "bbox": 5, "giou": 2,
                                                           "mask": 5, "dice": 5}


# ---------------------------------------------------------------- parity with PaddleDetection
def _loss_fixtures():
    return sorted(p.name for p in reference_dir().glob("loss_*.json")) or ["missing"]


def _reference_rng(monkeypatch, refweights):
    """Route paddle.rand / paddle.randint_like through refweights.reference_rand(i, shape)."""
    count = [0]

    def rand(shape, dtype=None, name=None):
        count[0] += 1
        return paddle.to_tensor(refweights.reference_rand(count[0] - 1, list(shape)))

    def randint_like(x, low=0, high=None, dtype=None, name=None):
        count[0] += 1
        u = refweights.reference_rand(count[0] - 1, list(x.shape))
        return paddle.to_tensor(low + np.floor(u * (high - low))).astype(dtype or x.dtype)

    monkeypatch.setattr(paddle, "rand", rand)
    monkeypatch.setattr(paddle, "randint_like", randint_like)
    return count


@pytest.fixture(scope="module", params=_loss_fixtures())
def loss_case(request, ref_dir, refweights):
    path = ref_dir / request.param
    if not path.is_file():
        pytest.skip(f"no loss_*.json fixture in {ref_dir}")
    fixture = json.loads(path.read_text())
    stem = path.stem[len("loss_"):]
    gt = np.load(ref_dir / f"loss_{stem}_inputs.npz")
    image_u8 = np.load(ref_dir / f"fwd_{stem}.npz")["input_rgb_u8"]
    shape = tuple(gt["gt_segm_shape"])
    segm = np.unpackbits(gt["gt_segm_packbits"])[:np.prod(shape)].reshape(shape)
    size = [float(image_u8.shape[0]), float(image_u8.shape[1])]

    def inputs(scale=1.0):
        """The README's exact recipe: u8 * float32(1/255), HWC -> CHW; times `scale`."""
        image = (image_u8.astype("float32") * np.float32(1 / 255)).transpose(2, 0, 1)[None]
        if scale != 1.0:
            image = image * np.float32(scale)
        return {"image": paddle.to_tensor(image), "im_shape": paddle.to_tensor([size]),
                "scale_factor": paddle.ones([1, 2]),
                "gt_class": [paddle.to_tensor(gt["gt_class"])],
                "gt_bbox": [paddle.to_tensor(gt["gt_bbox"])],
                "gt_segm": [paddle.to_tensor(segm.astype("uint8"))]}

    manifest = json.loads((ref_dir / f"manifest_{fixture['arch']}.json").read_text())
    weights = {k: paddle.to_tensor(v) for k, v in refweights.reference_weights(manifest).items()}

    def model(num_denoising):
        """Fresh weights for every run: train-mode BN updates the running stats."""
        net = mrt.build_model(fixture["arch"].lower(), num_denoising=num_denoising)
        net.set_state_dict(weights)
        net.train()
        return net

    return fixture, inputs, model


# How close can a loss be to the fixture's? The fixture was computed on another machine, whose
# float rounding differs from ours at ~1e-7. With the random L weights some terms amplify that
# a thousandfold: the last decoder layer's boxes saturate (w, h ~ 0.99999), and their centres
# move by ~0.03 when only MKL's code path changes (MKL_CBWR; same code, same machine). So each
# term is held to what its own conditioning allows, measured here: the input pixels are scaled
# by 1 +- 1e-6 (a change far below 8-bit precision), and a term must equal the fixture within
# CONDITIONING_FACTOR times the most it moved, or within 1e-5 relative if it moved less.
# Measured on this project's AVX-512 Xeon at one thread (paddle 3.3.1): the giou terms move
# < 1e-5 and match to 7e-7 (last layer) / 2.5e-6 (aux); the other aux and denoising terms move
# 1e-6 to 2e-4; the last layer's bbox, mask, dice and class move 1e-3 to 1.3e-2; each is off
# from the fixture by at most 3.1x its movement. The global gradient norm moves by 15 %. On the
# fixtures' own machine the same code matched to ~1e-7.
PERTURBATION = 1e-6
CONDITIONING_FACTOR = 5.0
RTOL = 1e-5


@pytest.fixture(scope="module")
def loss_runs(loss_case, refweights):
    """Every variant's losses (and variant A's gradient norms) at one thread, for the input as
    given and scaled by 1 +- PERTURBATION: {scale: {"A"|"B"|"C"|"D": {key: float}, "grads"}}."""
    fixture, inputs, make_model = loss_case
    mrt.set_num_threads(1)  # as the fixtures were made: one summation order
    try:
        return {scale: _variants(fixture, inputs, make_model, refweights, scale)
                for scale in (1.0, 1 + PERTURBATION, 1 - PERTURBATION)}
    finally:
        mrt.set_num_threads(0)


def _variants(fixture, inputs, make_model, refweights, scale):
    """Losses of the variants the fixture holds: A/D with its random numbers injected (their
    call counts checked), B/C with paddle.seed; gradient norms after A's backward."""
    floats = lambda losses: {k: float(v) for k, v in losses.items()}  # noqa: E731
    model = make_model(0)
    criterion = mrt.build_criterion(num_classes=model.transformer.num_classes)
    outputs = model(inputs(scale))  # no random numbers in the forward without denoising
    runs = {}
    if "B_dn0_native_seeded" in fixture:
        paddle.seed(fixture.get("seed", 20240601))
        runs["B"] = floats(criterion(outputs, inputs(scale)))
    with pytest.MonkeyPatch.context() as patch:
        count = _reference_rng(patch, refweights)
        losses = criterion(outputs, inputs(scale))
    assert count[0] == len(fixture["A_dn0_injected_rng"]["rng_calls"])
    runs["A"] = floats(losses)
    losses["loss"].backward()
    params = dict(model.named_parameters())
    runs["grads"] = {name: float(paddle.linalg.norm(params[name].grad))
                     for name in fixture["A_dn0_injected_rng"]["grad_l2_selected"]}
    runs["grads"]["global"] = sum(float((p.grad.astype("float64") ** 2).sum())
                                  for p in params.values() if p.grad is not None) ** 0.5
    with pytest.MonkeyPatch.context() as patch:
        count = _reference_rng(patch, refweights)
        runs["D"] = floats(criterion(make_model(100)(inputs(scale)), inputs(scale)))
    assert count[0] == len(fixture["D_dn100_injected_rng"]["rng_calls"])
    if "C_dn100_native_seeded" in fixture:
        model = make_model(100)
        paddle.seed(fixture.get("seed", 20240601))
        runs["C"] = floats(criterion(model(inputs(scale)), inputs(scale)))
    return runs


def _assert_as_conditioned(runs, part, expected, variant):
    """Each value within max(CONDITIONING_FACTOR x its movement under the perturbation,
    RTOL relative) of the fixture's."""
    ours, moved = runs[1.0][part], [r[part] for s, r in runs.items() if s != 1.0]
    for key, value in expected.items():
        movement = max(abs(m[key] - ours[key]) for m in moved)
        tol = max(CONDITIONING_FACTOR * movement, RTOL * abs(value), 1e-7)
        assert abs(ours[key] - value) <= tol, (
            f"{variant} {key}: ours {ours[key]:.8g}, fixture {value:.8g}, off by "
            f"{abs(ours[key] - value):.3g}; a 1e-6 input change moves it by {movement:.3g}")


def test_loss_parity_without_denoising(loss_case, loss_runs):
    """Variants A (injected random numbers) and B (paddle.seed), and A's gradient norms."""
    fixture = loss_case[0]
    if "B_dn0_native_seeded" in fixture:
        _assert_as_conditioned(loss_runs, "B", fixture["B_dn0_native_seeded"]["losses"], "B")
    variant = fixture["A_dn0_injected_rng"]
    _assert_as_conditioned(loss_runs, "A", variant["losses"], "A")
    _assert_as_conditioned(loss_runs, "grads", {**variant["grad_l2_selected"],
                                                "global": variant["grad_global_l2"]}, "A grad")


def test_loss_parity_with_denoising(loss_case, loss_runs):
    """Variants D (injected: 3 denoising draws, then the loss's) and C (paddle.seed)."""
    fixture = loss_case[0]
    _assert_as_conditioned(loss_runs, "D", fixture["D_dn100_injected_rng"]["losses"], "D")
    if "C_dn100_native_seeded" in fixture:
        _assert_as_conditioned(loss_runs, "C", fixture["C_dn100_native_seeded"]["losses"], "C")


def test_the_fixture_case_is_well_conditioned_where_it_is_held_to_1e5(loss_case, loss_runs):
    """The tolerance above is not a blanket one: the giou terms, which the perturbation moves by
    less than 1e-5, are held to 1e-5; the last layer's box L1 moves by more than 1e-3, which is
    why a fixed 1e-5 cannot hold for it against another CPU's numbers."""
    fixture, ours = loss_case[0], loss_runs[1.0]["A"]
    moved = {k: max(abs(r["A"][k] - ours[k]) / abs(ours[k]) for s, r in loss_runs.items()
                    if s != 1.0) for k in ("loss_giou", "loss_giou_aux", "loss_bbox")}
    assert moved["loss_giou"] < RTOL and moved["loss_giou_aux"] < RTOL
    assert moved["loss_bbox"] > 1e-3  # a 1e-6 input change, a > 1e-3 change of the term
    for key in ("loss_giou", "loss_giou_aux"):
        expected = fixture["A_dn0_injected_rng"]["losses"][key]
        assert ours[key] == pytest.approx(expected, rel=RTOL)
