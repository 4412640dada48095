"""EXIF orientation: training reads the frame the json describes, the checker warns, inference
shows the photo upright."""

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from mrtdetr_lib.data import read_image
from mrtdetr_lib.data.check import check_dataset, exif_orientation
from mrtdetr_lib.data.coco import COCOInstanceDataset
from mrtdetr_lib.data.shapes import make_shapes
from mrtdetr_lib.data.transforms import Decode, Poly2Mask

ROTATE_TO_VIEW = 6  # EXIF: turn 90 degrees clockwise to show


def _tag(path, orientation=ROTATE_TO_VIEW):
    """Re-save a JPEG with an EXIF orientation tag (pixels stored as they were)."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes(), quality=95)


def _stored(path):
    data = np.fromfile(path, np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.fixture
def shapes(tmp_path):
    root = tmp_path / "shapes"
    make_shapes(str(root), num_train=2, num_val=1, image_size=128, progress=False)
    return root


def test_square_training_image_is_read_as_stored_and_its_masks_fit(shapes):
    """The issue's case: pixels rotated, annotations not, a mask on 0 of its object."""
    path = shapes / "train" / "000000.jpg"
    before = read_image(str(path))
    _tag(path)
    assert exif_orientation(str(path)) == ROTATE_TO_VIEW
    data = COCOInstanceDataset(str(shapes / "train"), str(shapes / "instances_train.json"),
                               [Decode(), Poly2Mask()])
    sample = data[(0, 0)]
    assert np.array_equal(sample["image"], _stored(path))
    # each mask covers the pixels its object had before the tag (JPEG re-encoding aside); the
    # EXIF-rotated pixels, which cv2's default decoding gives, would put it off its object
    rotated = np.rot90(sample["image"], -1)
    for mask in sample["gt_segm"].astype(bool):
        gap = np.abs(sample["image"][mask].astype(int) - before[mask].astype(int)).mean()
        off = np.abs(rotated[mask].astype(int) - before[mask].astype(int)).mean()
        assert gap < 8 < off, (gap, off)


def test_json_with_the_upright_size_gets_the_upright_pixels(tmp_path):
    """labelme and data/convert.py give the size as displayed: then the rotated frame is used."""
    path = tmp_path / "tall.jpg"
    stored = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    cv2.imwrite(str(path), stored)
    _tag(path)
    pixels = _stored(path)
    as_json = Decode()({"im_file": str(path), "h": 60, "w": 40})["image"]
    assert as_json.shape[:2] == (60, 40) and np.array_equal(as_json, np.rot90(pixels, -1))
    assert np.array_equal(Decode()({"im_file": str(path), "h": 40, "w": 60})["image"], pixels)


def test_inference_shows_a_photo_upright(tmp_path):
    path = tmp_path / "photo.jpg"
    cv2.imwrite(str(path), np.random.default_rng(1).integers(0, 256, (40, 60, 3), np.uint8))
    _tag(path)
    assert np.array_equal(read_image(str(path)), np.rot90(_stored(path), -1))


def _coco(tmp_path, width, height):
    (tmp_path / "anno.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": width, "height": height}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10],
                         "area": 100, "iscrowd": 0,
                         "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]}],
        "categories": [{"id": 1, "name": "x"}]}))
    return check_dataset(str(tmp_path / "anno.json"), str(tmp_path), num_threads=1)


@pytest.mark.parametrize("size, json_size, frame", [
    ((32, 32), (32, 32), "as stored"),  # square: the reader cannot tell; the checker says so
    ((40, 60), (60, 40), "as stored"),
    ((40, 60), (40, 60), "upright (EXIF rotation applied)"),
])
def test_checker_warns_about_every_exif_rotated_image(tmp_path, size, json_size, frame):
    cv2.imwrite(str(tmp_path / "a.jpg"), np.full((*size, 3), 100, np.uint8))
    assert _coco(tmp_path, *json_size).warnings == []
    _tag(tmp_path / "a.jpg")
    report = _coco(tmp_path, *json_size)
    assert report.ok and len(report.warnings) == 1
    text = str(report)
    assert f"warning: {tmp_path / 'a.jpg'}: image id 1: EXIF orientation 6" in text
    assert f"training reads it {frame}, the frame of the json's {json_size[0]}x" in text
    assert text.splitlines()[-1].endswith("1 warning(s)")


def test_size_mismatch_names_both_frames(tmp_path):
    cv2.imwrite(str(tmp_path / "a.jpg"), np.full((40, 60, 3), 100, np.uint8))
    _tag(tmp_path / "a.jpg")
    report = _coco(tmp_path, 50, 50)
    assert not report.ok and report.warnings == []
    assert "image is 60x40 (w x h), 40x60 upright (EXIF) but the json says 50x50" in str(report)


def test_exif_orientation_of_a_file_without_one(tmp_path):
    cv2.imwrite(str(tmp_path / "plain.png"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "junk.jpg").write_bytes(b"junk")
    assert exif_orientation(str(tmp_path / "plain.png")) == 1
    assert exif_orientation(str(tmp_path / "junk.jpg")) == 1
