"""Process-wide settings, applied where a program starts (the CLI, the benchmarks, the course
helpers, the tests), never by `import mrtdetr_lib`: a library should not change its host.

`setup()` quiets paddle and chooses the thread count. Call it before the first paddle import
for the logging part to take effect (GLOG_minloglevel is read when paddle's C++ core loads).
"""

import os
import warnings

# Messages that paddle repeats for every layer or tensor: noise, not news.
_NOISE = (
    "No ccache found",
    "When training, we now always track global mean",  # every BatchNorm, frozen ones too
    "Tensor do not have 'place' interface",  # every tensor paddle.jit.to_static traces
    "Found 'dict' in given outputs",  # we name the exported outputs ourselves
)


def quiet_paddle() -> None:
    """Keep paddle's C++ logging to errors (nbval compares stderr), filter its repeated Python
    warnings, and never let polygraphy (used by paddle2onnx) pip-install packages."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("POLYGRAPHY_AUTOINSTALL_DEPS", "0")
    for message in _NOISE:
        warnings.filterwarnings("ignore", message=message)


def set_num_threads(num_threads: int = 0) -> int:
    """Use `num_threads` CPU threads in paddle (0 = env MRTDETR_THREADS, else this process's
    share of the cores)."""
    import paddle

    if num_threads <= 0:
        num_threads = int(os.environ.get("MRTDETR_THREADS", "0")) or cores_per_process()
    # Many machines export OMP_NUM_THREADS=1, which would leave paddle on one core.
    paddle.base.core.set_num_threads(num_threads)
    return num_threads


def cores_per_process() -> int:
    """Every core, shared among the processes paddle.distributed.launch started on this machine
    (two processes of one thread train `tiny` 1.5x faster on 2 cores than one of two threads)."""
    processes = int(os.environ.get("PADDLE_LOCAL_SIZE", "1") or 1)
    return max(1, (os.cpu_count() or 1) // max(1, processes))


def setup(num_threads: int = 0) -> int:
    """`quiet_paddle()` then `set_num_threads(num_threads)`; returns the thread count."""
    quiet_paddle()
    return set_num_threads(num_threads)
