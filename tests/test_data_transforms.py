"""Transforms: boxes follow masks through every augmentation; parity with ppdet's readers."""

import json

import cv2
import numpy as np
import pytest

from mrtdetr_lib.data import COCOInstanceDataset, masks_to_boxes, train_transforms
from mrtdetr_lib.data import transforms as T

REF_IMAGE = "input_000000014439_640x640.jpg"


def random_sample(rng: np.random.Generator) -> dict:
    """A decoded sample: random image, 1-5 random ellipses/rectangles, boxes = their masks'."""
    h, w = rng.integers(80, 220, 2)
    masks = np.zeros((int(rng.integers(1, 6)), h, w), np.uint8)
    for mask in masks:
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        ax, ay = rng.uniform(8, 0.3 * w), rng.uniform(8, 0.3 * h)
        if rng.random() < 0.5:
            cv2.ellipse(mask, (int(cx), int(cy)), (int(ax), int(ay)), rng.uniform(0, 180), 0,
                        360, 1, -1)
        else:
            mask[max(int(cy - ay), 0):int(cy + ay), max(int(cx - ax), 0):int(cx + ax)] = 1
    return {"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            "im_shape": np.array([h, w], np.float32), "scale_factor": np.ones(2, np.float32),
            "gt_class": rng.integers(0, 4, (len(masks), 1)).astype(np.int32),
            "gt_bbox": masks_to_boxes(masks), "gt_segm": masks}


def assert_consistent(sample: dict, tol: float = 1.0) -> None:
    """Same number of masks, boxes and classes; masks at image size; box == mask's box +- tol."""
    image, masks, boxes = sample["image"], sample["gt_segm"], sample["gt_bbox"]
    assert masks.shape[1:] == image.shape[:2] and masks.dtype == np.uint8
    assert len(masks) == len(boxes) == len(sample["gt_class"])
    visible = masks.any((1, 2))
    assert visible.all(), "an instance lost its mask"
    np.testing.assert_allclose(masks_to_boxes(masks), boxes, atol=tol)


GEOMETRIC = {
    "RandomExpand": T.RandomExpand(fill_value=T.EXPAND_FILL, prob=0.0),
    "RandomCrop": T.RandomCrop(),
    "RandomFlip": T.RandomFlip(prob=1.0),
    "Resize": T.Resize((160, 224), cv2.INTER_CUBIC),
    "RandomDistort": T.RandomDistort(),
}


@pytest.mark.parametrize("name", list(GEOMETRIC))
def test_box_of_transformed_mask_equals_transformed_box(name):
    transform, changed = GEOMETRIC[name], 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        sample = random_sample(rng)
        out = transform(sample, rng)
        assert_consistent(out)
        changed += out["image"].shape != sample["image"].shape or not np.array_equal(
            out["image"], sample["image"])
    assert changed >= 20  # the transform really did something on most inputs


def test_random_crop_keeps_objects_whose_centre_is_inside():
    for seed in range(40):
        rng = np.random.default_rng(seed)
        sample = random_sample(rng)
        out = T.RandomCrop()(sample, rng)
        assert 1 <= len(out["gt_bbox"]) <= len(sample["gt_bbox"])
        assert set(out["gt_class"].ravel()) <= set(sample["gt_class"].ravel())


def test_flip_moves_box_and_mask_to_the_mirror_position():
    sample = random_sample(np.random.default_rng(0))
    out = T.RandomFlip(prob=1.0)(sample, np.random.default_rng(0))
    w = sample["image"].shape[1]
    np.testing.assert_array_equal(out["gt_segm"], sample["gt_segm"][:, :, ::-1])
    np.testing.assert_array_equal(out["gt_bbox"][:, [0, 2]], w - sample["gt_bbox"][:, [2, 0]])


def test_expand_pads_with_the_fill_value():
    rng = np.random.default_rng(3)
    sample = random_sample(rng)
    out = T.RandomExpand(fill_value=T.EXPAND_FILL, prob=0.0)(sample, rng)
    np.testing.assert_array_equal(out["image"][0, 0], np.float32(T.EXPAND_FILL))
    assert out["image"].dtype == np.float32 and out["image"].shape[0] > sample["image"].shape[0]


def test_full_train_pipeline_keeps_boxes_on_masks():
    """All sample transforms, then the batch ones; gt_bbox is normalised cx,cy,w,h at the end."""
    sample_ops, batch_ops = train_transforms([96, 128, 320])
    for seed in range(12):
        rng = np.random.default_rng(seed)
        samples = [T.apply(sample_ops[2:], random_sample(rng), rng) for _ in range(2)]
        for transform in batch_ops:
            samples = transform(samples, rng)
        for s in samples:
            _, h, w = s["image"].shape
            cx, cy, bw, bh = s["gt_bbox"].T * np.array([[w], [h], [w], [h]])
            pixel = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
            assert s["image"].dtype == np.float32 and s["gt_segm"].shape[1:] == (h, w)
            np.testing.assert_allclose(masks_to_boxes(s["gt_segm"]), pixel, atol=1.0)
            np.testing.assert_allclose(s["im_shape"], [h, w])


def test_batch_random_resize_gives_one_size_per_batch():
    resize = T.BatchRandomResize([64, 96, 128])
    sizes = set()
    for seed in range(20):
        rng = np.random.default_rng(seed)
        batch = resize([random_sample(rng) for _ in range(3)], rng)
        assert len({s["image"].shape for s in batch}) == 1
        sizes.add(batch[0]["image"].shape[0])
        for s in batch:
            assert_consistent(s)
    assert sizes == {64, 96, 128}


def test_same_seed_same_augmentation():
    sample_ops, _ = train_transforms([128])
    a = T.apply(sample_ops[2:], random_sample(np.random.default_rng(5)), np.random.default_rng(9))
    b = T.apply(sample_ops[2:], random_sample(np.random.default_rng(5)), np.random.default_rng(9))
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["gt_segm"], b["gt_segm"])


def _reference_coco(tmp_path, ref_dir, polygons=(), categories=1):
    """A one-image COCO json around the reference image; polygons get their extremes as bbox."""
    anns = []
    for k, (category, poly) in enumerate(polygons):
        xs, ys = poly[0::2], poly[1::2]
        anns.append({"id": k + 1, "image_id": 14439, "category_id": category, "iscrowd": 0,
                     "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                     "area": 1.0, "segmentation": [poly]})
    path = tmp_path / "ref.json"
    path.write_text(json.dumps({
        "images": [{"id": 14439, "file_name": REF_IMAGE, "width": 640, "height": 640}],
        "annotations": anns,
        "categories": [{"id": i + 1, "name": f"c{i}"} for i in range(categories)]}))
    return str(path)


def test_eval_transform_is_bit_exact_with_the_reference(ref_dir, tmp_path):
    ref = np.load(ref_dir / "fwd_L_000000014439_640.npz")
    u8 = ref["input_rgb_u8"]
    decoded = T.Decode()({"im_file": str(ref_dir / REF_IMAGE)})
    np.testing.assert_array_equal(decoded["image"], u8)
    ds = COCOInstanceDataset(str(ref_dir), _reference_coco(tmp_path, ref_dir), train=False,
                             allow_empty=True, transforms=T.eval_transforms((640, 640)))
    sample = ds[0]
    expected = (u8.astype(np.float32) * np.float32(1 / 255)).transpose(2, 0, 1)
    assert sample["image"].dtype == np.float32
    assert np.array_equal(sample["image"], expected)  # bit-exact, not allclose
    np.testing.assert_array_equal(sample["im_shape"], ref["im_shape"][0])
    np.testing.assert_array_equal(sample["scale_factor"], ref["scale_factor"][0])
    assert sample["im_id"].tolist() == [14439] and sample["orig_size"].tolist() == [640, 640]


def test_eval_resize_is_cubic_with_scale_factors(ref_dir):
    u8 = T.Decode()({"im_file": str(ref_dir / REF_IMAGE)})["image"][:480, :600]
    out = T.Resize((640, 640), cv2.INTER_CUBIC)({"image": u8, "scale_factor": np.ones(2)})
    expected = cv2.resize(u8, None, None, fx=640 / 600, fy=640 / 480,
                          interpolation=cv2.INTER_CUBIC).astype(np.float32)
    assert np.array_equal(out["image"], expected)
    np.testing.assert_allclose(out["scale_factor"], [640 / 480, 640 / 600])


def test_train_targets_match_the_reference_loss_inputs(ref_dir, tmp_path):
    """Decode -> Poly2Mask -> NormalizeImage -> NormalizeBox -> BboxXYXY2XYWH -> Permute, as the
    reference built its loss ground truth (random augmentation left out)."""
    gt = json.loads((ref_dir / "loss_L_000000014439_640.json").read_text())["gt"]
    ref = np.load(ref_dir / "loss_L_000000014439_640_inputs.npz")
    # labels 33 (kite) and 0 (person): COCO-style ids 34 and 1 in a 34-category json
    polys = [(int(c[0]) + 1, p[0]) for c, p in zip(gt["gt_class"], gt["polygons_xy_pixels"])]
    transforms = [T.Decode(), T.Poly2Mask(), T.NormalizeImage(), T.NormalizeBox(),
                  T.BboxXYXY2XYWH(), T.Permute()]
    ds = COCOInstanceDataset(str(ref_dir), _reference_coco(tmp_path, ref_dir, polys, 34),
                             transforms)
    sample = ds[0]
    masks = np.unpackbits(ref["gt_segm_packbits"])[:np.prod(ref["gt_segm_shape"])]
    np.testing.assert_array_equal(sample["gt_segm"], masks.reshape(ref["gt_segm_shape"]))
    np.testing.assert_array_equal(sample["gt_bbox"], ref["gt_bbox"])
    np.testing.assert_array_equal(sample["gt_class"], ref["gt_class"])
    assert sample["gt_segm"].sum((1, 2)).tolist() == gt["gt_segm_area"]


def test_augment_off_keeps_only_flip_and_multiscale():
    sample, batch = train_transforms([128, 160], augment=False)
    assert [type(t).__name__ for t in sample] == ["Decode", "Poly2Mask", "RandomFlip"]
    assert type(batch[0]).__name__ == "BatchRandomResize"
