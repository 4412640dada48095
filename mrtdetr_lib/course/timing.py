"""Wall-clock timing shared by the query study and the benchmarks."""

import time
from typing import Callable, List


def timed(fn: Callable[[], object], warmup: int, runs: int) -> List[float]:
    """Seconds of each of `runs` calls of fn, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds
