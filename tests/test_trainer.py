"""Trainer: optimiser knobs as PaddleDetection's, EMA, exact resume, crash-safe checkpoints.

The optimiser/EMA/resume mechanics are checked on a toy model with the same moving parts as
Mask RT-DETR (ParamAttr lr multipliers, BatchNorm, a frozen parameter, paddle RNG in the loss,
numpy RNG in the data); the real tiny model on the shapes data follows in the last tests.
"""

import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import paddle
import pytest

import mrtdetr_lib as mrt
from mrtdetr_lib.course.training import WeightTrace, global_grad_norm, lr_multipliers
from mrtdetr_lib.course.weights import logged_steps
from mrtdetr_lib.data import SeededBatchSampler
from mrtdetr_lib.engine import Trainer, build_optimizer
from mrtdetr_lib.engine.checkpoint import atomic_save
from mrtdetr_lib.engine.ema import ModelEMA, ramped_decay
from mrtdetr_lib.engine.log import plot_log, read_log, write_log
from mrtdetr_lib.engine.optim import lr_factor
from mrtdetr_lib.weights import read_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TOY = textwrap.dedent('''
    import numpy as np
    import paddle


    class ToyData(paddle.io.Dataset):
        """10 samples with a random "augmentation" seeded by the key (index, seed)."""

        collate_fn = None  # paddle's default

        def __len__(self):
            return 10

        def __getitem__(self, key):
            i, seed = key
            noise = np.random.default_rng(seed).random((3, 8, 8))
            x = np.random.RandomState(i).rand(3, 8, 8) + 0.1 * noise
            return {"image": x.astype("float32"),
                    "target": np.array([i % 2, 1 - i % 2], "float32")}


    class Toy(paddle.nn.Layer):
        """A conv at half learning rate, BatchNorm, a frozen scale and a head."""

        def __init__(self):
            super().__init__()
            self.conv = paddle.nn.Conv2D(3, 4, 3,
                                         weight_attr=paddle.ParamAttr(learning_rate=0.5))
            self.bn = paddle.nn.BatchNorm2D(4)
            self.frozen = self.create_parameter(
                [4], default_initializer=paddle.nn.initializer.Constant(1.0))
            self.frozen.stop_gradient = True
            self.fc = paddle.nn.Linear(4, 2)

        def forward(self, batch):
            h = (self.bn(self.conv(batch["image"])) * self.frozen.reshape([1, 4, 1, 1]))
            return {"pred": self.fc(h.mean(axis=[2, 3]))}


    def criterion(outputs, batch, sleep=0.0):
        """MSE plus paddle-RNG noise (as the matcher's point sampling draws paddle.rand)."""
        import time
        time.sleep(sleep)
        noise = paddle.rand(outputs["pred"].shape) * 0.01
        loss = ((outputs["pred"] + noise - batch["target"]) ** 2).mean()
        return {"loss_mse": loss, "loss": loss}
''')


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy")
    (path / "toy_parts.py").write_text(TOY)
    sys.path.insert(0, str(path))
    import toy_parts
    yield toy_parts
    sys.path.remove(str(path))


def _cfg(out, **train):
    cfg = mrt.get_config("tiny")
    cfg.data.batch_size, cfg.data.num_workers = 3, 0
    cfg.train.output_dir, cfg.train.warmup_steps, cfg.train.log_iter = str(out), 5, 1000
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def _toy_trainer(toy, out, **train):
    paddle.seed(0)
    return Trainer(_cfg(out, **train), model=toy.Toy(), criterion=toy.criterion,
                   train_data=toy.ToyData(), progress=False)


def test_warmup_schedule_is_ppdet_linear_warmup_then_constant(toy):
    model = toy.Toy()
    opt, sched = build_optimizer(model, 1e-4, 1e-4, warmup_steps=2000, warmup_start_factor=0.001,
                                 clip_grad_norm=0.1)
    lrs = {}
    for step in range(2006):
        lrs[step] = opt.get_lr()
        sched.step()
    for step in (0, 1, 1000, 1999, 2000, 2005):  # ppdet: base * (f * (1 - a) + a), a = s / W
        a = min(step / 2000, 1.0)
        assert lrs[step] == pytest.approx(1e-4 * (0.001 * (1 - a) + a), rel=1e-9)
    assert isinstance(opt, paddle.optimizer.AdamW)
    assert isinstance(opt._grad_clip, paddle.nn.ClipGradByGlobalNorm)
    assert opt._grad_clip.clip_norm == 0.1


def test_cosine_schedule_decays_to_zero_after_the_warmup(toy):
    opt, sched = build_optimizer(toy.Toy(), 2e-3, 1e-4, warmup_steps=10, warmup_start_factor=0.1,
                                 clip_grad_norm=0.1, schedule="cosine", total_steps=100)
    lrs = []
    for _ in range(101):
        lrs.append(opt.get_lr())
        sched.step()
    assert lrs[0] == pytest.approx(2e-4)  # warm-up start, cos(0) = 1
    assert lrs[50] == pytest.approx(1e-3)  # half-way: half the rate
    assert lrs[100] == pytest.approx(0.0, abs=1e-12)
    assert all(b <= a for a, b in zip(lrs[10:], lrs[11:]))  # falls from the warm-up's end on
    with pytest.raises(ValueError, match="lr_schedule"):
        build_optimizer(toy.Toy(), 1e-3, 0, 1, 1.0, 0, schedule="step")


def test_cosine_with_a_flat_start_holds_the_rate_then_decays_over_the_rest():
    factors = [lr_factor(s, 10, 0.1, "cosine", total_steps=100, decay_start=0.6)
               for s in range(101)]
    assert factors[0] == pytest.approx(0.1) and factors[10:61] == [1.0] * 51  # warm-up, flat
    assert factors[80] == pytest.approx(0.5)  # half-way through the last 40 steps
    assert factors[100] == pytest.approx(0.0, abs=1e-12)
    assert all(b <= a for a, b in zip(factors[60:], factors[61:]))
    plain = [lr_factor(s, 10, 0.1, "cosine", 100) for s in range(101)]  # decay_start 0: as before
    assert plain[50:] == pytest.approx([0.5 * (1 + math.cos(math.pi * s / 100))
                                        for s in range(50, 101)])
    with pytest.raises(ValueError, match="lr_decay_start"):
        lr_factor(0, 10, 0.1, "cosine", 100, decay_start=1.0)


def test_adamw_honours_param_lr_multipliers_frozen_params_and_decays_biases(toy):
    model = toy.Toy()
    trainable = {id(p) for p in model.parameters() if not p.stop_gradient}
    opt, _ = build_optimizer(model, 1e-3, 1e-2, warmup_steps=1, warmup_start_factor=1.0,
                             clip_grad_norm=0)
    assert id(model.frozen) not in trainable and id(model.bn._mean) not in trainable
    assert {id(p) for p in opt._parameter_list} == trainable
    before = {n: p.numpy().copy() for n, p in model.named_parameters()}
    batch = toy.ToyData()[(0, 0)]
    batch = {k: paddle.to_tensor(v[None]) for k, v in batch.items()}
    out = model(batch)["pred"]
    (out.sum() * 0).backward()  # zero gradients: only the decoupled weight decay moves weights
    opt.step()
    for name in ("fc.bias", "bn.weight", "fc.weight"):  # biases and norms decay too (as ppdet)
        np.testing.assert_allclose(model.state_dict()[name].numpy(),
                                   before[name] * (1 - 1e-3 * 1e-2), rtol=1e-6)
    # the conv's ParamAttr(learning_rate=0.5) halves its step, decay included
    np.testing.assert_allclose(model.conv.weight.numpy(),
                               before["conv.weight"] * (1 - 0.5e-3 * 1e-2), rtol=1e-6)
    np.testing.assert_array_equal(model.frozen.numpy(), before["frozen"])


def test_backbone_stage_lr_multipliers_reach_the_optimizer():
    from mrtdetr_lib.model.backbone import PPHGNetV2
    net = PPHGNetV2("T", lr_mult_list=[0.0, 0.1, 0.2, 0.3, 0.4], return_idx=[0, 1, 2, 3],
                    freeze_at=0, freeze_norm=True)
    opt, _ = build_optimizer(net, 1e-3, 1e-4, 1, 1.0, 0.1)
    lrs = {p.name: p.optimize_attr["learning_rate"] for p in opt._parameter_list}
    named = {n: p for n, p in net.named_parameters()}
    assert not any(n.startswith("stem") for n, p in named.items() if p.name in lrs)  # frozen
    for stage, mult in enumerate([0.1, 0.2, 0.3, 0.4]):
        stage_lrs = {lrs[p.name] for n, p in named.items()
                     if n.startswith(f"stages.{stage}.") and p.name in lrs}
        assert stage_lrs == {mult}, (stage, stage_lrs)
    # frozen norms (use_global_stats) have no trainable scale/shift
    assert not any(n.endswith("bn.weight") for n, p in named.items() if p.name in lrs)


def test_ema_exponential_ramp_skips_frozen_and_tracks_bn_stats(toy):
    model = toy.Toy()
    ema = ModelEMA(model, decay=0.9999, filter_no_grad=True)
    assert "frozen" not in ema.shadow and "bn._mean" in ema.shadow and "fc.weight" in ema.shadow
    np.testing.assert_array_equal(ema.averaged(model)["fc.weight"].numpy(),
                                  model.fc.weight.numpy())  # no update yet: the model itself
    w0 = model.fc.weight.numpy().copy()
    ema.update(model)
    d0 = 0.9999 * (1 - math.exp(-1 / 2000))
    np.testing.assert_allclose(ema.averaged(model)["fc.weight"].numpy(), (1 - d0) * w0,
                               rtol=1e-6)
    model.fc.weight.set_value(np.zeros_like(w0))
    ema.update(model)
    d1 = 0.9999 * (1 - math.exp(-2 / 2000))
    np.testing.assert_allclose(ema.shadow["fc.weight"].numpy(), d1 * (1 - d0) * w0, rtol=1e-6)


def test_ema_ramp_steps_sets_how_soon_the_average_starts_to_lag(toy):
    short = ModelEMA(toy.Toy(), decay=0.99, ramp_steps=10)
    short.step = 49  # the 50th update: five ramps in, the decay is ~ the full 0.99
    assert short.current_decay() == pytest.approx(0.99 * (1 - math.exp(-5)))
    assert ramped_decay(49, 0.99) < 0.03  # ppdet's 2000-step ramp barely averages by then
    with pytest.raises(ValueError, match="ema_ramp_steps"):
        ModelEMA(toy.Toy(), ramp_steps=0)


def test_sampler_is_fixed_by_epoch_skips_on_resume_and_shards_by_rank():
    s = SeededBatchSampler(10, 3, seed=1)
    s.set_epoch(2)
    full = list(s)
    assert len(full) == len(s) == 3 and len({i for b in full for i, _ in b}) == 9
    s.set_epoch(2, skip=1)
    assert list(s) == full[1:]
    s.set_epoch(3)
    assert list(s) != full
    ranks = [SeededBatchSampler(10, 2, seed=1, rank=r, world_size=2) for r in (0, 1)]
    shards = []
    for r in ranks:
        r.set_epoch(0)
        shards.append({i for b in r for i, _ in b})
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 8  # drop_last per rank


def test_resume_is_bit_exact(toy, tmp_path):
    one = _toy_trainer(toy, tmp_path / "one", max_iters=8)
    one.train()
    half = _toy_trainer(toy, tmp_path / "two", max_iters=4)  # stops mid-epoch (3 batches/epoch)
    half.train()
    rest = _toy_trainer(toy, tmp_path / "two", max_iters=8, resume=str(tmp_path / "two" /
                                                                          "last.pdckpt"))
    assert rest.global_step == 4 and (rest.epoch, rest.step_in_epoch) == (1, 1)
    rest.train()
    for name, value in one.model.state_dict().items():
        np.testing.assert_array_equal(rest.model.state_dict()[name].numpy(), value.numpy(),
                                      err_msg=name)
    for name, value in one.ema.shadow.items():
        np.testing.assert_array_equal(rest.ema.shadow[name].numpy(), value.numpy())
    assert rest.optimizer.get_lr() == one.optimizer.get_lr()
    losses = [r["loss"] for r in read_log(str(tmp_path / "one" / "train_log.jsonl"))]
    resumed = [r["loss"] for r in read_log(str(tmp_path / "two" / "train_log.jsonl"))]
    assert losses == resumed  # the same batches, augmentations and loss noise, in order


def test_lr_multiplier_table_and_global_grad_norm(toy):
    model = toy.Toy()
    rows = {(prefix, mult): n for prefix, mult, n in lr_multipliers(model, depth=1)}
    assert rows == {("conv", "0.5"): 3 * 4 * 9, ("conv", "1"): 4,  # only the weight is halved
                    ("bn", "1"): 8, ("bn", "frozen"): 8, ("frozen", "frozen"): 4,
                    ("fc", "1"): 4 * 2 + 2}
    batch = {k: paddle.to_tensor(v[None]) for k, v in toy.ToyData()[(0, 0)].items()}
    model(batch)["pred"].sum().backward()
    grads = [p.grad.numpy() for p in model.parameters() if not p.stop_gradient]
    assert global_grad_norm(model) == pytest.approx(
        math.sqrt(sum((g.astype("float64") ** 2).sum() for g in grads)), rel=1e-5)


def test_weight_trace_and_saved_curves(toy, tmp_path):
    trainer = _toy_trainer(toy, tmp_path, max_iters=4)
    trace = WeightTrace(trainer, "fc.weight", index=1)
    trainer.callbacks.append(trace)
    start = float(trainer.model.fc.weight.flatten()[1])
    trainer.train()
    assert trace.steps == [1, 2, 3, 4] and trace.raw[-1] == float(trainer.model.fc.weight[0, 1])
    # the EMA average starts at 0: after one update it is (1 - d0) * w1
    d0 = ramped_decay(0, trainer.ema.decay)
    assert trace.ema[0] == pytest.approx((1 - d0) * trace.raw[0], rel=1e-5)
    assert trace.raw[0] != start
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"  # written at the end


def test_log_restarts_on_a_fresh_run_and_forgets_steps_after_the_checkpoint(toy, tmp_path):
    _toy_trainer(toy, tmp_path, max_iters=4).train()
    _toy_trainer(toy, tmp_path, max_iters=5).train()  # a new run in the same folder
    log = str(tmp_path / "train_log.jsonl")
    assert [r["step"] for r in read_log(log)] == [1, 2, 3, 4, 5]
    with open(log, "a") as f:  # steps 6, 7 logged, then a kill before the next checkpoint
        f.write('{"kind": "train", "step": 6}\n{"kind": "train", "step": 7}\n')
    _toy_trainer(toy, tmp_path, max_iters=8, resume=str(tmp_path / "last.pdckpt")).train()
    assert [r["step"] for r in read_log(log)] == list(range(1, 9))


def test_generator_api_callbacks_and_log_plot(toy, tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    seen = []
    trainer = _toy_trainer(toy, tmp_path, max_iters=50)
    trainer.callbacks.append(seen.append)
    for record in trainer.run():
        if record["step"] == 5:
            break  # leaving the generator saves a checkpoint at this step
    assert [r["step"] for r in seen] == [1, 2, 3, 4, 5]
    assert set(seen[0]) >= {"kind", "step", "epoch", "lr", "loss", "loss_mse"}
    state = paddle.load(str(tmp_path / "last.pdckpt"))
    assert state["global_step"] == 5
    axes = plot_log(str(tmp_path / "train_log.jsonl"), smooth=2)
    assert len(axes[0].lines) == 2


def test_amp_on_cpu_warns_and_trains_in_float32(toy, tmp_path):
    with pytest.warns(UserWarning, match="no effect on CPU"):
        trainer = _toy_trainer(toy, tmp_path, max_iters=1, amp=True)
    assert trainer.scaler is None
    trainer.train()
    assert trainer.model.fc.weight.dtype == paddle.float32


def test_kill_during_save_leaves_last_checkpoint_intact(tmp_path):
    path = tmp_path / "ckpt.pdckpt"
    script = textwrap.dedent(f'''
        import numpy as np
        from mrtdetr_lib.engine.checkpoint import atomic_save
        for version in range(10_000):
            atomic_save({{"version": version, "w": np.full(8_000_000, version, "float32")}},
                        {str(path)!r})
            print("saved", flush=True)
    ''')
    for _ in range(10):  # until a SIGKILL lands while the temporary file is written
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=ROOT)
        assert proc.stdout.readline().strip() == b"saved"
        while not os.path.exists(f"{path}.tmp"):
            pass
        proc.kill()
        proc.wait()
        if os.path.exists(f"{path}.tmp"):
            break
    assert os.path.exists(f"{path}.tmp"), "never killed mid-save"
    state = paddle.load(str(path))
    w = np.asarray(state["w"])
    assert w.shape == (8_000_000,) and (w == state["version"]).all()


def test_atomic_save_failure_keeps_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "w.pdparams")
    atomic_save({"a": np.ones(3, "float32")}, path)

    def broken_save(obj, target):
        open(target, "wb").write(b"half a fi")
        raise OSError("disk full")

    monkeypatch.setattr(paddle, "save", broken_save)
    with pytest.raises(OSError):
        atomic_save({"a": np.zeros(3, "float32")}, path)
    monkeypatch.undo()
    np.testing.assert_array_equal(np.asarray(paddle.load(path)["a"]), np.ones(3))
    assert os.listdir(tmp_path) == ["w.pdparams"]


def test_sigterm_stops_after_a_step_saves_and_resumes(toy, tmp_path):
    script = textwrap.dedent(f'''
        import sys, functools
        sys.path.insert(0, {os.path.dirname(toy.__file__)!r})
        import paddle, toy_parts
        import mrtdetr_lib as mrt
        from mrtdetr_lib.engine.trainer import Trainer
        cfg = mrt.get_config("tiny")
        cfg.data.batch_size, cfg.data.num_workers = 3, 0
        cfg.train.output_dir, cfg.train.max_iters = {str(tmp_path)!r}, 10_000
        crit = functools.partial(toy_parts.criterion, sleep=0.05)
        t = Trainer(cfg, model=toy_parts.Toy(), criterion=crit, train_data=toy_parts.ToyData(),
                    progress=False)
        print("result", t.train()["stopped"], t.global_step, flush=True)
    ''')
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=ROOT)
    log = tmp_path / "train_log.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, out
    assert "SIGTERM: stopping after this step" in out
    steps = int(out.split("result SIGTERM ")[1].split()[0])
    assert paddle.load(str(tmp_path / "last.pdckpt"))["global_step"] == steps
    assert len(read_log(str(log))) == steps
    assert (tmp_path / "curves.png").exists()
    rest = _toy_trainer(toy, tmp_path, max_iters=steps + 2, resume=str(tmp_path / "last.pdckpt"))
    assert rest.global_step == steps and rest.train()["steps"] == steps + 2


def test_sync_batch_norm_conversion_keeps_frozen_norms():
    from mrtdetr_lib.engine.trainer import _sync_batch_norms
    net = paddle.nn.Sequential(paddle.nn.BatchNorm2D(4),
                               paddle.nn.Sequential(paddle.nn.BatchNorm2D(4,
                                                                          use_global_stats=True)))
    weight = net[0].weight
    _sync_batch_norms(net)
    assert isinstance(net[0], paddle.nn.SyncBatchNorm) and net[0].weight is weight
    assert type(net[1][0]) is paddle.nn.BatchNorm2D


def _launch_two_ranks(script, tmp_path, **env: str) -> list:
    """Run `script` as 2 CPU processes (paddle.distributed.launch over gloo); each rank saves
    tmp_path/rank{r}.npz, returned loaded. A failure shows the launcher's and workers' logs."""
    env = {**os.environ, "PADDLE_DISTRI_BACKEND": "gloo", **env}
    proc = subprocess.run([sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node",
                           "2", "--log_dir", str(tmp_path / "log"), str(script)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=240)
    logs = "".join(p.read_text() for p in (tmp_path / "log").glob("workerlog.*"))
    assert proc.returncode == 0, proc.stdout[-2000:] + logs[-3000:]
    return [np.load(tmp_path / f"rank{r}.npz") for r in (0, 1)]


def test_two_processes_with_gloo_on_cpu(toy, tmp_path):
    """paddle.distributed.launch, 2 CPU processes (gloo): same weights, disjoint data shards."""
    script = tmp_path / "dist_train.py"
    script.write_text(textwrap.dedent(f'''
        import sys
        sys.path.insert(0, {os.path.dirname(toy.__file__)!r})
        import numpy as np, paddle, paddle.distributed as dist, toy_parts
        import mrtdetr_lib as mrt
        from mrtdetr_lib.engine.trainer import Trainer
        cfg = mrt.get_config("tiny")
        cfg.data.batch_size, cfg.data.num_workers = 2, 0
        cfg.train.output_dir, cfg.train.max_iters = {str(tmp_path / "out")!r}, 4
        t = Trainer(cfg, model=toy_parts.Toy(), criterion=toy_parts.criterion,
                    train_data=toy_parts.ToyData(), progress=False)
        t.sampler.set_epoch(0)
        seen = [i for batch in t.sampler for i, _ in batch]
        t.train()
        np.savez({str(tmp_path)!r} + f"/rank{{t.rank}}.npz", seen=seen,
                 **{{n: p.numpy() for n, p in t.model.named_parameters() if not p.stop_gradient}})
    '''))
    ranks = _launch_two_ranks(script, tmp_path)
    assert not set(ranks[0]["seen"]) & set(ranks[1]["seen"])
    for name in ranks[0].files:
        if name != "seen":  # gradients are all-reduced: the weights stay identical
            np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=name)
    assert len(read_log(str(tmp_path / "out" / "train_log.jsonl"))) == 4  # rank 0 logs only


# ---------------------------------------------------------------- the real tiny model
@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from mrtdetr_lib.data.shapes import make_shapes
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(str(root), num_train=8, num_val=2, image_size=128, progress=False)
    return root


def _tiny_cfg(shapes, out, **train):
    cfg = mrt.get_config("tiny")
    cfg.data.dataset_dir, cfg.data.num_workers, cfg.data.batch_size = str(shapes), 0, 2
    cfg.data.train_sizes, cfg.model.eval_size = [96, 128], (128, 128)
    cfg.train.output_dir, cfg.train.log_iter = str(out), 1000
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def test_tiny_model_resume_is_bit_exact(shapes, tmp_path):
    """6 steps in one run == 3 steps, a resume, 3 more (multi-scale data, denoising, sampling)."""
    def run(out, **train):
        paddle.seed(0)
        trainer = Trainer(_tiny_cfg(shapes, out, **train), progress=False)
        trainer.train()
        return trainer

    one = run(tmp_path / "one", max_iters=6)
    half = run(tmp_path / "two", max_iters=3)
    halfway = {n: v.numpy().copy() for n, v in half.model.state_dict().items()}
    paddle.seed(123)  # whatever the process did before: the checkpoint's RNG states take over
    rest = Trainer(_tiny_cfg(shapes, tmp_path / "two", max_iters=6,
                             resume=str(tmp_path / "two" / "last.pdckpt")), progress=False)
    assert (rest.global_step, rest.epoch, rest.step_in_epoch) == (3, 0, 3)  # 4 batches/epoch
    rest.train()
    moved = [n for n, v in rest.model.state_dict().items()
             if not np.array_equal(v.numpy(), halfway[n])]
    assert len(moved) > 100  # the last 3 steps really trained
    for name, value in one.model.state_dict().items():
        np.testing.assert_array_equal(rest.model.state_dict()[name].numpy(), value.numpy(),
                                      err_msg=name)
    for name, value in one.ema.shadow.items():
        np.testing.assert_array_equal(rest.ema.shadow[name].numpy(), value.numpy())
    log = [r["loss"] for r in read_log(str(tmp_path / "two" / "train_log.jsonl"))]
    assert log == [r["loss"] for r in read_log(str(tmp_path / "one" / "train_log.jsonl"))]


def test_tiny_model_trains_evaluates_and_keeps_the_best(shapes, tmp_path):
    cfg = _tiny_cfg(shapes, tmp_path, epochs=2, eval=True)
    cfg.model.freeze_at, cfg.model.freeze_norm = 0, True  # PaddleDetection's frozen stem + norms
    trainer = Trainer(cfg, progress=False)
    frozen = {n: p.numpy().copy() for n, p in trainer.model.named_parameters()
              if n.startswith("backbone.") and p.stop_gradient}
    assert any(n.startswith("backbone.stem.") for n in frozen) and any("_mean" in n for n in frozen)
    result = trainer.train()
    evals = [r for r in read_log(str(tmp_path / "train_log.jsonl")) if r["kind"] == "eval"]
    assert [r["epoch"] for r in evals] == [1, 2] and result["steps"] == 8
    assert 0.0 <= evals[-1]["mask_AP"] <= 1.0 and "bbox_AP50" in evals[-1]
    best = max(evals, key=lambda r: r["mask_AP"])
    assert result["best"]["step"] == best["step"]
    weights = read_state_dict(tmp_path / "best_model.safetensors")  # no pickle
    fresh = mrt.build_model(cfg.model)
    fresh.set_state_dict(weights)  # a plain state_dict: what `weights=` loads
    assert set(weights) == set(fresh.state_dict())
    for name, before in frozen.items():  # frozen stem, frozen norms' statistics never move
        np.testing.assert_array_equal(trainer.model.state_dict()[name].numpy(), before)
    assert (tmp_path / "model_final.safetensors").exists() and (tmp_path / "config.yml").exists()
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_tiny_model_two_processes_with_gloo_on_cpu(shapes, tmp_path):
    """The real loss across 2 CPU processes: DataParallel, all-reduced gt count, rank-0 files."""
    script = tmp_path / "dist_tiny.py"
    script.write_text(textwrap.dedent(f'''
        import numpy as np
        import mrtdetr_lib as mrt
        from mrtdetr_lib.engine.trainer import Trainer
        cfg = mrt.get_config("tiny")
        cfg.data.dataset_dir, cfg.data.num_workers, cfg.data.batch_size = {str(shapes)!r}, 0, 2
        cfg.data.train_sizes = [96, 128]
        cfg.model.eval_size = (128, 128)
        cfg.train.output_dir, cfg.train.max_iters = {str(tmp_path / "out")!r}, 2
        t = Trainer(cfg, progress=False)
        t.train()
        np.savez({str(tmp_path)!r} + f"/rank{{t.rank}}.npz",
                 **{{n: p.numpy() for n, p in t.model.named_parameters() if not p.stop_gradient}})
    '''))
    ranks = _launch_two_ranks(script, tmp_path, MRTDETR_THREADS="1")
    assert len(ranks[0].files) > 100
    for name in ranks[0].files:  # gradients all-reduced: both ranks hold the same weights
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name], err_msg=name)
    records = read_log(str(tmp_path / "out" / "train_log.jsonl"))
    assert [r["step"] for r in records] == [1, 2]  # rank 0 logs, once per step
    assert paddle.load(str(tmp_path / "out" / "last.pdckpt"))["global_step"] == 2


def test_each_launched_process_takes_its_share_of_the_cores(monkeypatch):
    """Under paddle.distributed.launch the default thread count splits this machine's cores among
    its PADDLE_LOCAL_SIZE processes: on 2 cores, 2 processes of 1 thread, not 2 of 2 that fight."""
    from mrtdetr_lib.runtime import cores_per_process
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.delenv("PADDLE_LOCAL_SIZE", raising=False)
    assert cores_per_process() == 8
    monkeypatch.setenv("PADDLE_LOCAL_SIZE", "2")
    assert cores_per_process() == 4
    monkeypatch.setenv("PADDLE_LOCAL_SIZE", "16")
    assert cores_per_process() == 1


def test_backbone_weights_start_the_backbone_from_a_local_file(shapes, tmp_path):
    """train.backbone_weights: PaddleDetection's start from an ImageNet PP-HGNetV2 file (here a
    local one; the sizes s..h name the official downloads)."""
    paddle.seed(3)
    source = mrt.build_model("tiny")
    path = tmp_path / "hgnet_t.pdparams"
    paddle.save({k: v for k, v in source.backbone.state_dict().items()}, str(path))
    trainer = Trainer(_tiny_cfg(shapes, tmp_path / "out", backbone_weights=str(path)),
                      progress=False)
    for name, value in source.backbone.state_dict().items():
        np.testing.assert_array_equal(trainer.model.backbone.state_dict()[name].numpy(),
                                      value.numpy(), err_msg=name)
    with pytest.raises(FileNotFoundError, match="nowhere.pdparams"):
        Trainer(_tiny_cfg(shapes, tmp_path / "out2", backbone_weights="nowhere.pdparams"),
                progress=False)


def test_a_shipped_log_keeps_the_logged_steps_and_every_evaluation(tmp_path):
    records = [{"kind": "train", "step": s, "loss": 1.0 / s} for s in range(1, 8)]
    records.insert(4, {"kind": "eval", "step": 5, "mask_AP": 0.5})
    path = tmp_path / "shipped" / "train_log.jsonl"
    path.parent.mkdir()
    write_log(path, logged_steps(records, every=3))
    assert [(r["kind"], r["step"]) for r in read_log(str(path))] == [
        ("train", 3), ("eval", 5), ("train", 6)]
