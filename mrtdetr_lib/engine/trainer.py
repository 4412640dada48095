"""The training loop: AdamW + linear warmup, grad clipping, EMA, AMP, evaluation, checkpoints.

Mirrors PaddleDetection's `ppdet/engine/trainer.py` (`Trainer.train`) as Mask RT-DETR configures
it (`configs/mask_rtdetr/_base_/optimizer_6x.yml`): AdamW (weight decay 1e-4 on every trainable
parameter, norms and biases included: `regularizer: false` and no param groups), learning rate
1e-4 ramping linearly from 0.001x over 2000 steps then constant (PiecewiseDecay with gamma 1.0),
per-parameter multipliers from `ParamAttr(learning_rate=...)` (the backbone's `lr_mult_list`),
global-norm clipping at 0.1, EMA weights evaluated and saved. Additions: resumable data order,
atomic checkpoints with RNG states, a graceful stop on Ctrl-C / SIGTERM, a generator API.

AMP (`amp=True`) is paddle's O1 auto_cast with a GradScaler on a GPU. On CPU, paddle 3.3.1's
auto_cast does nothing (it warns "amp_guard can only be enabled on CUDAPlace, XPUPlace, and
CustomPlace", for float16 and bfloat16 alike), so the Trainer warns once and trains in float32.
Multi-process (GPUs, or CPU processes over gloo): `python -m paddle.distributed.launch
--nproc_per_node N $(which mrtdetr) train -c ...`; DataParallel, each rank its own shard of every
epoch, rank 0 logs and writes files. Tested with 2 CPU processes (PADDLE_DISTRI_BACKEND=gloo).
"""

import dataclasses
import math
import os
import signal
import threading
import time
import warnings
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

import paddle
import paddle.distributed as dist
from paddle import nn

from ..config import Config, save_config, validate
from ..data import build_dataset, build_loader
from ..errors import UserError
from ..loss.criterion import build_criterion
from ..model.detr import build_model
from ..weights import load_backbone, load_pretrained, save_safetensors, set_exact
from .checkpoint import (
    atomic_save,
    config_changes,
    optimizer_state,
    read_checkpoint,
    rng_state,
    set_optimizer_state,
    set_rng_state,
)
from .diagnose import collapse_problem, stuck_problem
from .ema import ModelEMA
from .evaluator import evaluate, summary
from .log import JsonLinesLog, Record, save_curves
from .optim import build_optimizer

CHECKPOINT_FORMAT = "mrtdetr-trainer-v1"


class Trainer:
    """Trains `model` on `cfg` (all knobs in `cfg.train`); `run()` yields a record per step."""

    def __init__(self, cfg: Config, model: Optional[nn.Layer] = None,
                 criterion: Optional[Callable] = None, train_data: Any = None,
                 eval_data: Any = None, callbacks: Sequence[Callable[[Record], None]] = (),
                 progress: bool = True):
        self.cfg, tc = validate(cfg), cfg.train  # fields set in code are checked here
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if self.world > 1 and not dist.is_initialized():
            dist.init_parallel_env()
        self.is_main = self.rank == 0
        paddle.seed(tc.seed + self.rank)
        self.model = model if model is not None else build_model(cfg.model)
        self.criterion = (criterion if criterion is not None
                          else build_criterion(cfg.loss, num_classes=cfg.model.num_classes))
        self.train_data = (train_data if train_data is not None
                           else build_dataset(cfg.data, "train"))
        self.eval_data = eval_data
        if tc.eval and eval_data is None:
            self.eval_data = build_dataset(cfg.data, "val", cfg.model.eval_size)
        if tc.backbone_weights and not tc.resume:
            self._print(str(load_backbone(self.model, tc.backbone_weights)))
        if tc.pretrain_weights and not tc.resume:
            # fine-tuning on other classes: the class tensors stay fresh, one line says which
            self._print(str(load_pretrained(self.model, tc.pretrain_weights,
                                            skip_mismatch_classes=True)))
        self.loader = build_loader(cfg, "train", dataset=self.train_data, rank=self.rank,
                                   world_size=self.world)
        self.sampler = self.loader.batch_sampler
        self.optimizer, self.scheduler = build_optimizer(
            self.model, tc.base_lr, tc.weight_decay, tc.warmup_steps, tc.warmup_start_factor,
            tc.clip_grad_norm, tc.lr_schedule, self.total_steps, tc.lr_decay_start)
        self.ema = (ModelEMA(self.model, tc.ema_decay, tc.ema_filter_no_grad,
                             tc.ema_ramp_steps)
                    if tc.use_ema else None)
        self.amp = tc.amp and paddle.is_compiled_with_cuda() and "gpu" in paddle.get_device()
        if tc.amp and not self.amp:
            warnings.warn("amp=True has no effect on CPU: paddle 3.3.1's auto_cast only works on "
                          "CUDA/XPU devices (float16 and bfloat16 alike); training in float32",
                          stacklevel=2)
        self.scaler = paddle.amp.GradScaler(init_loss_scaling=1024) if self.amp else None
        self.callbacks = list(callbacks)
        self.progress = progress
        self.log = JsonLinesLog(os.path.join(tc.output_dir, "train_log.jsonl"))
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.best: Dict[str, Any] = {"metric": tc.target_metrics + "_AP", "value": -1.0,
                                     "step": None}
        self.stop_reason: Optional[str] = None
        self.last_eval_step: Optional[int] = None
        self.health = _Health()
        if tc.resume:
            self.load_checkpoint(tc.resume)
        if self.is_main:  # the log holds this run's steps only, once each
            self.log.keep_until(self.global_step)

    # ------------------------------------------------------------------ the loop
    @property
    def total_steps(self) -> int:
        """Steps of the whole run: epochs x batches per epoch, capped by `max_iters` if set."""
        return min(self.cfg.train.epochs * len(self.sampler), self.cfg.train.max_iters or 2**62)

    def train(self) -> Dict[str, Any]:
        """Run to the end (or a graceful stop); returns the last eval record and the best AP."""
        last_eval = None
        for record in self.run():
            if record["kind"] == "eval":
                last_eval = record
        return {"steps": self.global_step, "epoch": self.epoch, "last_eval": last_eval,
                "best": dict(self.best), "stopped": self.stop_reason}

    def run(self) -> Iterator[Record]:
        """Generator: trains and yields each record (after callbacks and the log have it)."""
        from tqdm.auto import tqdm

        self.stop_reason = None
        self.model.train()
        net = self.model
        if self.world > 1:
            if "gpu" in paddle.get_device():  # ppdet's norm_type sync_bn (GPU only)
                _sync_batch_norms(self.model)
            net = paddle.DataParallel(self.model, find_unused_parameters=True)
        bar = tqdm(total=self.total_steps, initial=self.global_step, desc="train",
                   disable=not (self.progress and self.is_main), dynamic_ncols=True)
        if self.is_main:
            save_config(self.cfg, _makedirs(self.cfg.train.output_dir, "config.yml"))
        try:
            with _graceful_stop(self):
                while self.global_step < self.total_steps and not self.stop_reason:
                    self.sampler.set_epoch(self.epoch, skip=self.step_in_epoch)
                    if self.step_in_epoch >= len(self.sampler):  # no batch left in this epoch
                        yield from self._empty_epoch()
                        continue
                    start = self.global_step
                    for inputs in self.loader:
                        record = self._train_step(net, inputs)
                        bar.update(1)
                        bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")
                        yield record
                        if self.step_in_epoch == len(self.sampler):
                            self.epoch, self.step_in_epoch = self.epoch + 1, 0
                            yield from self._end_of_epoch()
                        if self.global_step >= self.total_steps or self._stop_requested():
                            break
                    if self.global_step == start:  # every pass of this loop trains or stops
                        raise RuntimeError(f"the training loader gave no batch in epoch "
                                           f"{self.epoch} (from batch {self.step_in_epoch})")
            if self.stop_reason:  # Ctrl-C or SIGTERM, seen between two steps
                self._save_on_stop()
            else:
                yield from self._finish()
        except GeneratorExit:  # the consumer left the loop; we are between two steps
            self.stop_reason = self.stop_reason or "generator closed"
            self._save_on_stop()
            raise
        finally:
            # An exception inside a step (or a second Ctrl-C) saves nothing: the weights may be
            # half-updated, and the last checkpoint on disk is the good one.
            bar.close()

    def _save_on_stop(self) -> None:
        self.save_checkpoint()
        self.save_curves()
        self._print(f"stopped at step {self.global_step} ({self.stop_reason}); "
                    f"continue with -r {self.checkpoint_path}")

    def _train_step(self, net: nn.Layer, inputs: Dict[str, Any]) -> Record:
        tic = time.time()
        with paddle.amp.auto_cast(enable=self.amp, level="O1"):
            outputs = net(inputs)
            losses = self.criterion(outputs, inputs)
        loss = losses["loss"]
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)  # skips the step on inf/nan gradients
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.optimizer.clear_grad()
        lr = self.optimizer.get_lr()  # the rate this step used (ppdet logs it before stepping)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.global_step += 1
        self.step_in_epoch += 1
        record = {"kind": "train", "step": self.global_step, "epoch": self.epoch, "lr": lr,
                  **{k: float(v) for k, v in losses.items()}, "seconds": time.time() - tic}
        if not math.isfinite(record["loss"]) and self.scaler is None:
            raise FloatingPointError(f"loss is {record['loss']} at step {self.global_step}; "
                                     "lower train.base_lr or check the data")
        self._emit(record, echo=self.global_step % self.cfg.train.log_iter == 0)
        self.health.losses.append(record["loss"])
        # a fresh model starts collapsed (empty masks give every query the same box): judge
        # only after the warm-up
        tc = self.cfg.train
        if self.global_step > tc.warmup_steps and self.global_step % tc.log_iter == 0:
            self.health.warn_once("collapse", collapse_problem(outputs["logits"][-1].detach(),
                                                               outputs["boxes"][-1].detach()))
        return record

    def _end_of_epoch(self) -> Iterator[Record]:
        tc = self.cfg.train
        if self.epoch % tc.snapshot_epoch == 0 and self.global_step < self.total_steps:
            self.save_checkpoint()
            if tc.eval:
                yield self._eval_record()
            self.save_curves()

    def _empty_epoch(self) -> Iterator[Record]:
        """The epoch was saved at its very end (the consumer left after its last step), or the
        data now gives fewer batches than the checkpoint's epoch had: never loop on nothing."""
        if self.step_in_epoch > len(self.sampler):
            raise UserError(f"epoch {self.epoch} stopped after batch {self.step_in_epoch}, but "
                            f"an epoch now has {len(self.sampler)} batches: the training data "
                            "changed since the checkpoint (resume with the same data)")
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        yield from self._end_of_epoch()

    def _finish(self) -> Iterator[Record]:
        self.save_checkpoint()
        self.save_weights("model_final")
        if self.cfg.train.eval and self.last_eval_step != self.global_step:
            yield self._eval_record()
        self.save_curves()

    def _eval_record(self) -> Record:
        record = {"kind": "eval", "step": self.global_step, "epoch": self.epoch,
                  **self.evaluate()}
        self.last_eval_step = self.global_step
        value = record.get(self.best["metric"], -1.0)
        if value > self.best["value"] or self.best["step"] is None:
            self.best.update(value=value, step=self.global_step)
            self.save_weights("best_model")
        record["best_" + self.best["metric"]] = self.best["value"]
        self._emit(record, echo=True)
        self.health.after_eval(max(record.get("mask_AP", 0.0), record.get("bbox_AP", 0.0)))
        return record

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, data: Any = None, output_dir: Optional[str] = None) -> Dict[str, float]:
        """COCO AP of the EMA weights (the raw ones without EMA) on `data` or the eval set."""
        data = data if data is not None else self.eval_data
        if data is None:
            raise ValueError("no evaluation data: pass eval_data to Trainer or set train.eval")
        raw = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.model.set_state_dict(self.weights())
        try:
            return summary(evaluate(self.model, data, output_dir, progress=self.progress))
        finally:
            self.model.set_state_dict(raw)

    def weights(self) -> Dict[str, paddle.Tensor]:
        """The weights to deploy: EMA averages when EMA is on (ppdet saves these as .pdparams)."""
        return self.ema.averaged(self.model) if self.ema else self.model.state_dict()

    # ------------------------------------------------------------------ files
    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.cfg.train.output_dir, "last.pdckpt")

    def save_weights(self, name: str) -> Optional[str]:
        """Write `<output_dir>/<name>.safetensors` (plain arrays, no pickle; `weights=` and
        `pretrain_weights=` read it, `safetensors_to_pdparams` makes PaddleDetection's
        .pdparams); rank 0 only."""
        if not self.is_main:
            return None
        return str(save_safetensors(self.weights(),
                                    os.path.join(self.cfg.train.output_dir, name + ".safetensors")))

    def save_curves(self) -> Optional[str]:
        """Write `<output_dir>/curves.png` (loss and eval AP against step) from the log."""
        if not self.is_main or not os.path.exists(self.log.path):
            return None
        return save_curves(self.log.path, os.path.join(self.cfg.train.output_dir, "curves.png"),
                           smooth=self.cfg.train.log_iter)

    def state_dict(self) -> Dict[str, Any]:
        """Everything a resume needs, RNG states included."""
        return {"format": CHECKPOINT_FORMAT, "model": self.model.state_dict(),
                "ema": self.ema.state_dict() if self.ema else None,
                "optimizer": optimizer_state(self.optimizer, self.model),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step, "best": dict(self.best), "rng": rng_state(),
                "config": dataclasses.asdict(self.cfg)}

    def save_checkpoint(self, path: Optional[str] = None) -> Optional[str]:
        """Atomically write the full training state (default `<output_dir>/last.pdckpt`)."""
        if not self.is_main:
            return None
        path = path or self.checkpoint_path
        atomic_save(self.state_dict(), path)
        return path

    def load_checkpoint(self, path: str) -> None:
        """Continue exactly where `save_checkpoint` left off (same config, same data)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint to resume not found: {path}")
        state = read_checkpoint(path)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"{path} is not a trainer checkpoint (a .pdparams file holds only "
                            "weights: use pretrain_weights= or weights= for those)")
        refused, allowed = config_changes(state["config"], self.cfg)
        if refused:  # another model, or another order of the remaining batches
            raise UserError(f"{path} was trained with other settings; resume with the "
                            f"checkpoint's: {'; '.join(refused)}")
        set_exact(self.model, state["model"], path)
        if self.ema is not None and state["ema"] is not None:
            self.ema.set_state_dict(state["ema"])
        set_optimizer_state(self.optimizer, self.model, state["optimizer"])
        self.scheduler.set_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step, self.best = state["global_step"], dict(state["best"])
        set_rng_state(state["rng"])
        changed = f"; changed since: {'; '.join(allowed)}" if allowed else ""  # allowed, said
        self._print(f"resumed from {path} at step {self.global_step} (epoch {self.epoch})"
                    + changed)

    # ------------------------------------------------------------------ helpers
    def _emit(self, record: Record, echo: bool = False) -> None:
        if not self.is_main:
            return
        self.log(record)
        for callback in self.callbacks:
            callback(record)
        if echo:
            self._print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in record.items() if k != "seconds"))

    def _print(self, text: str) -> None:
        if self.is_main:
            from tqdm.auto import tqdm
            tqdm.write(text)

    def _stop_requested(self) -> bool:
        if self.world > 1:  # every rank must stop at the same step, or the others would hang
            flag = paddle.to_tensor(1 if self.stop_reason else 0)
            dist.all_reduce(flag)
            if int(flag) and not self.stop_reason:
                self.stop_reason = "stopped by another rank"
        return bool(self.stop_reason)


class _Health:
    """The run's two silent failures (engine/diagnose.py), each warned about once."""

    def __init__(self):
        self.losses, self.history, self.warned = [], [], set()

    def warn_once(self, kind: str, problem: Optional[str]) -> None:
        if problem and kind not in self.warned:
            self.warned.add(kind)
            warnings.warn(problem, stacklevel=3)

    def after_eval(self, ap: float) -> None:
        """Record (AP, mean train loss since the last evaluation) and check for a stuck AP."""
        if self.losses:
            self.history.append((ap, sum(self.losses) / len(self.losses)))
            self.losses = []
            self.warn_once("stuck", stuck_problem(self.history))


class _graceful_stop:
    """While training: Ctrl-C or SIGTERM finishes the current step, then the run stops and saves.

    A second Ctrl-C raises KeyboardInterrupt at once (the last saved checkpoint stays intact).
    """

    def __init__(self, trainer: Trainer):
        self.trainer, self.previous = trainer, {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.trainer.stop_reason and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.trainer.stop_reason = signal.Signals(signum).name
        self.trainer._print(f"{self.trainer.stop_reason}: stopping after this step")

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _sync_batch_norms(layer: nn.Layer) -> None:
    """Trainable BatchNorms share batch statistics across processes (ppdet's `sync_bn`).

    Frozen ones (`use_global_stats`) are kept: paddle's converter would drop that flag, so the
    frozen backbone norms would start using batch statistics (as they do in ppdet's multi-GPU
    runs; we keep the single-GPU behaviour). Parameters stay the same objects.
    """
    for name, child in layer.named_children():
        if isinstance(child, nn.layer.norm._BatchNormBase) and not child._use_global_stats:
            layer.add_sublayer(name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        else:
            _sync_batch_norms(child)


def _makedirs(directory: str, name: str) -> str:
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, name)
