"""A training dashboard: the Trainer's records as VisualDL scalars (ppdet's `--use_vdl`).

    writer = VisualDLWriter("vdl_log_dir/scalar")
    Trainer(cfg, callbacks=[writer]).train(); writer.close()
    visualdl --logdir vdl_log_dir/scalar --port 8040     # then open http://127.0.0.1:8040

The tags are PaddleDetection's (its VisualDLWriter callback): every loss term under its own name
(`loss`, `loss_class`, `loss_mask_aux`, ...) at each step, and each evaluation's AP as
`bbox-mAP` / `mask-mAP`. Added here: `lr`, and the other COCO numbers as `eval/<name>`
(`eval/mask_AP50`, ...). The x axis is the training step for both (ppdet counts evaluations
from 0), so a loss curve and the AP it led to line up. VisualDL is an optional extra:
`pip install -e ".[vdl]"` in the repository (or `pip install visualdl==2.5.3`).
"""

from typing import Any, Optional

from ..errors import UserError
from .log import Record

NOT_PLOTTED = ("kind", "step", "epoch", "seconds")  # bookkeeping, not curves


def scalar_tags(record: Record) -> dict:
    """{tag: value} of one Trainer record: a train record's losses and lr under their own
    names, an eval record's `<iou>_AP` as ppdet's `<iou>-mAP` and the rest as `eval/<name>`."""
    numbers = {k: float(v) for k, v in record.items()
               if k not in NOT_PLOTTED and isinstance(v, (int, float))}
    if record.get("kind") != "eval":
        return numbers
    return {(f"{k[:-3]}-mAP" if k in ("bbox_AP", "mask_AP") else f"eval/{k}"): v
            for k, v in numbers.items()}


class VisualDLWriter:
    """A Trainer callback that writes each record's scalars to a VisualDL log in `logdir`.

    The log file is opened at the first record, so only the process that receives records (the
    main one under `paddle.distributed.launch`) writes one. Records reach the disk every
    `flush_secs` and at each evaluation; call `close()` at the end.
    """

    def __init__(self, logdir: str = "vdl_log_dir/scalar", flush_secs: int = 10):
        try:
            import visualdl  # noqa: F401  (fail here, before training, not at the first step)
        except ImportError as err:  # a flag the environment cannot serve: the user's to fix
            raise UserError("--use_vdl needs VisualDL: pip install visualdl==2.5.3 "
                            '(or pip install -e ".[vdl]" in the repository)') from err
        self.logdir, self.flush_secs = logdir, flush_secs
        self.writer: Optional[Any] = None

    def __call__(self, record: Record) -> None:
        if self.writer is None:
            from visualdl import LogWriter

            self.writer = LogWriter(logdir=self.logdir, flush_secs=self.flush_secs)
        for tag, value in scalar_tags(record).items():
            self.writer.add_scalar(tag, value, record["step"])
        if record.get("kind") == "eval":
            self.writer.flush()

    def close(self) -> None:
        """Write what is pending and close the file (its writer thread would lose it at exit)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
