"""Loader: the model's input contract with 0 and 2 workers, reproducible batches, clear errors."""

import dataclasses

import numpy as np
import paddle
import pytest

import mrtdetr_lib as mrt
from mrtdetr_lib.data import SeededBatchSampler, build_dataset, build_loader
from mrtdetr_lib.data.shapes import make_shapes
from mrtdetr_lib.errors import UserError


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(str(root), num_train=12, num_val=3, image_size=128, progress=False)
    cfg = mrt.get_config("tiny")
    data = dataclasses.replace(cfg.data, dataset_dir=str(root), batch_size=4,
                               train_sizes=[96, 128, 160])
    return dataclasses.replace(cfg, data=data)


def _numpy(batch):
    return {k: [t.numpy() for t in v] if isinstance(v, list) else v.numpy()
            for k, v in batch.items()}


@pytest.mark.parametrize("workers", [0, 2])
def test_train_batches_follow_the_model_input_contract(cfg, workers):
    batches = [_numpy(b) for b in build_loader(cfg, "train", num_workers=workers)]
    assert len(batches) == 3  # 12 images, batch 4, drop_last
    sizes = set()
    for batch in batches:
        image = batch["image"]
        b, c, h, w = image.shape
        sizes.add(h)
        assert (b, c) == (4, 3) and h == w and image.dtype == np.float32
        assert 0 <= image.min() and image.max() <= 1.0
        np.testing.assert_array_equal(batch["im_shape"], [[h, w]] * 4)
        assert batch["scale_factor"].shape == (4, 2) and batch["scale_factor"].dtype == np.float32
        for cls, box, segm in zip(batch["gt_class"], batch["gt_bbox"], batch["gt_segm"]):
            n = len(cls)
            assert cls.shape == (n, 1) and cls.dtype == np.int32 and 0 <= cls.min() <= cls.max() < 4
            assert box.shape == (n, 4) and box.dtype == np.float32
            assert segm.shape == (n, h, w) and segm.dtype == np.uint8
            assert (box[:, 2:] > 0).all() and (box >= 0).all() and (box <= 1.0001).all()
    assert sizes <= {96, 128, 160}


def test_zero_and_two_workers_give_identical_batches(cfg):
    runs = [[_numpy(b) for b in build_loader(cfg, "train", num_workers=w, seed=3)] for w in (0, 2)]
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a["image"], b["image"])
        for x, y in zip(a["gt_segm"], b["gt_segm"]):
            np.testing.assert_array_equal(x, y)


def test_epochs_reshuffle_and_reaugment(cfg):
    loader = build_loader(cfg, "train", num_workers=0)
    first = [b["im_id"].numpy().ravel().tolist() for b in loader]
    second = [b["im_id"].numpy().ravel().tolist() for b in loader]
    assert first != second and sorted(sum(first, [])) != []
    again = [b["im_id"].numpy().ravel().tolist() for b in build_loader(cfg, "train", 0)]
    assert again == first  # a fresh loader starts from epoch 0 with the same seed


@pytest.mark.parametrize("workers", [0, 2])
def test_eval_batches_carry_image_ids_and_original_size(cfg, workers):
    loader = build_loader(cfg, "val", num_workers=workers)
    assert loader.dataset.cat_ids == [1, 2, 3, 4]  # what evaluate() reads from a loader
    batches = list(loader)
    assert len(batches) == 3  # eval_batch_size 1, nothing dropped
    batch = batches[0]
    assert set(batch) == {"image", "im_shape", "scale_factor", "im_id", "orig_size"}
    assert batch["image"].shape == [1, 3, 256, 256] and batch["image"].dtype == paddle.float32
    assert batch["im_id"].shape == [1, 1] and batch["im_id"].dtype == paddle.int64
    np.testing.assert_array_equal(batch["orig_size"].numpy(), [[128, 128]])
    np.testing.assert_allclose(batch["scale_factor"].numpy(), [[2.0, 2.0]])
    assert [b["im_id"].item() for b in batches] == [1, 2, 3]


def test_the_val_data_takes_the_models_eval_size(cfg):
    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, eval_size=(96, 128)))
    assert next(iter(build_loader(other, "val", num_workers=0)))["image"].shape == [1, 3, 96, 128]
    with pytest.raises(UserError, match="the val split needs eval_size"):
        build_dataset(cfg.data, "val")


def test_an_old_data_eval_size_is_accepted_only_as_the_models(tmp_path):
    path = tmp_path / "old.yml"
    path.write_text("preset: tiny\nmodel:\n  eval_size: [160, 160]\ndata:\n"
                    "  eval_size: [160, 160]\n")
    with pytest.warns(FutureWarning, match="data.eval_size is deprecated"):
        cfg = mrt.load_config(str(path))
    assert cfg.model.eval_size == (160, 160) and not hasattr(cfg.data, "eval_size")
    path.write_text("preset: tiny\ndata:\n  eval_size: [320, 320]\n")
    with pytest.raises(UserError, match=r"data.eval_size \[320, 320\] differs from "
                                        r"model.eval_size \[256, 256\]"):
        mrt.load_config(str(path))


def test_bad_split_and_too_few_images(cfg):
    with pytest.raises(ValueError, match="split must be"):
        build_dataset(cfg.data, "test")
    big = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=64))
    with pytest.raises(ValueError, match="fewer than one batch of data.batch_size=64"):
        build_loader(big, "train")


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_error_names_the_file(cfg, tmp_path, workers):
    import shutil

    root = tmp_path / "shapes"
    shutil.copytree(cfg.data.dataset_dir, root)
    (root / "val" / "000001.jpg").write_bytes(b"\xff\xd8 broken")
    bad = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dataset_dir=str(root)))
    with pytest.raises(UserError, match=r"cannot decode image .*000001\.jpg \(image id 2\)"):
        list(build_loader(bad, "val", num_workers=workers))


class _BuggyTransform:
    """A transform with a bug: its traceback must reach the caller, naming where it failed."""

    def __call__(self, sample, rng=None):
        return {**sample, "image": sample["image"][:, :, :, None].squeeze(7)}


@pytest.mark.parametrize("workers", [0, 2])
def test_a_bug_in_a_transform_keeps_its_traceback(cfg, workers):
    dataset = build_dataset(cfg.data, "val", cfg.model.eval_size)
    dataset.transforms.insert(1, _BuggyTransform())
    with pytest.raises(RuntimeError) as caught:
        list(build_loader(cfg, "val", num_workers=workers, dataset=dataset))
    text = str(caught.value)
    assert not isinstance(caught.value, UserError)
    assert "Traceback (most recent call last)" in text and "test_data_loader.py" in text
    assert "in __call__" in text and "squeeze(7)" in text  # the line of the bug


def test_more_categories_than_classes_is_refused(cfg):
    few = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=2))
    with pytest.raises(UserError, match=r"instances_train\.json has 4 categories, more than "
                                        r"model\.num_classes=2"):
        build_loader(few, "train")


def test_sampler_is_a_function_of_seed_and_epoch():
    a, b = SeededBatchSampler(10, 3, seed=1), SeededBatchSampler(10, 3, seed=1)
    epochs_a, epochs_b = [list(a) for _ in range(2)], [list(b) for _ in range(2)]
    assert epochs_a == epochs_b and epochs_a[0] != epochs_a[1]
    assert len(a) == 3 and all(len(batch) == 3 for batch in epochs_a[0])
    keys = SeededBatchSampler(10, 3, shuffle=False, drop_last=False)
    assert [i for batch in keys for i, _ in batch] == list(range(10)) and len(keys) == 4
