"""Predictor: the evaluation preprocessing, thresholding, any backend callable, drawings."""

import cv2
import numpy as np
import pytest

import mrtdetr_lib as mrt
from mrtdetr_lib.data import build_dataset, preprocess, read_image
from mrtdetr_lib.data.shapes import make_shapes
from mrtdetr_lib.infer import Predictor, list_images, to_instances


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(str(root), num_train=4, num_val=3, image_size=200, progress=False)
    return root


def test_preprocess_is_the_eval_data_pipeline(shapes):
    cfg = mrt.get_config("tiny")
    cfg.data.dataset_dir = str(shapes)
    sample = build_dataset(cfg.data, "val", cfg.model.eval_size)[0]
    inputs = preprocess(read_image(sample["im_file"]), cfg.model.eval_size)
    np.testing.assert_array_equal(inputs["image"][0], sample["image"])  # [3, 256, 256]
    np.testing.assert_array_equal(inputs["im_shape"][0], [256, 256])
    np.testing.assert_allclose(inputs["scale_factor"][0], [256 / 200, 256 / 200])


def test_threshold_and_backend_callable():
    h0, w0 = 30, 40
    masks = np.zeros((3, h0, w0), np.int32)
    masks[0, :10, :10] = 1
    outputs = {"bbox": np.array([[2, 0.9, 1, 2, 10, 10], [0, 0.6, 5, 5, 20, 25],
                                 [1, 0.2, 0, 0, 3, 3]], np.float32),
               "bbox_num": np.array([3], np.int32), "mask": masks}
    calls = []

    def exported_model(inputs):  # e.g. an ONNX Runtime session: numpy in, numpy out
        calls.append({k: v.shape for k, v in inputs.items()})
        return outputs

    predictor = Predictor(exported_model, threshold=0.5, image_size=(64, 64))
    found = predictor(np.zeros((h0, w0, 3), np.uint8))
    assert calls == [{"image": (1, 3, 64, 64), "im_shape": (1, 2), "scale_factor": (1, 2)}]
    np.testing.assert_array_equal(found["labels"], [2, 0])
    np.testing.assert_allclose(found["scores"], [0.9, 0.6])
    np.testing.assert_allclose(found["boxes"][1], [5, 5, 20, 25])
    assert found["masks"].dtype == bool and found["masks"].shape == (2, h0, w0)
    assert found["masks"][0].sum() == 100


def test_to_instances_reads_bbox_num_rows_and_keeps_the_masks_dtype():
    masks = np.stack([np.full((4, 5), v, np.float32) for v in (0.9, 0.4, 0.7)])  # probabilities
    outputs = {"bbox": np.array([[1, 0.8, 0, 0, 2, 2], [0, 0.3, 1, 1, 3, 3],
                                 [-1, 0.9, 0, 0, 0, 0]], np.float32),  # row 3: past bbox_num
               "bbox_num": np.array([2], np.int32), "mask": masks}
    every = to_instances(outputs)
    assert every["labels"].tolist() == [1, 0] and every["labels"].dtype == np.int64
    assert every["masks"].dtype == np.float32 and every["masks"][:, 0, 0].tolist() == [
        pytest.approx(0.9), pytest.approx(0.4)]
    confident = to_instances(outputs, score_threshold=0.5)
    assert confident["boxes"].tolist() == [[0, 0, 2, 2]] and len(confident["masks"]) == 1


def test_library_model_gives_masks_at_the_original_size(shapes):
    model = mrt.build_model("tiny")
    predictor = Predictor(model, threshold=0.0, image_size=(256, 256))
    path = list_images(infer_dir=str(shapes / "val"))[0]
    found = predictor(path)
    n = mrt.model_config("tiny").num_top_queries
    assert found["boxes"].shape == (n, 4) and found["masks"].shape == (n, 200, 200)
    assert set(np.unique(found["labels"])) <= set(range(4))


def test_list_images_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images"):
        list_images(infer_dir=str(tmp_path))
    with pytest.raises(NotADirectoryError, match="not a folder"):
        list_images(infer_dir=str(tmp_path / "nope"))
    (tmp_path / "b.png").write_bytes(b"")
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    assert [p.rsplit("/", 1)[1] for p in list_images(infer_dir=str(tmp_path))] == ["a.jpg",
                                                                                 "b.png"]


def test_save_drawings_writes_one_image_per_input(shapes, tmp_path):
    predictor = Predictor(mrt.build_model("tiny"), threshold=0.0, image_size=(256, 256),
                          class_names=["circle", "square", "triangle", "star"])
    images = list_images(infer_dir=str(shapes / "val"))
    results = list(predictor.save_drawings(images, str(tmp_path / "out")))
    assert len(results) == 3
    for path, saved, _ in results:
        drawn = cv2.imread(saved)
        assert drawn.shape == (200, 200, 3)
        assert not np.array_equal(drawn[..., ::-1], read_image(path))  # something was drawn
