"""Synthetic shapes: a valid COCO data set, deterministic, idempotent, annotations match pixels."""

import json

import cv2
import numpy as np
import pytest

from mrtdetr_lib.data import COCOInstanceDataset, segmentation_to_mask
from mrtdetr_lib.data.check import check_dataset
from mrtdetr_lib.data.shapes import CLASSES, make_shapes

SIZE = 128


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    assert make_shapes(str(root), num_train=40, num_val=5, image_size=SIZE, progress=False)
    return root


def _load(root, split="train"):
    return json.loads((root / f"instances_{split}.json").read_text())


def test_is_a_valid_coco_data_set(shapes):
    for split, count in (("train", 40), ("val", 5)):
        report = check_dataset(str(shapes / f"instances_{split}.json"), str(shapes / split))
        assert report.ok, str(report)
        assert report.num_images == count
    data = _load(shapes)
    assert [c["name"] for c in data["categories"]] == list(CLASSES)
    assert [c["id"] for c in data["categories"]] == [1, 2, 3, 4]  # mapped to labels 0..3
    per_image = np.bincount([a["image_id"] for a in data["annotations"]], minlength=41)[1:]
    assert per_image.min() >= 1 and per_image.max() <= 6
    assert {a["category_id"] for a in data["annotations"]} == {1, 2, 3, 4}


def test_every_segmentation_format_occurs(shapes):
    kinds = set()
    for a in _load(shapes)["annotations"]:
        segm = a["segmentation"]
        kinds.add("polygon" if isinstance(segm, list) else
                  "rle" if isinstance(segm["counts"], str) else "uncompressed rle")
    assert kinds == {"polygon", "rle", "uncompressed rle"}


def test_visible_masks_are_disjoint_and_match_box_area_and_pixels(shapes):
    data = _load(shapes)
    by_image = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for image_id, anns in list(by_image.items())[:15]:
        image = cv2.imread(str(shapes / "train" / f"{image_id - 1:06d}.jpg"))
        masks = np.stack([segmentation_to_mask(a["segmentation"], SIZE, SIZE) for a in anns])
        assert masks.sum(0).max() == 1  # occluded parts are not annotated: no pixel twice
        for a, mask in zip(anns, masks):
            ys, xs = np.nonzero(mask)
            assert a["area"] == mask.sum() > 0
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                 ys.max() - ys.min() + 1]
            inner = cv2.erode(mask, np.ones((3, 3), np.uint8)) > 0
            # one flat colour (+ noise, JPEG) inside each visible mask
            assert image[inner].std(0).max() < 15


def test_objects_are_large_enough_to_learn(shapes):
    sides = [max(a["bbox"][2:]) for a in _load(shapes)["annotations"]]
    assert min(sides) >= 0.05 * SIZE and max(sides) <= 0.5 * SIZE


def test_deterministic_and_idempotent(shapes, tmp_path):
    other = tmp_path / "again"
    make_shapes(str(other), num_train=40, num_val=5, image_size=SIZE, progress=False)
    assert _load(other) == _load(shapes)
    assert (other / "train" / "000007.jpg").read_bytes() == (
        shapes / "train" / "000007.jpg").read_bytes()
    assert not make_shapes(str(other), num_train=40, num_val=5, image_size=SIZE, progress=False)
    (other / "val" / "000002.jpg").unlink()  # incomplete: rebuilt
    assert make_shapes(str(other), num_train=40, num_val=5, image_size=SIZE, progress=False)
    assert make_shapes(str(other), num_train=40, num_val=5, image_size=SIZE, seed=1,
                       progress=False)  # other parameters: rebuilt, and different
    assert _load(other) != _load(shapes)
    make_shapes(str(other), num_train=10, num_val=5, image_size=SIZE, progress=False)
    assert sorted(p.name for p in (other / "train").iterdir())[-1] == "000009.jpg"


def test_loads_as_a_four_class_data_set(shapes):
    ds = COCOInstanceDataset(str(shapes / "train"), str(shapes / "instances_train.json"))
    assert len(ds) == 40 and ds.class_names == list(CLASSES)
    labels = np.concatenate([r["gt_class"].ravel() for r in ds.records])
    assert set(labels.tolist()) == {0, 1, 2, 3}


def test_radius_range_makes_another_data_set_of_smaller_shapes(tmp_path):
    make_shapes(str(tmp_path / "a"), num_train=1, num_val=8, progress=False)
    make_shapes(str(tmp_path / "b"), num_train=1, num_val=8, progress=False,
                radius_range=(0.03, 0.08))
    areas = {}
    for name in ("a", "b"):
        data = json.loads((tmp_path / name / "instances_val.json").read_text())
        areas[name] = np.median([a["area"] for a in data["annotations"]])
        assert ("radius_range" in data["info"]["params"]) == (name == "b")
    assert areas["b"] < areas["a"] / 3
    # the default build keeps its parameters, so existing data sets are not rebuilt
    assert not make_shapes(str(tmp_path / "a"), num_train=1, num_val=8, progress=False)
