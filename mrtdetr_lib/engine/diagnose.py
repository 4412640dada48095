"""Two silent failures of a fine-tuning run, turned into one warning each that says what to check.

Collapsed predictions (every query of an image the same box, or the same score) and an AP that
stays 0 while the loss falls are what users of DETR models report most when training on their own
data (PaddleDetection #8381, #8400): the loss alone looks healthy. The Trainer calls these on the
last decoder layer's training outputs (every `log_iter` steps after the warm-up: a fresh model
starts with every query on the same box) and after each evaluation.
"""

from typing import Optional, Sequence, Tuple

import numpy as np
import paddle

SPREAD_TOL = 1e-3  # below this spread over queries (normalised units / probability): collapsed
STUCK_EVALS = 3  # AP 0 at this many evaluations in a row, with the loss falling: warn
CHECKS = ("check: the learning rate (train.base_lr: try 10x lower, and warm-up), that category "
          "ids fit model.num_classes (data_scripts/check_dataset.py prints the map), and that "
          "masks and boxes are not empty or outside the image (look at a few samples)")


def query_spread(logits: paddle.Tensor, boxes: paddle.Tensor) -> Tuple[float, float]:
    """(box spread, score spread): the largest per-image std over the Q queries of the boxes
    [B, Q, 4] (normalised cx,cy,w,h; the largest of the 4) and of the best class probability
    (from logits [B, Q, K])."""
    boxes_np = boxes.numpy().astype(np.float64)
    scores = 1.0 / (1.0 + np.exp(-logits.numpy().astype(np.float64).max(-1)))  # [B, Q]
    return float(boxes_np.std(axis=1).max()), float(scores.std(axis=1).max())


def collapse_problem(logits: paddle.Tensor, boxes: paddle.Tensor,
                     tol: float = SPREAD_TOL) -> Optional[str]:
    """A message when every query of every image predicts the same box or the same score."""
    box_spread, score_spread = query_spread(logits, boxes)
    same = [what for what, spread in (("box", box_spread), ("score", score_spread))
            if spread < tol]
    if not same:
        return None
    return (f"predictions collapsed: every query predicts the same {' and the same '.join(same)} "
            f"(spread over queries: boxes {box_spread:.1e}, scores {score_spread:.1e}); the model "
            f"no longer looks at the image. {CHECKS}")


def stuck_problem(history: Sequence[Tuple[float, float]],
                  evals: int = STUCK_EVALS) -> Optional[str]:
    """A message when the AP of the last `evals` evaluations is 0 while the mean training loss
    fell; `history` holds one (AP, mean train loss before that evaluation) per evaluation."""
    recent = list(history)[-evals:]
    if len(recent) < evals or any(ap > 0 for ap, _ in recent):
        return None
    first, last = recent[0][1], recent[-1][1]
    if not last < first:
        return None
    return (f"AP stayed 0 for {evals} evaluations while the training loss fell from {first:.3g} "
            f"to {last:.3g}: the model learns something the evaluation does not count. Also "
            f"check that the val annotations use the train categories. {CHECKS}")
