"""The optimizer of Mask RT-DETR: AdamW, ppdet's linear warm-up, a constant or cosine schedule.

ppdet (`configs/mask_rtdetr/_base_/optimizer_6x.yml`): AdamW with weight decay 1e-4 on every
trainable parameter, lr ramping linearly from 0.001x over 2000 steps then constant (PiecewiseDecay
with gamma 1.0), per-parameter multipliers from `ParamAttr(learning_rate=...)`, global-norm
clipping at 0.1. The cosine schedule (ppdet's CosineDecay) is for short runs that should end
with the learning rate at 0.
"""

import functools
import math

import paddle
from paddle import nn


def warmup_factor(step: int, steps: int, start: float) -> float:
    """ppdet's LinearWarmup factor: `start` at step 0, rising linearly to 1 at `steps`, then 1."""
    alpha = min(step / steps, 1.0) if steps > 0 else 1.0
    return start * (1 - alpha) + alpha


def lr_factor(step: int, warmup_steps: int, start: float, schedule: str = "constant",
              total_steps: int = 0, decay_start: float = 0.0) -> float:
    """Multiplier of base_lr at `step`: the warm-up times "constant" (ppdet's 6x schedule) or
    "cosine" (ppdet's CosineDecay: half a cosine from 1 to 0 over `total_steps`; with
    `decay_start` f > 0, flat for the first f of the steps, then the cosine over the rest)."""
    if not 0.0 <= decay_start < 1.0:
        raise ValueError(f"train.lr_decay_start must be in [0, 1), got {decay_start!r}")
    factor = warmup_factor(step, warmup_steps, start)
    if schedule == "cosine":
        begin = decay_start * total_steps
        progress = (step - begin) / max(total_steps - begin, 1)
        factor *= 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    elif schedule != "constant":
        raise ValueError(f"train.lr_schedule must be 'constant' or 'cosine', got {schedule!r}")
    return factor


def build_optimizer(model: nn.Layer, base_lr: float, weight_decay: float, warmup_steps: int,
                    warmup_start_factor: float, clip_grad_norm: float,
                    schedule: str = "constant", total_steps: int = 0, decay_start: float = 0.0):
    """AdamW over the trainable parameters with ppdet's warmup schedule; returns (opt, sched)."""
    # paddle scales each parameter's step (and its decoupled decay) by ParamAttr learning_rate;
    # passing plain parameters (not groups with a "learning_rate" key) keeps those multipliers.
    params = [p for p in model.parameters() if not p.stop_gradient]
    # a bad schedule or decay_start fails here, not at the first step
    lr_factor(0, warmup_steps, warmup_start_factor, schedule, total_steps, decay_start)
    scheduler = paddle.optimizer.lr.LambdaDecay(
        base_lr, functools.partial(lr_factor, warmup_steps=warmup_steps,
                                   start=warmup_start_factor, schedule=schedule,
                                   total_steps=total_steps, decay_start=decay_start))
    clip = nn.ClipGradByGlobalNorm(clip_grad_norm) if clip_grad_norm > 0 else None
    optimizer = paddle.optimizer.AdamW(learning_rate=scheduler, parameters=params,
                                       weight_decay=weight_decay, grad_clip=clip)
    return optimizer, scheduler
