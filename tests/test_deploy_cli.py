"""`mrtdetr deploy` on exported folders (no training config): drawn images, COCO results and
the latency protocol for every CPU run mode; a baked export returns the original frame."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from mrtdetr_lib.cli import main
from mrtdetr_lib.course import course_checkpoint
from mrtdetr_lib.export.deploy import read_infer_cfg

SHAPES = Path(__file__).resolve().parents[1] / "dataset" / "shapes"
CONFIG = Path(course_checkpoint()).with_name("config.yml")
pytestmark = pytest.mark.skipif(not (SHAPES / "val").is_dir(),
                                reason="the shapes data set is not built (make shapes)")


def _export(out, *flags):
    code = main(["export", "-c", str(CONFIG), "-o", f"weights={course_checkpoint()}",
                 f"data.dataset_dir={SHAPES}", "--output_dir", str(out), *flags])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    images = root / "images"
    images.mkdir()
    for path in sorted((SHAPES / "val").iterdir())[:2]:
        shutil.copy(path, images / path.name)
    # another size and aspect than the 224 x 224 the model was exported for
    wide = cv2.resize(cv2.imread(str(images / path.name)), (400, 250))
    cv2.imwrite(str(images / "wide.jpg"), wide)
    return (images, _export(root / "unbaked", "--int8"),
            _export(root / "baked", "--dynamic_batch"))


@pytest.mark.parametrize("run_mode", ["paddle", "ort", "ort_int8", "openvino", "openvino_int8",
                                      "openvino_int8_bf16"])
def test_every_cpu_run_mode_draws_and_writes_coco_results(folders, tmp_path, run_mode, capsys):
    from mrtdetr_lib.export.openvino import bf16_available

    if run_mode.endswith("bf16") and not bf16_available():
        pytest.skip("this CPU has no bfloat16")
    images, unbaked, _ = folders
    out = tmp_path / run_mode
    code = main(["deploy", "--model_dir", str(unbaked), "--image_dir", str(images),
                 "--run_mode", run_mode, "--threshold", "0.5", "--output_dir", str(out)])
    assert code == 0
    assert sorted(p.name for p in out.glob("*.jpg")) == sorted(p.name for p in
                                                              images.iterdir())
    results = json.loads((out / "bbox.json").read_text())
    assert results and {r["image_id"] for r in results} <= {0, 1, 2}
    gt = COCO(str(SHAPES / "instances_val.json"))
    assert {r["category_id"] for r in results} <= set(gt.getCatIds())
    assert all(r["score"] >= 0.5 and len(r["bbox"]) == 4 for r in results)
    assert "COCO results:" in capsys.readouterr().out


def test_infer_cfg_says_what_deploy_needs(folders):
    _, unbaked, baked = folders
    cfg = read_infer_cfg(unbaked)
    assert cfg["eval_size"] == [224, 224] and cfg["baked"] is False and cfg["batch"] == 1
    assert cfg["class_names"] == [c["name"] for c in json.loads(
        (SHAPES / "instances_val.json").read_text())["categories"]]
    assert set(cfg["files"]) == {"paddle", "onnx", "onnx_int8"}
    assert read_infer_cfg(baked)["baked"] is True and read_infer_cfg(baked)["batch"] is None


def test_a_baked_export_returns_boxes_in_the_original_frame(folders, tmp_path):
    """The 400 x 250 image: the baked export (224 x 224 frame) mapped back gives the unbaked
    export's boxes (before, they came out in the 224 frame: off by up to 176 px here)."""
    images, unbaked, baked = folders
    found = {}
    for name, folder, run_mode in (("unbaked", unbaked, "ort"), ("baked", baked, "ort"),
                                   ("baked_paddle", baked, "paddle")):
        assert main(["deploy", "--model_dir", str(folder), "--image_file",
                     str(images / "wide.jpg"), "--run_mode", run_mode,
                     "--output_dir", str(tmp_path / name)]) == 0
        found[name] = json.loads((tmp_path / name / "bbox.json").read_text())
    assert len(found["unbaked"]) > 0
    for name in ("baked", "baked_paddle"):
        assert len(found[name]) == len(found["unbaked"]), name
        for ours, ref in zip(sorted(found[name], key=lambda r: r["bbox"]),
                             sorted(found["unbaked"], key=lambda r: r["bbox"])):
            assert ours["category_id"] == ref["category_id"]
            np.testing.assert_allclose(ours["bbox"], ref["bbox"], atol=0.5)
            assert ours["segmentation"]["size"] == [250, 400]  # the image's height, width


def test_benchmark_line_carries_the_protocol(folders, tmp_path, capsys):
    images, unbaked, _ = folders
    assert main(["deploy", "--model_dir", str(unbaked), "--image_file",
                 str(images / "wide.jpg"), "--run_mode", "openvino", "--run_benchmark",
                 "--output_dir", str(tmp_path)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["run_mode"] == "openvino" and line["runs"] == 10 and line["warmup"] == 2
    assert line["q25_ms"] <= line["median_ms"] <= line["q75_ms"]
    assert {"cpu", "cores", "threads"} <= set(line["machine"])
    assert {"paddlepaddle", "onnxruntime", "openvino"} <= set(line["versions"])


def test_clear_errors(folders, tmp_path, capsys):
    images, unbaked, _ = folders
    image = ["--image_file", str(images / "wide.jpg")]
    assert main(["deploy", "--model_dir", str(unbaked), *image, "--run_mode", "trt_fp16"]) != 0
    assert "trt_fp16 needs an NVIDIA GPU with TensorRT" in capsys.readouterr().err
    assert main(["deploy", "--model_dir", str(tmp_path), *image]) != 0
    assert "infer_cfg.json not found" in capsys.readouterr().err
    assert main(["deploy", "--model_dir", str(unbaked)]) != 0
    assert "give one of --image_file IMAGE or --image_dir FOLDER" in capsys.readouterr().err
