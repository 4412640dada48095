"""Converters (data/convert.py, data_scripts/x2coco.py): files the tools wrote, round trips.

LabelMe: tests/fixtures/labelme/ was written by labelme 6.3.1's own `LabelFile.save`, with its
own rasterisation of the shapes beside it (make_fixtures.py there). YOLO: label lines written as
ultralytics' `convert_coco` writes them (`("%g " * len(row)).rstrip() % row`: class first, then
the normalised x y pairs, space-separated, %g's 6 significant digits). Masks: palette PNGs as
VOC ships them (0 background, 255 void border, k = instance k / class k).
"""

import json
import shutil
from pathlib import Path

import conftest
import numpy as np
import pytest
from PIL import Image

from mrtdetr_lib.data import COCOInstanceDataset, segmentation_to_mask
from mrtdetr_lib.data.check import check_dataset
from mrtdetr_lib.data.convert import convert, read_class_names, read_index_png
from mrtdetr_lib.data.shapes import CLASSES, render_image
from mrtdetr_lib.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures" / "labelme"


def x2coco(*args):
    return conftest.load_script("data_scripts", "x2coco").main([str(a) for a in args])


def load(out, split="train"):
    data = json.loads((out / "annotations" / f"instance_{split}.json").read_text())
    images = {im["id"]: im for im in data["images"]}
    for ann in data["annotations"]:
        im = images[ann["image_id"]]
        ann["mask"] = segmentation_to_mask(ann["segmentation"], im["height"], im["width"])
    return data


def assert_loads(out, split="train", num_categories=None):
    """The output passes the checker and loads in the training data set."""
    anno = str(out / "annotations" / f"instance_{split}.json")
    report = check_dataset(anno, str(out / split), num_threads=1)
    assert report.ok, str(report)
    dataset = COCOInstanceDataset(str(out / split), anno, allow_empty=True)
    if num_categories is not None:
        assert len(dataset.cat_ids) == num_categories
    return dataset


def grow(mask):
    """The mask and its 4-neighbours: one pixel more all round."""
    padded = np.pad(mask, 1)
    return (padded[1:-1, 1:-1] | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2]
            | padded[1:-1, 2:])


def labelme_copy(tmp_path):
    src = tmp_path / "labelme"
    shutil.copytree(FIXTURES, src, ignore=shutil.ignore_patterns("*.py", "scene_*.png"))
    return src


# ---------------------------------------------------------------- labelme
def test_labelme_files_written_by_labelme(tmp_path, capsys):
    out = tmp_path / "out"
    assert x2coco("--dataset_type", "labelme", "--json_input_dir", FIXTURES, "--output_dir", out,
                  "--labels", FIXTURES / "labels.txt") == 0
    assert "train: 2 images, 8 annotations" in capsys.readouterr().out
    data = load(out)
    # labels.txt fixes the order (dog before cat); __ignore__ and _background_ are no category
    assert [(c["id"], c["name"]) for c in data["categories"]] == [(1, "dog"), (2, "cat")]
    scene = next(im["id"] for im in data["images"] if im["file_name"] == "scene.png")
    anns = [a for a in data["annotations"] if a["image_id"] == scene]
    objects = [a for a in anns if not a["iscrowd"]]
    assert [a["category_id"] for a in objects] == [2, 1, 2, 1, 2]  # shape order, group joined
    # labelme's own masks of the same file: instance k+1 is the k-th object, 6 the ignore region
    reference = np.asarray(Image.open(FIXTURES / "scene_instances.png"))
    for k, ann in enumerate(objects, 1):
        theirs = reference == k
        if k == 4:  # the mask shape: its PNG is the mask, pixel for pixel
            assert isinstance(ann["segmentation"], dict)
            np.testing.assert_array_equal(ann["mask"], theirs)
        else:  # polygons: PIL puts pixel centres on whole coordinates and paints the outline,
            # pycocotools half a pixel further: they differ by a pixel, two at sharp corners
            assert isinstance(ann["segmentation"], list)
            ours = ann["mask"].astype(bool)
            assert not (ours & ~grow(theirs)).any() and not (theirs & ~grow(grow(ours))).any(), k
            assert (ours & theirs).sum() / (ours | theirs).sum() > 0.7  # small shapes
        assert ann["area"] == ann["mask"].sum()  # from the mask, not the box
        ys, xs = np.nonzero(ann["mask"])
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert len(objects[4]["segmentation"]) == 2  # group_id 1: one cat of two polygons
    crowd = [a for a in anns if a["iscrowd"]]
    assert sorted(a["category_id"] for a in crowd) == [1, 2]  # the ignore region, per category
    for ann in crowd:
        assert isinstance(ann["segmentation"], dict)
        assert (ann["mask"] == (reference == 6)).mean() > 0.95
    # imageData embedded, image file absent: the bytes are the image
    embedded = json.loads((FIXTURES / "embedded.json").read_text())
    written = np.asarray(Image.open(out / "train" / "embedded.png"))
    original = np.asarray(Image.open(FIXTURES / "scene.png"))
    assert not (FIXTURES / "embedded.png").exists() and embedded["imageData"]
    np.testing.assert_array_equal(written, original[::-1])
    dataset = assert_loads(out, num_categories=2)
    # the loader leaves the crowd regions out of the targets
    record = next(r for r in dataset.records if r["im_file"].endswith("scene.png"))
    assert record["gt_class"].ravel().tolist() == [1, 0, 1, 0, 1]


def test_labelme_without_labels_file_sorts_the_names(tmp_path):
    out = tmp_path / "out"
    convert("labelme", str(FIXTURES), None, str(out))
    assert [(c["id"], c["name"]) for c in load(out)["categories"]] == [(1, "cat"), (2, "dog")]


def test_labelme_image_found_in_image_dir(tmp_path):
    src = labelme_copy(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    (src / "scene.png").rename(images / "scene.png")
    data = json.loads((src / "scene.json").read_text())
    data["imagePath"] = "..\\somewhere\\scene.png"  # a path from another (Windows) machine
    (src / "scene.json").write_text(json.dumps(data))
    convert("labelme", str(src), str(images), str(tmp_path / "out"))
    assert (tmp_path / "out" / "train" / "scene.png").is_file()


def edit_shape(tmp_path, **changes):
    """The labelme fixture with scene.json's first shape changed; the converter's error."""
    src = labelme_copy(tmp_path)
    data = json.loads((src / "scene.json").read_text())
    data["shapes"][0].update(changes)
    (src / "scene.json").write_text(json.dumps(data))
    with pytest.raises(UserError) as err:
        convert("labelme", str(src), None, str(tmp_path / "out"), labels=str(src / "labels.txt"))
    assert not (tmp_path / "out").exists()  # nothing written
    lines = str(err.value).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{src / 'scene.json'}: "), lines[0]
    return lines[0]


def test_labelme_bad_shapes_name_file_and_shape(tmp_path):
    line = edit_shape(tmp_path / "a", points=[[2, 2], [20, 3]])
    assert "shape 0 (polygon 'cat'): has 2 points, a polygon needs at least 3" in line
    line = edit_shape(tmp_path / "b", points=[[2, 2], [20, 3], [12, 60]])
    assert "shape 0 (polygon 'cat'): point (12, 60) is outside the 64x48 image" in line
    line = edit_shape(tmp_path / "c", label="cow")
    assert "label 'cow' is not in the labels file" in line
    line = edit_shape(tmp_path / "d", shape_type="line")
    assert "shape 0 (line 'cat'): has no area" in line
    line = edit_shape(tmp_path / "e", points=[[2, 2], [2, 2], [2, 2]])
    assert "object 'cat' covers no pixel" in line


def test_labelme_bad_files_and_exit_status(tmp_path, capsys):
    src = labelme_copy(tmp_path)
    (src / "broken.json").write_text("{not json")
    data = json.loads((src / "scene.json").read_text())
    data["imagePath"] = "gone.png"
    (src / "scene.json").write_text(json.dumps(data))
    assert x2coco("--dataset_type", "labelme", "--json_input_dir", src,
                  "--output_dir", tmp_path / "out") == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert err[0].startswith(f"{src / 'broken.json'}: not readable json")
    assert err[1].startswith(f"{src / 'scene.json'}: image not found")
    # PaddleDetection's exits 0 on a missing folder
    assert x2coco("--dataset_type", "labelme", "--json_input_dir", tmp_path / "nowhere",
                  "--output_dir", tmp_path / "out") == 1
    assert "--json_input_dir is not a folder" in capsys.readouterr().err
    assert x2coco("--dataset_type", "labelme", "--json_input_dir", src, "--output_dir",
                  tmp_path / "out", "--train_proportion", "0.9", "--val_proportion", "0.2") == 1
    assert "must be >= 0 and sum to 1" in capsys.readouterr().err


# ---------------------------------------------------------------- split, empty images
def write_labelme(folder, count):
    """`count` labelme files, one square each, except every third image: no shape."""
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (32, 32)).save(folder / f"{i:03d}.png")
        shapes = [] if i % 3 == 2 else [{"label": "box", "points": [[4, 4], [20, 20]],
                                         "shape_type": "rectangle", "group_id": None}]
        (folder / f"{i:03d}.json").write_text(json.dumps(
            {"shapes": shapes, "imagePath": f"{i:03d}.png", "imageData": None,
             "imageHeight": 32, "imageWidth": 32}))


def split_names(out):
    return {split: sorted(im["file_name"] for im in load(out, split)["images"])
            for split in ("train", "val", "test")}


def test_split_is_seeded_and_ignores_listing_order(tmp_path, monkeypatch):
    import os

    write_labelme(tmp_path / "src", 30)
    args = ("labelme", str(tmp_path / "src"), None)
    counts = convert(*args, str(tmp_path / "a"), (0.6, 0.2, 0.2), seed=3)
    assert counts == {"train": (12, 12), "val": (4, 4), "test": (4, 4)}  # 20 with an object
    listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda path: listdir(path)[::-1])
    convert(*args, str(tmp_path / "b"), (0.6, 0.2, 0.2), seed=3)
    convert(*args, str(tmp_path / "c"), (0.6, 0.2, 0.2), seed=4)
    assert split_names(tmp_path / "a") == split_names(tmp_path / "b")
    assert split_names(tmp_path / "a") != split_names(tmp_path / "c")
    names = split_names(tmp_path / "a")
    assert sorted(sum(names.values(), [])) == [f"{i:03d}.png" for i in range(30) if i % 3 != 2]
    assert sorted((tmp_path / "a" / "val").iterdir()) == sorted(
        tmp_path / "a" / "val" / n for n in names["val"])


def test_keep_empty_keeps_images_without_objects(tmp_path):
    write_labelme(tmp_path / "src", 6)
    assert convert("labelme", str(tmp_path / "src"), None, str(tmp_path / "out"),
                   keep_empty=True) == {"train": (6, 4)}
    dataset = assert_loads(tmp_path / "out")
    assert len(dataset) == 6


# ---------------------------------------------------------------- yolo_seg
def shapes_images(folder, count, size=96):
    """Shapes images (mrtdetr_lib.data.shapes) as JPEG/PNG files; their objects per image."""
    folder.mkdir(parents=True)
    objects = {}
    for i in range(count):
        image, objs = render_image(np.random.default_rng([7, i]), size)
        Image.fromarray(image).save(folder / f"{i:03d}.png")
        objects[f"{i:03d}"] = objs
    return objects


def ultralytics_line(row):
    """One label line exactly as ultralytics' convert_coco writes it."""
    return ("%g " * len(row)).rstrip() % tuple(row)


def test_yolo_seg_round_trip(tmp_path):
    size = 96
    objects = shapes_images(tmp_path / "images", 6, size)
    (tmp_path / "labels").mkdir()
    expected = {}
    for stem, objs in objects.items():
        polygons = [(o["category_id"] - 1, o["segmentation"][0]) for o in objs
                    if isinstance(o["segmentation"], list)]  # whole shapes: their polygon
        lines = [ultralytics_line([cls] + (np.asarray(p) / size).tolist()) for cls, p in polygons]
        (tmp_path / "labels" / f"{stem}.txt").write_text("".join(f"{line}\n" for line in lines))
        expected[f"{stem}.png"] = [(cls + 1, segmentation_to_mask([p], size, size))
                                   for cls, p in polygons]
    (tmp_path / "data.yaml").write_text("path: .\ntrain: images\nnames:\n" + "".join(
        f"  {k}: {name}\n" for k, name in enumerate(CLASSES)))
    out = tmp_path / "out"
    assert x2coco("--dataset_type", "yolo_seg", "--json_input_dir", tmp_path / "labels",
                  "--image_input_dir", tmp_path / "images", "--labels", tmp_path / "data.yaml",
                  "--output_dir", out, "--keep_empty") == 0
    data = load(out)
    assert [c["name"] for c in data["categories"]] == list(CLASSES)
    by_image = {im["id"]: im["file_name"] for im in data["images"]}
    for name, wanted in expected.items():
        got = [(a["category_id"], a["mask"]) for a in data["annotations"]
               if by_image[a["image_id"]] == name]
        assert [c for c, _ in got] == [c for c, _ in wanted]
        for (_, mask), (_, want) in zip(got, wanted):
            iou = (mask & want).sum() / (mask | want).sum()
            assert iou > 0.98, (name, iou)
    assert_loads(out, num_categories=4)


def test_yolo_class_names_files(tmp_path):
    (tmp_path / "classes.txt").write_text("cat\ndog\n\n")
    (tmp_path / "list.yaml").write_text("names: [cat, dog]\n")
    (tmp_path / "gap.yaml").write_text("names: {0: cat, 2: dog}\n")
    assert read_class_names(str(tmp_path / "classes.txt")) == ["cat", "dog"]
    assert read_class_names(str(tmp_path / "list.yaml")) == ["cat", "dog"]
    with pytest.raises(UserError, match="keys \\[0, 2\\] are not 0..1"):
        read_class_names(str(tmp_path / "gap.yaml"))


def test_yolo_bad_lines_name_file_and_line(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.new("RGB", (40, 20)).save(tmp_path / "images" / "a.jpg")
    (tmp_path / "labels" / "a.txt").write_text(
        "0 0.1 0.1 0.5 0.1 0.5\n"  # odd count
        "3 0.1 0.1 0.5 0.1 0.5 0.5\n"  # class out of range
        "1 0.5 0.5 0.2 0.2\n"  # a detection box line
        "0 0.1 0.1 1.5 0.1 0.5 0.5\n"  # outside the image
        "1 0.1 0.1 0.5 0.1 0.5 0.5\n")  # fine
    (tmp_path / "labels" / "orphan.txt").write_text("")
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(UserError) as err:
        convert("yolo_seg", str(tmp_path / "labels"), str(tmp_path / "images"),
                str(tmp_path / "out"), labels=str(tmp_path / "classes.txt"))
    label = tmp_path / "labels" / "a.txt"
    assert str(err.value).splitlines() == [
        f"{label}: line 1: has 5 coordinates, an odd number",
        f"{label}: line 2: class '3' is not one of 0..1",
        f"{label}: line 3: has 2 points, a polygon needs at least 3 (`class cx cy w h` is a YOLO "
        "detection box, not a yolo_seg polygon)",
        f"{label}: line 4: point (60, 2) is outside the 40x20 image",
        f"{tmp_path / 'labels' / 'orphan.txt'}: no image orphan.* in {tmp_path / 'images'}"]


# ---------------------------------------------------------------- masks
def voc_palette():
    """VOC's colour map (the bit-interleaved one its PNGs carry), flat RGB for 256 entries."""
    palette = []
    for k in range(256):
        rgb, bits = [0, 0, 0], k
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((bits >> channel) & 1) << shift
            bits >>= 3
        palette += rgb
    return palette


def save_palette_png(array, path):
    image = Image.fromarray(array.astype(np.uint8), mode="L")
    image.putpalette(voc_palette())
    assert image.mode == "P"
    image.save(path)


def test_masks_round_trip_with_void_borders(tmp_path):
    size = 96
    objects = shapes_images(tmp_path / "JPEGImages", 5, size)
    for folder in ("SegmentationObject", "SegmentationClass"):
        (tmp_path / folder).mkdir()
    expected = {}
    for stem, objs in objects.items():
        ids, classes = np.zeros((size, size), np.uint8), np.zeros((size, size), np.uint8)
        inner = []
        for k, obj in enumerate(objs, 1):
            mask = segmentation_to_mask(obj["segmentation"], size, size).astype(bool)
            ids[mask], classes[mask] = k, obj["category_id"]
            shrunk = np.pad(mask, 1)
            shrunk = shrunk[1:-1, 1:-1] & shrunk[:-2, 1:-1] & shrunk[2:, 1:-1] & \
                shrunk[1:-1, :-2] & shrunk[1:-1, 2:]
            inner.append((obj["category_id"], shrunk))
        border = (ids > 0) & ~np.logical_or.reduce([m for _, m in inner])
        ids[border], classes[border] = 255, 255  # VOC's void band along each object's edge
        save_palette_png(ids, tmp_path / "SegmentationObject" / f"{stem}.png")
        save_palette_png(classes, tmp_path / "SegmentationClass" / f"{stem}.png")
        expected[f"{stem}.png"] = [(c, m) for c, m in inner if m.any()]
    (tmp_path / "class_names.txt").write_text("background\n" + "\n".join(CLASSES) + "\n")
    # a palette PNG's pixels are indices; an RGB reader (cv2.imread) would see the colours
    some_ids = read_index_png(str(tmp_path / "SegmentationObject" / "000.png"))
    assert some_ids.dtype == np.uint8 and some_ids.max() == 255
    out = tmp_path / "out"
    assert x2coco("--dataset_type", "masks", "--json_input_dir", tmp_path / "SegmentationObject",
                  "--class_input_dir", tmp_path / "SegmentationClass", "--image_input_dir",
                  tmp_path / "JPEGImages", "--labels", tmp_path / "class_names.txt",
                  "--output_dir", out) == 0
    data = load(out)
    assert [(c["id"], c["name"]) for c in data["categories"]] == list(enumerate(CLASSES, 1))
    by_image = {im["id"]: im["file_name"] for im in data["images"]}
    for name, wanted in expected.items():
        got = [(a["category_id"], a["mask"].astype(bool)) for a in data["annotations"]
               if by_image[a["image_id"]] == name]
        assert [c for c, _ in got] == [c for c, _ in wanted]
        for (_, mask), (_, want) in zip(got, wanted):
            np.testing.assert_array_equal(mask, want)  # the void border is part of no object
    assert_loads(out, num_categories=4)


def test_masks_bad_inputs(tmp_path):
    for folder in ("images", "objects", "classes"):
        (tmp_path / folder).mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.jpg")
    Image.new("RGB", (8, 8), (128, 0, 0)).save(tmp_path / "objects" / "a.png")
    ids = np.zeros((8, 8), np.uint8)
    ids[2:5, 2:5] = 1
    save_palette_png(ids, tmp_path / "objects" / "b.png")
    save_palette_png(ids, tmp_path / "objects" / "c.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "c.jpg")
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    with pytest.raises(UserError, match="line 0 is 'cat'; it names class value 0"):
        convert("masks", str(tmp_path / "objects"), str(tmp_path / "images"),
                str(tmp_path / "out"), labels=str(tmp_path / "names.txt"),
                class_input_dir=str(tmp_path / "classes"))
    (tmp_path / "names.txt").write_text("__ignore__\n_background_\ncat\n")  # labelme2voc's
    with pytest.raises(UserError) as err:
        convert("masks", str(tmp_path / "objects"), str(tmp_path / "images"),
                str(tmp_path / "out"), labels=str(tmp_path / "names.txt"),
                class_input_dir=str(tmp_path / "classes"))
    assert str(err.value).splitlines() == [
        f"{tmp_path / 'objects' / 'a.png'}: is a RGB image, not a palette or grayscale id image",
        f"{tmp_path / 'objects' / 'b.png'}: no image b.* in {tmp_path / 'images'}",
        f"{tmp_path / 'objects' / 'c.png'}: no class image c.png in {tmp_path / 'classes'}"]


def test_masks_without_class_images_are_one_class(tmp_path):
    for folder in ("images", "objects"):
        (tmp_path / folder).mkdir()
    Image.new("RGB", (10, 8)).save(tmp_path / "images" / "a.png")
    ids = np.zeros((8, 10), np.uint16)
    ids[1:4, 1:4], ids[5:8, 2:9] = 255, 300  # 16-bit ids: 255 is an instance, not the border
    Image.fromarray(ids).save(tmp_path / "objects" / "a.png")
    (tmp_path / "names.txt").write_text("background\nnucleus\n")
    convert("masks", str(tmp_path / "objects"), str(tmp_path / "images"), str(tmp_path / "out"),
            labels=str(tmp_path / "names.txt"))
    data = load(tmp_path / "out")
    assert data["categories"] == [{"id": 1, "name": "nucleus", "supercategory": ""}]
    assert [a["area"] for a in data["annotations"]] == [9, 21]
