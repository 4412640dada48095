"""COCO data set: segmentation formats, crowd and empty images, category mapping, clear errors."""

import json

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest

from mrtdetr_lib.data import COCOInstanceDataset, mask_to_rle, segmentation_to_mask
from mrtdetr_lib.data import transforms as T

H, W = 48, 64
NAN, INF = float("nan"), float("inf")


def square(x, y, size):
    """Polygon of an axis-aligned square (flat x,y list)."""
    return [x, y, x + size, y, x + size, y + size, x, y + size]


def ann(ann_id, image_id, category_id, segmentation, bbox=None, **extra):
    if bbox is None:
        xs, ys = segmentation[0][0::2], segmentation[0][1::2]
        bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "area": float(bbox[2] * bbox[3]), "iscrowd": 0, "segmentation": segmentation,
            **extra}


def write_coco(root, annotations, num_images=2, categories=(1, 2), images=None):
    """JPEG images 1..num_images (W x H) in root/images and root/anno.json; returns both paths."""
    (root / "images").mkdir(exist_ok=True)
    images = images or [{"id": i, "file_name": f"{i}.jpg", "width": W, "height": H}
                        for i in range(1, num_images + 1)]
    rng = np.random.default_rng(0)
    for im in images:
        pixels = rng.integers(0, 256, (im["height"], im["width"], 3), dtype=np.uint8)
        cv2.imwrite(str(root / "images" / im["file_name"]), pixels)
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": f"class{c}"} for c in categories]}
    (root / "anno.json").write_text(json.dumps(data))
    return str(root / "images"), str(root / "anno.json")


def uncompressed_rle(mask):
    flat = mask.ravel(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs}


def test_polygon_rle_and_uncompressed_rle_give_the_same_mask():
    polygon = [[5, 5, 30, 8, 20, 40], square(40, 10, 12)]  # two parts: one object
    mask = segmentation_to_mask(polygon, H, W)
    assert mask.shape == (H, W) and mask.dtype == np.uint8 and mask[12, 15] == 1
    assert mask[15, 45] == 1 and mask[0, 0] == 0
    rle = mask_to_rle(mask)
    assert isinstance(rle["counts"], str)  # json-ready
    np.testing.assert_array_equal(segmentation_to_mask(rle, H, W), mask)
    np.testing.assert_array_equal(
        segmentation_to_mask({**rle, "counts": rle["counts"].encode()}, H, W), mask)
    np.testing.assert_array_equal(segmentation_to_mask(uncompressed_rle(mask), H, W), mask)
    # pycocotools' own reading of the polygon agrees
    ref = mask_util.decode(mask_util.merge(mask_util.frPyObjects(polygon, H, W)))
    np.testing.assert_array_equal(mask, ref)


def test_rle_of_another_size_is_a_clear_error(tmp_path):
    rle = mask_to_rle(np.ones((10, 10), np.uint8))
    with pytest.raises(ValueError, match=r"RLE size \[10, 10\] differs"):
        segmentation_to_mask(rle, H, W)
    image_dir, anno = write_coco(tmp_path, [ann(7, 1, 1, rle, bbox=[0, 0, 10, 10])], 1)
    ds = COCOInstanceDataset(image_dir, anno, [T.Decode(), T.Poly2Mask()])
    with pytest.raises(ValueError, match=r"1\.jpg: annotation 7: bad segmentation"):
        ds[0]


def test_all_formats_load_through_the_data_set(tmp_path):
    mask = segmentation_to_mask([square(20, 10, 15)], H, W)
    anns = [ann(1, 1, 1, [square(2, 2, 10)]),
            ann(2, 1, 2, mask_to_rle(mask), bbox=[20, 10, 15, 15]),
            ann(3, 1, 2, uncompressed_rle(mask), bbox=[20, 10, 15, 15])]
    image_dir, anno = write_coco(tmp_path, anns, 1)
    sample = COCOInstanceDataset(image_dir, anno, [T.Decode(), T.Poly2Mask()])[0]
    assert sample["gt_segm"].shape == (3, H, W) and "gt_poly" not in sample
    np.testing.assert_array_equal(sample["gt_segm"][1], mask)
    np.testing.assert_array_equal(sample["gt_segm"][2], mask)
    np.testing.assert_array_equal(sample["gt_bbox"], [[2, 2, 12, 12], [20, 10, 35, 25],
                                                      [20, 10, 35, 25]])


def test_crowd_regions_are_not_targets_and_empty_images_are_skipped(tmp_path):
    crowd = uncompressed_rle(segmentation_to_mask([square(0, 0, 20)], H, W))
    anns = [ann(1, 1, 1, [square(2, 2, 10)]),
            ann(2, 1, 1, crowd, bbox=[0, 0, 20, 20], iscrowd=1),  # crowd beside an object
            ann(3, 2, 1, crowd, bbox=[0, 0, 20, 20], iscrowd=1),  # image 2: only a crowd
            ann(4, 3, 2, [square(5, 5, 8)], ignore=True)]  # image 3: only an ignored one
    image_dir, anno = write_coco(tmp_path, anns, 4)  # image 4 has no annotation at all
    ds = COCOInstanceDataset(image_dir, anno)
    assert [int(r["im_id"][0]) for r in ds.records] == [1]
    assert ds.records[0]["ann_ids"] == [1]
    assert ds.records[0]["gt_class"].shape == (1, 1)
    ds = COCOInstanceDataset(image_dir, anno, [T.Decode(), T.Poly2Mask()], allow_empty=True)
    assert [int(r["im_id"][0]) for r in ds.records] == [1, 2, 3, 4]
    empty = ds[1]
    assert empty["gt_segm"].shape == (0, H, W) and empty["gt_bbox"].shape == (0, 4)
    assert empty["gt_class"].shape == (0, 1) and empty["gt_class"].dtype == np.int32


def test_category_ids_map_to_contiguous_labels(tmp_path):
    anns = [ann(1, 1, 12, [square(2, 2, 10)]), ann(2, 1, 3, [square(20, 2, 10)]),
            ann(3, 2, 7, [square(2, 20, 10)])]
    image_dir, anno = write_coco(tmp_path, anns, 2, categories=(7, 12, 3))
    ds = COCOInstanceDataset(image_dir, anno)
    assert ds.cat_ids == [3, 7, 12] and ds.catid2clsid == {3: 0, 7: 1, 12: 2}
    assert ds.class_names == ["class3", "class7", "class12"]
    assert ds.records[0]["gt_class"].ravel().tolist() == [2, 0]
    assert ds.records[1]["gt_class"].ravel().tolist() == [1]
    labels = [0, 1, 2]
    assert [ds.cat_ids[label] for label in labels] == [3, 7, 12]  # inverse map for results


def test_unknown_category_is_a_clear_error(tmp_path):
    image_dir, anno = write_coco(tmp_path, [ann(5, 1, 9, [square(2, 2, 10)])], 1)
    with pytest.raises(ValueError, match="annotation 5 has category id 9"):
        COCOInstanceDataset(image_dir, anno)


@pytest.mark.parametrize("field,value,message", [
    ("bbox", [2, 2, NAN, 10], r"bbox\[2\] is nan, not a finite number"),
    ("bbox", [2, 2, 10, -INF], r"bbox\[3\] is -inf, not a finite number"),
    ("area", NAN, "area is nan, not a finite number"),
    ("area", INF, "area is inf, not a finite number"),
    ("segmentation", [square(2, 2, 10)[:5] + [NAN] + square(2, 2, 10)[6:]],
     r"segmentation\[0\]\[5\] is nan, not a finite number"),
    ("segmentation", {"size": [H, W], "counts": [100, 3.5, H * W - 103.5]},
     r"segmentation\.counts\[1\] is 3\.5: uncompressed RLE counts are whole numbers >= 0"),
    ("segmentation", {"size": [H, W], "counts": [100, NAN]},
     r"segmentation\.counts\[1\] is nan, not a finite number"),
], ids=["bbox-nan", "bbox-inf", "area-nan", "area-inf", "polygon-nan", "rle-float-count",
        "rle-nan-count"])
def test_non_finite_number_is_an_error_naming_file_annotation_and_field(tmp_path, field, value,
                                                                        message):
    bad = {**ann(5, 1, 1, [square(2, 2, 10)]), field: value}
    image_dir, anno = write_coco(tmp_path, [ann(4, 1, 1, [square(20, 20, 10)]), bad], 1)
    with pytest.raises(ValueError, match=rf"anno\.json: annotation 5: {message}"):
        COCOInstanceDataset(image_dir, anno)


def test_non_finite_number_in_a_crowd_region_is_an_error_too(tmp_path):
    crowd = ann(6, 1, 1, [square(2, 2, 10)], bbox=[2, 2, 10, NAN], iscrowd=1, area=100)
    image_dir, anno = write_coco(tmp_path, [ann(4, 1, 1, [square(20, 20, 10)]), crowd], 1)
    with pytest.raises(ValueError, match=r"annotation 6: bbox\[3\] is nan"):
        COCOInstanceDataset(image_dir, anno, train=False)


def test_whole_number_float_rle_counts_load(tmp_path):
    mask = segmentation_to_mask([square(20, 10, 15)], H, W)
    counts = [float(c) for c in uncompressed_rle(mask)["counts"]]  # as a float array writes them
    rle = {"size": [H, W], "counts": counts}
    image_dir, anno = write_coco(tmp_path, [ann(1, 1, 1, rle, bbox=[20, 10, 15, 15])], 1)
    sample = COCOInstanceDataset(image_dir, anno, [T.Decode(), T.Poly2Mask()])[0]
    np.testing.assert_array_equal(sample["gt_segm"][0], mask)


def test_degenerate_annotations_are_left_out_with_a_warning(tmp_path):
    anns = [ann(1, 1, 1, [square(2, 2, 10)]),
            ann(2, 1, 1, [[1, 1, 5, 5]], bbox=[1, 1, 4, 4]),  # 2 points: no polygon
            ann(3, 1, 1, [square(2, 2, 10)], bbox=[2, 2, 0, 10]),  # zero width
            ann(4, 1, 1, [[1, 1, 5, 5], square(30, 5, 6)])]  # keeps its valid part
    image_dir, anno = write_coco(tmp_path, anns, 1)
    with pytest.warns(UserWarning, match="left out 2 annotations"):
        ds = COCOInstanceDataset(image_dir, anno)
    assert ds.records[0]["ann_ids"] == [1, 4]
    assert ds.records[0]["gt_poly"][1] == [square(30, 5, 6)]


def test_eval_mode_yields_image_id_and_original_size(tmp_path):
    images = [{"id": 10, "file_name": "a.jpg", "width": 64, "height": 48},
              {"id": 20, "file_name": "b.jpg", "width": 30, "height": 90}]
    anns = [ann(1, 10, 1, [square(2, 2, 10)]), ann(2, 20, 2, [square(2, 2, 10)])]
    image_dir, anno = write_coco(tmp_path, anns, images=images)
    ds = COCOInstanceDataset(image_dir, anno, T.eval_transforms((32, 32)), train=False)
    sample = ds[1]
    assert not any(k.startswith("gt_") for k in sample)
    assert sample["im_id"].tolist() == [20] and sample["orig_size"].tolist() == [90, 30]
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == np.float32
    np.testing.assert_allclose(sample["scale_factor"], [32 / 90, 32 / 30], rtol=1e-6)
    np.testing.assert_array_equal(sample["im_shape"], [32, 32])


def test_image_info_only_json_keeps_every_image(tmp_path):
    image_dir, anno = write_coco(tmp_path, [], 3)
    data = json.loads(open(anno).read())
    del data["annotations"]  # like COCO's image_info_test2017.json
    open(anno, "w").write(json.dumps(data))
    assert len(COCOInstanceDataset(image_dir, anno, train=False)) == 3


def test_max_images_and_sorted_ids(tmp_path):
    anns = [ann(i, i, 1, [square(2, 2, 10)]) for i in (3, 1, 2)]
    image_dir, anno = write_coco(tmp_path, anns, 3)
    ds = COCOInstanceDataset(image_dir, anno, max_images=2)
    assert [int(r["im_id"][0]) for r in ds.records] == [1, 2]


def test_missing_and_corrupt_images_name_the_file_and_id(tmp_path):
    anns = [ann(1, 1, 1, [square(2, 2, 10)]), ann(2, 2, 1, [square(2, 2, 10)])]
    image_dir, anno = write_coco(tmp_path, anns, 2)
    (tmp_path / "images" / "1.jpg").unlink()
    (tmp_path / "images" / "2.jpg").write_bytes(b"this is not a jpeg")
    ds = COCOInstanceDataset(image_dir, anno, [T.Decode()])
    with pytest.raises(FileNotFoundError, match=r"1\.jpg \(image id 1\)"):
        ds[0]
    with pytest.raises(ValueError, match=r"cannot decode image .*2\.jpg \(image id 2\)"):
        ds[1]
    (tmp_path / "images" / "2.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"2\.jpg \(image id 2\): empty, corrupt"):
        ds[1]


def test_missing_annotation_file_and_no_usable_image(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        COCOInstanceDataset(str(tmp_path), str(tmp_path / "nope.json"))
    image_dir, anno = write_coco(tmp_path, [], 2)
    with pytest.raises(ValueError, match="no usable images"):
        COCOInstanceDataset(image_dir, anno)


def test_seeded_keys_fix_the_augmentation(tmp_path):
    anns = [ann(1, 1, 1, [square(2, 2, 20)])]
    image_dir, anno = write_coco(tmp_path, anns, 1)
    ops, _ = T.train_transforms([64])
    ds = COCOInstanceDataset(image_dir, anno, ops)
    a, b, c = ds[(0, 11)], ds[(0, 11)], ds[(0, 12)]
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["seed"] == 11 and c["seed"] == 12
    assert not (a["image"].shape == c["image"].shape and np.array_equal(a["image"], c["image"]))
