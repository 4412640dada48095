"""Training records: a JSON-lines log, curves from it, and a live plot callback for notebooks.

Every record is a flat dict with `kind` ("train" per step, "eval" per evaluation), `step`, `epoch`
and numbers (`loss`, the loss terms, `lr`; `bbox_AP`, `mask_AP`, ... for eval).
"""

import json
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Union

from ..files import atomic_write

Record = Dict[str, Any]


class JsonLinesLog:
    """Appends one JSON object per line; survives interruption (each line is flushed)."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path

    def __call__(self, record: Record) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def keep_until(self, step: int) -> None:
        """Drop the records after `step` (0: all): a fresh run starts a new log, a resumed one
        forgets the steps done after its checkpoint (they are done again)."""
        if not os.path.exists(self.path):
            return
        write_log(self.path, [r for r in read_log(self.path)
                              if r.get("step", 0) <= step] if step else [])


def write_log(path: Union[str, Path], records: Iterable[Record]) -> None:
    """Write `records` as a JSON-lines log, whole or not at all: a kill never leaves half."""
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def read_log(path: str) -> List[Record]:
    """The records of a `train_log.jsonl` (a torn last line from a kill is skipped)."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def plot_log(log: Union[str, Iterable[Record]], axes: Any = None, smooth: int = 10) -> Any:
    """Loss (raw and running mean over `smooth` steps) and eval AP against step; returns axes."""
    import matplotlib.pyplot as plt
    import numpy as np

    records = read_log(log) if isinstance(log, str) else list(log)
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = np.array([r["step"] for r in train])
    loss = np.array([r["loss"] for r in train])
    axes[0].plot(steps, loss, alpha=0.3, label="loss")
    if len(loss) >= smooth:
        running = np.convolve(loss, np.ones(smooth) / smooth, mode="valid")
        axes[0].plot(steps[smooth - 1:], running, label=f"mean of {smooth}")
    axes[0].set(xlabel="step", ylabel="loss", yscale="log" if len(loss) else "linear")
    axes[0].legend()
    for key in ("mask_AP", "bbox_AP", "mask_AP50"):
        if evals and key in evals[0]:
            axes[1].plot([r["step"] for r in evals], [r[key] for r in evals], "o-", label=key)
    axes[1].set(xlabel="step", ylabel="AP", ylim=(0, 1))
    for prev, rec in zip(train, train[1:]):  # a log of several stages (`stage` in each record)
        if rec.get("stage", 1) != prev.get("stage", 1):
            for ax in axes[:2]:
                ax.axvline(prev["step"], color="gray", ls="--", lw=1)
            axes[1].text(prev["step"], 0.03, f" stage {rec['stage']}", color="gray")
    if evals:
        axes[1].legend()
    return axes


def save_curves(log_path: str, image_path: str, smooth: int = 10) -> str:
    """`plot_log` of a log file written to a PNG (no pyplot: safe inside a notebook or a
    headless run); returns `image_path`."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.5))
    plot_log(log_path, figure.subplots(1, 2), smooth)
    figure.tight_layout()
    # written aside, then renamed: a reader never sees half a PNG
    return atomic_write(image_path, lambda tmp: figure.savefig(tmp, dpi=100, format="png"))
