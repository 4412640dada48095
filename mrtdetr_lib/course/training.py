"""Chapter 03's instruments: what the matcher decides on, lr multipliers, the gradient norm
that clipping compares, a parameter's raw and EMA trace, and a live training plot.

Each looks at the core (`loss/matcher.py`, `engine/trainer.py`) through its public functions;
none of it is needed to train.
"""

import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import paddle
from paddle import nn
from scipy.optimize import linear_sum_assignment

from ..config import TERMS
from ..engine.log import Record, plot_log
from ..loss.matcher import HungarianMatcher, per_image
from ..weights import count_parameters


@paddle.no_grad()
def cost_matrices(matcher: HungarianMatcher, boxes: paddle.Tensor, logits: paddle.Tensor,
                  masks: paddle.Tensor, gt_bbox: List[paddle.Tensor],
                  gt_class: List[paddle.Tensor], gt_mask: List[paddle.Tensor]
                  ) -> List[Dict[str, np.ndarray]]:
    """What `matcher(...)` decides on, per image: the weighted terms (class, bbox, giou, mask,
    dice) and their sum `total`, each [Q, n_i], and the assignment made from `total` (`query`,
    `gt`: index arrays). Draws its own mask points (one paddle.rand), as the matcher does."""
    batch, num_queries = boxes.shape[:2]
    num_gts = [len(c) for c in gt_class]
    terms = ({k: paddle.zeros([batch * num_queries, 0]) for k in TERMS}
             if sum(num_gts) == 0 else
             matcher.cost_terms(boxes, logits, masks, gt_bbox, gt_class, gt_mask, num_gts))
    weighted = {k: matcher.matcher_coeff[k] * v for k, v in terms.items()}
    weighted["total"] = matcher.weighted_sum(terms)
    blocks = {k: list(per_image(v.numpy().reshape(batch, num_queries, sum(num_gts)), num_gts))
              for k, v in weighted.items()}
    result = []
    for i in range(batch):
        item = {k: per_image_blocks[i] for k, per_image_blocks in blocks.items()}
        item["query"], item["gt"] = linear_sum_assignment(item["total"])
        result.append(item)
    return result


def lr_multipliers(model: nn.Layer, depth: int = 3) -> List[Tuple[str, str, int]]:
    """Parameters grouped by the first `depth` parts of their names and their ParamAttr lr
    multiplier ("frozen" when not trained): rows (prefix, multiplier, number of weights)."""
    groups: Dict[Tuple[str, str], Dict[str, List[int]]] = {}
    for name, p in model.named_parameters():
        mult = "frozen" if p.stop_gradient else f"{p.optimize_attr['learning_rate']:g}"
        groups.setdefault((".".join(name.split(".")[:depth]), mult), {})[name] = p.shape
    return [(prefix, mult, count_parameters(shapes)["total"])
            for (prefix, mult), shapes in groups.items()]


def global_grad_norm(model: nn.Layer) -> float:
    """sqrt of the sum of every trainable gradient squared: what ClipGradByGlobalNorm compares
    with clip_grad_norm (above it, all gradients are scaled by clip / norm)."""
    squares = [paddle.sum(p.grad.astype("float32") ** 2) for p in model.parameters()
               if not p.stop_gradient and p.grad is not None]
    return math.sqrt(float(paddle.add_n(squares))) if squares else 0.0


class WeightTrace:
    """Trainer callback: one entry of a parameter, raw and EMA, after every step (`.steps`,
    `.raw`, `.ema` lists), to see what the moving average does."""

    def __init__(self, trainer: Any, name: str, index: int = 0):
        self.trainer, self.name, self.index = trainer, name, index
        self.steps: List[int] = []
        self.raw: List[float] = []
        self.ema: List[float] = []

    def __call__(self, record: Record) -> None:
        if record["kind"] != "train":
            return
        raw = self.trainer.model.state_dict()[self.name]
        ema = self.trainer.ema.shadow[self.name] if self.trainer.ema else raw
        self.steps.append(record["step"])
        self.raw.append(float(raw.flatten()[self.index]))
        self.ema.append(float(ema.flatten()[self.index]))


class LivePlot:
    """Trainer callback that redraws `plot_log` in a notebook every `every` steps and after eval."""

    def __init__(self, every: int = 10, smooth: int = 10):
        self.every, self.smooth = every, smooth
        self.records: List[Record] = []
        self.handle: Optional[Any] = None

    def __call__(self, record: Record) -> None:
        import matplotlib.pyplot as plt
        from IPython.display import display

        self.records.append(record)
        if record["kind"] == "train" and record["step"] % self.every:
            return
        figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        plot_log(self.records, axes, self.smooth)
        if self.handle is None:
            self.handle = display(figure, display_id=True)
        else:
            self.handle.update(figure)
        plt.close(figure)
