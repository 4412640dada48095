"""One ONNX file for every batch size (`dynamic_batch=True`), and exports that fail whole: a
full disk keeps the earlier export, a wrong opset or a 0..255 image is refused."""

import errno

import numpy as np
import onnx
import paddle
import pytest
from test_export import _eager, assert_same_detections
from test_export import tiny as tiny  # noqa: F401 (a fixture: the same tiny model)

from mrtdetr_lib.export import OnnxPredictor, export_onnx, to_onnx
from mrtdetr_lib.export.openvino import OpenVinoPredictor

SIZE = (256, 256)  # tiny's eval size


def _images(batch, seed=0):
    """`batch` images of the eval size (what a baked export takes), float32 0..1."""
    return np.random.default_rng(seed).random((batch, 3, *SIZE)).astype("float32")


def _full(images):
    return {"image": images, "im_shape": np.array([SIZE] * len(images), "float32"),
            "scale_factor": np.ones((len(images), 2), "float32")}


@pytest.fixture(scope="module")
def exports(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch_free")
    return (export_onnx(tiny, folder, "tiny", dynamic_batch=True),
            export_onnx(tiny, folder, "tiny", batch=2, bake=True))


def test_batch_axis_is_symbolic_after_onnxsim(exports):
    graph = onnx.load(str(exports[0])).graph
    assert [i.name for i in graph.input] == ["image"]  # im_shape/scale_factor baked in
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, *SIZE]
    assert [o.name for o in graph.output] == ["bbox", "bbox_num", "mask"]


@pytest.mark.parametrize("runtime", [OnnxPredictor, OpenVinoPredictor])
def test_one_file_equals_eager_and_the_fixed_batch_export(tiny, exports, runtime):
    dynamic = runtime(exports[0], threads=1)
    for batch in (1, 2, 4):
        images = _images(batch, seed=batch)
        ours, ref = dynamic({"image": images}), _eager(tiny, _full(images))
        assert ours["mask"].shape == (batch * 50, *SIZE) and ours["mask"].dtype == np.int32
        assert ours["bbox_num"].tolist() == [50] * batch
        assert_same_detections(ours, ref, box_atol=1e-2, max_mask_pixels=200)
    fixed = runtime(exports[1], threads=1)
    images = _images(2, seed=2)
    ours, theirs = dynamic({"image": images}), fixed({"image": images})
    np.testing.assert_allclose(ours["bbox"], theirs["bbox"], atol=1e-4)
    assert (ours["mask"] != theirs["mask"]).sum() <= 50  # same graph up to the mask resize


def test_uint8_or_0_255_images_are_refused(exports):
    predictor = OnnxPredictor(exports[0], threads=1)
    with pytest.raises(ValueError, match="dtype uint8.*float32 in 0..1"):
        predictor({"image": (_images(1) * 255).astype("uint8")})
    with pytest.raises(ValueError, match="values reach 25.*divide 0..255 images by 255"):
        predictor({"image": _images(1) * 255})
    with pytest.raises(ValueError, match="dtype uint8"):
        OpenVinoPredictor(exports[0], threads=1)({"image": (_images(1) * 255).astype("uint8")})


def test_an_opset_paddle2onnx_would_change_is_refused(tmp_path):
    with pytest.raises(ValueError, match="opset 7: this model exports at opset 16 or 17"):
        to_onnx(tmp_path, tmp_path / "m.onnx", opset=7)


def test_a_full_disk_keeps_the_earlier_export(tiny, exports, tmp_path, monkeypatch):
    folder = exports[0].parent
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    real_save = paddle.jit.save

    def truncated_save(layer, path, **kwargs):  # what paddle.jit.save did on a full disk
        real_save(layer, path, **kwargs)
        with open(path + ".pdiparams", "r+b") as f:
            f.truncate(1000)
    monkeypatch.setattr(paddle.jit, "save", truncated_save)
    with pytest.raises(OSError, match="model.pdiparams cannot be read back.*disk full"):
        export_onnx(tiny, folder, "tiny", dynamic_batch=True)
    monkeypatch.setattr(paddle.jit, "save", real_save)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(onnx, "save", no_space)
    with pytest.raises(OSError, match="No space left"):
        export_onnx(tiny, folder, "tiny", dynamic_batch=True)
    after = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before  # the earlier export whole, no staging folder left behind
