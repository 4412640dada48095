"""Exponential moving average of the weights, evaluated and saved instead of the raw weights.

Mirrors PaddleDetection's `ppdet/optimizer/ema.py` `ModelEMA` as Mask RT-DETR configures it
(`ema_decay 0.9999`, `ema_decay_type exponential`, the only type here, `ema_filter_no_grad
True`): the average starts at zero and the decay ramps up as
`decay * (1 - exp(-(step + 1) / 2000))`, so early averages follow the model closely and no
bias correction is needed. The 2000 is fixed in ppdet; here it is `ramp_steps` (config
`ema_ramp_steps`), because a run of a few hundred steps on a CPU would otherwise never average
at all. ppdet's other decay types (`threshold`, `normal`) are not used by any Mask RT-DETR
config and are not implemented here.
"""

import math
from typing import Dict

import paddle
from paddle import nn

RAMP_STEPS = 2000  # ppdet's fixed time constant of the exponential ramp


def ramped_decay(step: int, decay: float, ramp_steps: int = RAMP_STEPS) -> float:
    """The decay of update number `step` (0-based): ~0 at first, `decay` after ~5 ramps."""
    return decay * (1 - math.exp(-(step + 1) / ramp_steps))


def _batch_norm_stats(model: nn.Layer) -> set:
    """Names of BatchNorm running statistics: paddle stores them as stop-gradient parameters."""
    names = set()
    for prefix, layer in model.named_sublayers():
        if isinstance(layer, nn.layer.norm._BatchNormBase):
            names.update({f"{prefix}._mean", f"{prefix}._variance"})
    return names


class ModelEMA:
    """Shadow copy of `model.state_dict()` updated after every optimiser step."""

    def __init__(self, model: nn.Layer, decay: float = 0.9999, filter_no_grad: bool = True,
                 ramp_steps: int = RAMP_STEPS):
        if ramp_steps <= 0:
            raise ValueError(f"ema_ramp_steps must be positive, got {ramp_steps}")
        self.decay, self.ramp_steps, self.step = decay, ramp_steps, 0
        # Frozen weights (stem, frozen norms) are taken from the model as they are, not averaged:
        # averaging a constant from zero would shrink it. BN running statistics are averaged.
        bn_stats = _batch_norm_stats(model)
        frozen = {name for name, p in model.named_parameters()
                  if p.stop_gradient and name not in bn_stats} if filter_no_grad else set()
        self.shadow: Dict[str, paddle.Tensor] = {
            name: paddle.zeros(value.shape, dtype="float32")
            for name, value in model.state_dict().items() if name not in frozen}

    def current_decay(self) -> float:
        """The decay used by the next update: ramps from ~0 towards `decay`."""
        return ramped_decay(self.step, self.decay, self.ramp_steps)

    @paddle.no_grad()
    def update(self, model: nn.Layer) -> None:
        """shadow = d * shadow + (1 - d) * weights, for every averaged entry."""
        decay = self.current_decay()
        for name, value in model.state_dict().items():
            if name in self.shadow:
                value = value.astype("float32")
                self.shadow[name] = decay * self.shadow[name] + (1 - decay) * value
        self.step += 1

    def averaged(self, model: nn.Layer) -> Dict[str, paddle.Tensor]:
        """The EMA weights to load with `set_state_dict`; the model's own before any update."""
        weights = {name: value.clone() for name, value in model.state_dict().items()}
        if self.step > 0:  # (ppdet would hand back the zero initial average at step 0)
            weights.update({name: value.astype(weights[name].dtype)
                            for name, value in self.shadow.items()})
        return weights

    def state_dict(self) -> dict:
        """Everything needed to continue averaging after a resume."""
        return {"step": self.step, "shadow": self.shadow}

    def set_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`; a missing or extra key is an error (wrong checkpoint)."""
        if set(state["shadow"]) != set(self.shadow):
            raise ValueError("EMA state does not match the model's parameters "
                             f"(missing {sorted(set(self.shadow) - set(state['shadow']))[:5]})")
        self.step = int(state["step"])
        self.shadow = {k: paddle.assign(v).astype("float32")  # arrays or tensors
                       for k, v in state["shadow"].items()}
