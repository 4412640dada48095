"""TensorRT's optimisation profile for the dynamic-batch export, checked without TensorRT:
which files count as baked, and the TensorRT 10 calls that set the profile."""

import types

import onnx
import pytest
from onnx import TensorProto, helper

from mrtdetr_lib.export import tensorrt


def _graph(tmp_path, batch, mask_dims):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["mask"])], "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("mask", TensorProto.INT32, mask_dims)])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return path


def test_a_symbolic_batch_axis_alone_is_accepted(tmp_path):
    assert tensorrt.check_baked(_graph(tmp_path, "batch", ["n", 8, 8])) is True
    assert tensorrt.check_baked(_graph(tmp_path, 2, [100, 8, 8])) is False
    with pytest.raises(ValueError, match="not a baked export"):
        tensorrt.check_baked(_graph(tmp_path, "batch", ["n", "h", "w"]))


class _Recorder:
    """Stands in for builder, network, config and profile: records the TensorRT calls."""

    def __init__(self):
        self.calls = []
        self.image = types.SimpleNamespace(name="image", shape=(-1, 3, 640, 640))

    def create_optimization_profile(self):
        return self

    def set_shape(self, name, low, opt, high):
        self.calls.append(("set_shape", name, low, opt, high))

    def add_optimization_profile(self, profile):
        self.calls.append(("add_optimization_profile", profile is self))

    def get_input(self, index):
        return self.image


def test_profile_sets_min_opt_max_batch_of_the_image():
    rec = _Recorder()
    shapes = tensorrt.add_profile(rec, rec, rec, (1, 2, 8))
    assert shapes == ([1, 3, 640, 640], [2, 3, 640, 640], [8, 3, 640, 640])
    assert rec.calls == [("set_shape", "image", *shapes), ("add_optimization_profile", True)]
    with pytest.raises(ValueError, match="1 <= min <= opt <= max"):
        tensorrt.add_profile(rec, rec, rec, (2, 1, 8))
