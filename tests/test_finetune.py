"""Fine-tuning on your own classes: pretrain_weights names (course, official sizes), class tensors
re-initialised with one report line, background-only images reaching the loss, and the trainer's
warnings on collapsed predictions and an AP stuck at 0."""

import json
import warnings

import numpy as np
import paddle
import pytest

import mrtdetr_lib as mrt
from mrtdetr_lib import weights as W
from mrtdetr_lib.config import load_config
from mrtdetr_lib.data import build_dataset, build_loader
from mrtdetr_lib.data.shapes import make_shapes
from mrtdetr_lib.engine import Trainer
from mrtdetr_lib.engine.diagnose import collapse_problem, stuck_problem
from mrtdetr_lib.engine.trainer import _Health
from mrtdetr_lib.loss.criterion import build_criterion

SIZE = 128


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """6 train / 2 val shapes images at 128 px."""
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(str(root), num_train=6, num_val=2, image_size=SIZE, progress=False)
    return root


def _keep_classes(root, out, keep, empty_images=()):
    """A copy of a shapes data set with only the categories `keep` (ids) and the annotations of
    `empty_images` (image ids) removed; the image folders are links to the original's."""
    out.mkdir(exist_ok=True)
    for split in ("train", "val"):
        (out / split).symlink_to(root / split)
        data = json.loads((root / f"instances_{split}.json").read_text())
        data["categories"] = [c for c in data["categories"] if c["id"] in keep]
        data["annotations"] = [a for a in data["annotations"] if a["category_id"] in keep
                               and a["image_id"] not in empty_images]
        (out / f"instances_{split}.json").write_text(json.dumps(data))
    return out


def _course_cfg(root, out, num_classes, **data):
    """The course checkpoint's own config (its model), on `root`, for `num_classes` classes."""
    cfg = load_config(str(W.COURSE_CHECKPOINT.parent / "config.yml"))
    cfg.model.num_classes, cfg.model.eval_size = num_classes, (SIZE, SIZE)
    cfg.data.dataset_dir, cfg.data.num_workers, cfg.data.batch_size = str(root), 0, 2
    cfg.data.train_sizes = [SIZE]
    cfg.train.output_dir, cfg.train.log_iter, cfg.train.pretrain_weights = str(out), 1, "course"
    for key, value in data.items():
        setattr(cfg.data, key, value)
    return cfg


def test_pretrain_weights_names_resolve_without_the_course_package():
    assert W.resolve("course") == W.COURSE_CHECKPOINT and W.COURSE_CHECKPOINT.is_file()
    from mrtdetr_lib.course import course_checkpoint
    assert course_checkpoint() == W.COURSE_CHECKPOINT  # one file, two ways to name it
    with pytest.raises(FileNotFoundError, match="a path, a URL, course or one of s, m, l"):
        W.resolve("coarse")


def test_course_checkpoint_fine_tunes_on_three_classes(shapes, tmp_path, capsys):
    """RT-DETR #305: 4-class weights for a 3-class model. The trainer keeps every tensor of the
    file but the class ones, which stay at the fresh model's init, and says so in one line."""
    root = _keep_classes(shapes, tmp_path / "three", keep={1, 2, 3})
    cfg = _course_cfg(root, tmp_path / "out", num_classes=3)
    trainer = Trainer(cfg, progress=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if "tensors from" in line]
    loaded = W.read_state_dict(W.COURSE_CHECKPOINT)
    assert lines == [f"loaded {len(loaded) - 3} tensors from {W.COURSE_CHECKPOINT}; "
                     "re-initialised for 3 classes (file has 4): "
                     "transformer.denoising_class_embed.weight, transformer.score_head.weight, "
                     "transformer.score_head.bias"]
    paddle.seed(cfg.train.seed)  # the Trainer seeds, then builds: the same fresh model
    fresh = mrt.build_model(cfg.model).state_dict()
    state = trainer.model.state_dict()
    for name, value in state.items():
        expected = fresh[name].numpy() if name in W.CLASS_DEPENDENT else loaded[name]
        np.testing.assert_array_equal(value.numpy(), expected, err_msg=name)
    assert state["transformer.score_head.bias"].shape == [3]
    trainer.cfg.train.max_iters = 1
    assert np.isfinite(trainer.train()["steps"])  # and it trains


def test_weights_of_another_model_still_fail_with_every_difference(shapes, tmp_path):
    cfg = mrt.get_config("tiny")
    cfg.model.encoder_dim_feedforward = 64  # not the checkpoint's: more than class tensors differ
    cfg.data.dataset_dir, cfg.train.pretrain_weights = str(shapes), "course"
    cfg.train.output_dir = str(tmp_path)
    with pytest.raises(W.WeightsMismatchError, match="mis-shaped") as err:
        Trainer(cfg, progress=False)
    assert str(W.COURSE_CHECKPOINT) in str(err.value)


def _empty_image_batch(shapes, tmp_path, empty_images):
    """A batch of the first two train images from the real data set and loader, the images in
    `empty_images` without objects (allow_empty)."""
    root = _keep_classes(shapes, tmp_path / "empty", keep={1, 2, 3, 4}, empty_images=empty_images)
    cfg = _course_cfg(root, tmp_path / "out", num_classes=4, allow_empty=True, max_images=2)
    data = build_dataset(cfg.data, "train")
    loader = build_loader(cfg, "train", dataset=data)
    return cfg, next(iter(loader))


@pytest.mark.parametrize("empty_images", [{1}, {1, 2}], ids=["one_empty", "all_empty"])
def test_background_only_images_reach_the_loss(shapes, tmp_path, empty_images):
    cfg, batch = _empty_image_batch(shapes, tmp_path, empty_images)
    counts = sorted(len(labels) for labels in batch["gt_class"])
    assert counts[0] == 0 and (counts[1] == 0) == (len(empty_images) == 2)
    paddle.seed(0)
    model = mrt.build_model(cfg.model)
    W.load_pretrained(model, "course")
    model.train()
    losses = build_criterion(cfg.loss, num_classes=cfg.model.num_classes)(model(batch), batch)
    assert all(np.isfinite(float(v)) for v in losses.values())
    losses["loss"].backward()  # and the gradients are finite too
    grad = model.transformer.score_head.weight.grad
    assert grad is not None and np.isfinite(grad.numpy()).all()
    if len(empty_images) == 2:  # no object: only the classification term (all background) left
        assert float(losses["loss_class"]) > 0 and float(losses["loss_bbox"]) == 0


def test_without_allow_empty_the_empty_image_is_left_out(shapes, tmp_path):
    root = _keep_classes(shapes, tmp_path / "drop", keep={1, 2, 3, 4}, empty_images={1})
    cfg = _course_cfg(root, tmp_path / "out", num_classes=4)
    with_empty = _course_cfg(root, tmp_path / "out", num_classes=4, allow_empty=True)
    assert len(build_dataset(cfg.data, "train")) == len(build_dataset(with_empty.data, "train")) - 1


def _queries(batch=2, queries=30, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, queries, classes)), rng.uniform(size=(batch, queries, 4))


def test_collapse_is_seen_on_boxes_or_scores():
    logits, boxes = _queries()
    assert collapse_problem(paddle.to_tensor(logits), paddle.to_tensor(boxes)) is None
    same_box = np.broadcast_to(boxes[:, :1], boxes.shape)
    text = collapse_problem(paddle.to_tensor(logits), paddle.to_tensor(same_box))
    assert "the same box" in text and "score" not in text.split("(")[0]
    assert "base_lr" in text and "num_classes" in text and "empty" in text
    same_score = np.broadcast_to(logits[:, :1], logits.shape)
    text = collapse_problem(paddle.to_tensor(same_score), paddle.to_tensor(same_box))
    assert "the same box and the same score" in text
    one_image_ok = same_box.copy()
    one_image_ok[1] = boxes[1]  # one image still has varied boxes: not a collapse
    assert collapse_problem(paddle.to_tensor(logits), paddle.to_tensor(one_image_ok)) is None


def test_stuck_ap_needs_three_zero_evaluations_and_a_falling_loss():
    falling = [(0.0, 3.0), (0.0, 2.5), (0.0, 2.0)]
    text = stuck_problem(falling)
    assert "AP stayed 0 for 3 evaluations" in text and "from 3 to 2" in text
    assert "categories" in text and "base_lr" in text
    assert stuck_problem(falling[:2]) is None  # too early to tell
    assert stuck_problem([(0.0, 3.0), (0.01, 2.5), (0.0, 2.0)]) is None  # it learns
    assert stuck_problem([(0.0, 2.0), (0.0, 2.5), (0.0, 3.0)]) is None  # diverging: other trouble
    assert stuck_problem([(0.2, 4.0)] + falling) is not None  # the last three count


def test_trainer_bookkeeping_warns_once_with_mean_losses():
    health = _Health()
    with pytest.warns(UserWarning, match="from 3 to 1.5") as caught:
        for losses in ([4.0, 2.0], [2.5], [1.0, 2.0], [0.5]):
            health.losses += losses
            health.after_eval(0.0)
    assert len(caught) == 1 and [loss for _, loss in health.history] == [3.0, 2.5, 1.5, 0.5]


class _SameBox(paddle.nn.Layer):
    """A model whose queries all predict the box of the first query (a collapsed run)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, inputs):
        out = self.model(inputs)
        if self.training:  # [P, B, Q, 4]: the first query's box for every query
            out["boxes"] = out["boxes"][:, :, :1].expand_as(out["boxes"])
        return out


def _collapse_warnings(cfg, model=None):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Trainer(cfg, model=model, progress=False).train()
    return [str(w.message) for w in caught if "collapsed" in str(w.message)]


def test_trainer_warns_on_collapsed_predictions_only(shapes, tmp_path):
    cfg = _course_cfg(shapes, tmp_path / "ok", num_classes=4, max_images=2)
    cfg.train.max_iters, cfg.train.warmup_steps = 2, 0
    assert not _collapse_warnings(cfg)  # the course checkpoint: varied boxes and scores
    cfg.train.output_dir, cfg.train.pretrain_weights = str(tmp_path / "fresh"), None
    cfg.train.warmup_steps = 2
    assert not _collapse_warnings(cfg)  # fresh: every query on one box, but still warming up
    cfg.train.output_dir, cfg.train.warmup_steps = str(tmp_path / "collapsed"), 0
    paddle.seed(0)
    model = _SameBox(mrt.build_model(cfg.model))
    W.load_pretrained(model.model, "course")
    found = _collapse_warnings(cfg, model)
    assert len(found) == 1 and "every query predicts the same box" in found[0]  # once, not per step
