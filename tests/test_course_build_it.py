"""course/build_it.compare: a stub, a wrong shape, a wrong value and a right answer."""

import numpy as np
import paddle

from mrtdetr_lib.course.build_it import compare


def _reference(x):
    return paddle.to_tensor(x) * 2


CASES = [(np.arange(6, dtype="float32").reshape(2, 3),), (np.ones((4, 3), "float32"),)]


def test_a_stub_is_reported_not_raised(capsys):
    def stub(x):
        raise NotImplementedError

    assert compare(stub, _reference, CASES, "double") is False
    assert "double: not written yet" in capsys.readouterr().out


def test_a_wrong_shape_and_a_wrong_value_are_named(capsys):
    assert compare(lambda x: (x * 2).sum(0), _reference, CASES, "double") is False
    assert "case 0 gives shape [3], the library [2, 3]" in capsys.readouterr().out
    assert compare(lambda x: x * 2 + 1e-3, _reference, CASES, "double") is False
    assert "differs from the library by up to 0.001" in capsys.readouterr().out


def test_a_right_answer_passes_within_the_tolerance(capsys):
    assert compare(lambda x: x + x, _reference, CASES, "double") is True
    assert "the library's answer on each of the 2 cases" in capsys.readouterr().out
    assert compare(lambda x: x * 2 + 1e-7, _reference, CASES, "double", atol=1e-6) is True
