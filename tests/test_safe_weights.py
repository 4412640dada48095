"""Loading weights never runs pickled code (safe_pickle), on every path that reads a pickle.

A hostile `.pdparams` / `.pdckpt` is a pickle whose `__reduce__` calls `os.system`: it writes a
marker file when unpickled with plain `pickle`. Each path must refuse it, name the file and the
global, and never create the marker; what paddle.save writes must load as paddle.load reads it.
"""

import operator
import os
import pickle
import subprocess
import sys

import numpy as np
import paddle
import pytest

import mrtdetr_lib as mrt
from mrtdetr_lib import safe_pickle
from mrtdetr_lib import weights as W
from mrtdetr_lib.cli import main
from mrtdetr_lib.engine import Trainer
from mrtdetr_lib.engine.checkpoint import read_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "tiny_shapes.yml")


class _Shell:
    """Unpickles as os.system(command)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _ShellThenState:
    """Unpickles as itemgetter(1)((os.system(command), state)): the command runs, then the
    loader gets a real state dict (the payload that gave `mrtdetr infer` exit 0)."""

    def __init__(self, command, state):
        self.command, self.state = command, state

    def __reduce__(self):
        return operator.itemgetter(1), ((_Shell(self.command), self.state),)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from mrtdetr_lib.data.shapes import make_shapes
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(str(root), num_train=2, num_val=1, image_size=96, progress=False)
    return root


@pytest.fixture(scope="module")
def tiny_state():
    paddle.seed(0)
    return {k: v.numpy() for k, v in mrt.build_model("tiny").state_dict().items()}


@pytest.fixture
def hostile(tmp_path, tiny_state):
    """(files, marker): an evil .pdparams, one that also returns the tiny state dict, an evil
    checkpoint; each would create `marker`."""
    marker = tmp_path / "marker"
    command = f"touch {marker}"
    files = {"evil.pdparams": _Shell(command),
             "evil_state.pdparams": _ShellThenState(command, tiny_state),
             "evil.pdckpt": _ShellThenState(command, {"format": "mrtdetr-trainer-v1"})}
    for name, payload in files.items():
        (tmp_path / name).write_bytes(pickle.dumps(payload))
    with open(tmp_path / "evil_state.pdparams", "rb") as f:  # the payload is real: plain
        assert pickle.load(f).keys() == tiny_state.keys()  # pickle runs it and gets weights
    assert marker.exists()
    marker.unlink()
    return {name: tmp_path / name for name in files}, marker


def _refused(path, marker, load, *args, **kwargs):
    """`load(*args, **kwargs)` refuses the hostile `path` before it runs anything."""
    calls = "(posix.system|operator.itemgetter)"  # the first global each payload names
    with pytest.raises(safe_pickle.UnsafePickleError, match=f"{path.name}: it calls {calls}"):
        load(*args, **kwargs)
    assert not marker.exists()


def test_every_library_path_refuses_a_hostile_pickle(hostile, tmp_path):
    files, marker = hostile
    for name in ("evil.pdparams", "evil_state.pdparams"):
        path = files[name]
        _refused(path, marker, W.read_state_dict, path)
        _refused(path, marker, W.load_pretrained, mrt.build_model("tiny"), str(path))
        _refused(path, marker, W.load_backbone, mrt.build_model("tiny"), str(path))
        _refused(path, marker, W.pdparams_to_safetensors, path, tmp_path / "out.safetensors")
        assert not (tmp_path / "out.safetensors").exists()
        _refused(path, marker, read_checkpoint, str(path))


def _trainer(shapes, out, **train):
    cfg = mrt.get_config("tiny")
    cfg.data.dataset_dir, cfg.data.num_workers, cfg.data.batch_size = str(shapes), 0, 2
    cfg.data.train_sizes = [96]
    cfg.train.eval, cfg.train.output_dir = False, str(out)
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return Trainer(cfg, progress=False)


def test_the_trainer_refuses_hostile_weights_and_checkpoints(hostile, shapes, tmp_path):
    files, marker = hostile
    weights = files["evil_state.pdparams"]
    for key in ("pretrain_weights", "backbone_weights"):
        _refused(weights, marker, _trainer, shapes, tmp_path, **{key: str(weights)})
    checkpoint = files["evil.pdckpt"]
    _refused(checkpoint, marker, _trainer, shapes, tmp_path, resume=str(checkpoint))


@pytest.mark.parametrize("argv", [
    ["infer", "-o", "weights={weights}", "--infer_dir", "{shapes}/val"],
    ["eval", "-o", "weights={weights}"],
    ["export", "-o", "weights={weights}"],
    ["train", "-r", "{checkpoint}", "-o", "epochs=1"],
    ["train", "-o", "pretrain_weights={weights}"],
    ["train", "-o", "backbone_weights={weights}"],
])
def test_the_cli_refuses_hostile_files_with_one_line(hostile, shapes, tmp_path, capsys, argv):
    files, marker = hostile
    argv = [arg.format(weights=files["evil_state.pdparams"], checkpoint=files["evil.pdckpt"],
                       shapes=shapes) for arg in argv]
    status = main([argv[0], "-c", CONFIG, *argv[1:], "-o", "num_workers=0", "batch_size=2",
                   f"data.dataset_dir={shapes}", "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status != 0 and "refusing to load" in err and "evil" in err, err
    assert not marker.exists()


def test_the_console_script_exits_non_zero(hostile, shapes, tmp_path):
    files, marker = hostile
    proc = subprocess.run([sys.executable, "-m", "mrtdetr_lib", "infer", "-c", CONFIG, "-o",
                           f"weights={files['evil_state.pdparams']}", "--infer_dir",
                           str(shapes / "val"), "--output_dir", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "evil_state.pdparams" in proc.stderr, proc.stderr[-2000:]
    assert not marker.exists()


# ------------------------------------------------------------ what paddle.save writes still loads
def _same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


@pytest.mark.parametrize("protocol", [2, 4])
def test_paddle_save_files_read_as_paddle_load_reads_them(tmp_path, protocol):
    paddle.seed(1)
    model = mrt.build_model("tiny")
    tensors = tmp_path / "tensors.pdparams"
    paddle.save(model.state_dict(), str(tensors), protocol=protocol)
    arrays = tmp_path / "arrays.pdparams"  # a file written from return_numpy: round trip
    paddle.save(paddle.load(str(tensors), return_numpy=True), str(arrays), protocol=protocol)
    for path in (tensors, arrays):
        _same(W.read_state_dict(path), paddle.load(str(path), return_numpy=True))
    W.load_pretrained(mrt.build_model("tiny"), str(arrays))


def test_older_paddle_layouts_and_numpy_1_pickles(tmp_path):
    """paddle 2.1's (name, array) pairs, paddle 2.0's name table, big tensors split in slices,
    and a pickle written with numpy 1 (module numpy.core): all as paddle.load reads them."""
    a = np.arange(6, dtype="float32").reshape(2, 3)
    layouts = {
        "pairs": {"w": ("linear_0.w_0", a), "b": ("linear_0.b_0", a[0])},
        "table": {"w": a, "StructuredToParameterName@@": {"w": "linear_0.w_0"}},
        "slices": {"w@@.0": a.ravel()[:4], "w@@.1": a.ravel()[4:],
                   "UnpackBigParamInfor@@": {"w": {"OriginShape": (2, 3),
                                                   "slices": ["w@@.0", "w@@.1"]}}},
    }
    for name, state in layouts.items():
        path = tmp_path / f"{name}.pdparams"
        path.write_bytes(pickle.dumps(state, protocol=2))
        _same(W.read_state_dict(path), paddle.load(str(path), return_numpy=True))
        assert np.array_equal(W.read_state_dict(path)["w"], a)
    numpy1 = pickle.dumps({"w": a}, protocol=2).replace(b"numpy._core.multiarray",
                                                         b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in numpy1
    (tmp_path / "numpy1.pdparams").write_bytes(numpy1)
    _same(W.read_state_dict(tmp_path / "numpy1.pdparams"), {"w": a})


def test_a_trainer_checkpoint_reads_as_paddle_load_reads_it(shapes, tmp_path):
    """Model, EMA, optimizer (after a step), scheduler and RNG states: the same values, tensors
    where paddle.load gives tensors."""
    trainer = _trainer(shapes, tmp_path, max_iters=1)
    trainer.train()
    path = trainer.checkpoint_path
    ours, theirs = read_checkpoint(path), paddle.load(path)

    def same(x, y, where):
        assert type(x) is type(y), where
        if isinstance(x, dict):
            assert list(x) == list(y), where
            for key in x:
                same(x[key], y[key], f"{where}.{key}")
        elif isinstance(x, (list, tuple)):
            assert len(x) == len(y), where
            for i, (u, v) in enumerate(zip(x, y)):
                same(u, v, f"{where}[{i}]")
        elif isinstance(x, (paddle.Tensor, np.ndarray)):
            assert np.array_equal(np.asarray(x), np.asarray(y)) and x.dtype == y.dtype, where
        elif isinstance(x, paddle.base.libpaddle.GeneratorState):
            assert x.current_seed() == y.current_seed(), where
        else:
            assert x == y, where
    same(ours, theirs, "checkpoint")
