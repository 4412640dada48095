"""The latency protocol, the one way the course and its benchmarks time anything.

How: `warmup` untimed calls, then `runs` timed ones (`timed`). Several predictors of one runtime
are timed in interleaved rounds, one call each per round in a rotating order
(`interleaved_times`), so a burst of other work on the machine lands on all of them alike.
Predictors of different runtimes (paddle eager, Paddle Inference, ONNX Runtime, OpenVINO) are
not interleaved but timed one runtime after another (`times_by_runtime`): a runtime's worker
threads can stay busy after its call and slow the next runtime's (ONNX Runtime's spinning, now
off in `OnnxPredictor`, slowed paddle by about a third; bench/bench_timing.py once read ONNX
Runtime at 5.6 ms alone and 7.3-8.9 ms in turns with eager and OpenVINO, but a second run
could not tell the two apart).
What is reported: the median and the quartiles (`latency_stats`; `latency_record` adds the
machine, the library versions and the counts, so a reader can reproduce the line). Compare
only what one run timed: on this project's machine, a VM on shared hardware, the same ONNX
Runtime file read 5.6 ms in one run and 9.0-10.2 ms twenty minutes later with nothing else
running in the VM, while each run's quartiles stayed within about 1 ms.
Used by the chapters (02; 05, 06 through `course.query_study` and `course.deploy`),
`mrtdetr deploy --run_benchmark` and `bench/`."""

import os
import platform
import re
import time
from importlib import metadata
from typing import Any, Callable, Dict, Hashable, List, Sequence, TypeVar

import numpy as np

LIBRARIES = ("paddlepaddle", "onnxruntime", "openvino", "tensorrt")


def machine(threads: int = 0) -> Dict[str, object]:
    """CPU model (/proc/cpuinfo's `model name`), logical cores, and the threads a run used."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:  # not Linux
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads or os.cpu_count()}


def versions() -> Dict[str, str]:
    """Installed versions of the runtimes a latency depends on (absent ones left out)."""
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


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


def interleaved_times(predictors: Sequence[Callable[[], Any]], runs: int = 20,
                      warmup: int = 2) -> np.ndarray:
    """Milliseconds [len(predictors), runs]: every predictor warmed up `warmup` times first,
    then one call each per round, the order rotating round by round, so a change of load on
    the machine lands on every predictor alike (timing them one after the other would not)."""
    for predict in predictors:
        timed(predict, warmup, 0)
    times = np.zeros((len(predictors), runs))
    for run in range(runs):
        for k in np.roll(np.arange(len(predictors)), run):
            times[k, run] = 1000 * timed(predictors[k], 0, 1)[0]
    return times


Key = TypeVar("Key", bound=Hashable)


def runtime(backend: str) -> str:
    """The runtime of a backend name, the part before its first - or _: "ort_int8" -> "ort",
    "openvino-bf16" -> "openvino", "eager" -> "eager"."""
    return re.split(r"[-_]", backend)[0]


def times_by_runtime(predictors: Dict[Key, Callable[[], Any]], runtime_of: Callable[[Key], str],
                     runs: int = 20, warmup: int = 2) -> Dict[Key, np.ndarray]:
    """Milliseconds [runs] per predictor: those of one runtime (`runtime_of(key)`) timed in
    interleaved rounds, one runtime after another, in the order the keys first name them."""
    groups: Dict[str, List[Key]] = {}
    for key in predictors:
        groups.setdefault(runtime_of(key), []).append(key)
    times: Dict[Key, np.ndarray] = {}
    for keys in groups.values():
        rows = interleaved_times([predictors[key] for key in keys], runs, warmup)
        times.update(zip(keys, rows))
    return {key: times[key] for key in predictors}


def quartiles_ms(times_ms: Sequence[float]) -> np.ndarray:
    """[q25, median, q75] of times in milliseconds: the protocol's statistics."""
    return np.percentile(np.asarray(times_ms, dtype="float64"), [25, 50, 75])


def latency_stats(times_ms: Sequence[float]) -> Dict[str, float]:
    """latency_ms (median), latency_q25_ms and latency_q75_ms (the quartiles: the spread)."""
    q25, median, q75 = quartiles_ms(times_ms)
    return {"latency_ms": float(median), "latency_q25_ms": float(q25),
            "latency_q75_ms": float(q75)}


def latency_record(seconds: Sequence[float], warmup: int, threads: int = 0) -> Dict[str, object]:
    """The protocol's fields for timed runs: median and interquartile range in ms, warm-up and
    run counts, machine and library versions."""
    q25, median, q75 = quartiles_ms(1000 * np.asarray(seconds, "float64"))
    return {"median_ms": round(float(median), 1), "q25_ms": round(float(q25), 1),
            "q75_ms": round(float(q75), 1), "iqr_ms": round(float(q75 - q25), 1),
            "warmup": warmup, "runs": len(seconds), "machine": machine(threads),
            "versions": versions()}
