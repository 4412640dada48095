"""The latency protocol: every latency line says on what machine, with which libraries and how
it was measured (warm-up and run counts, median and interquartile range), so a reader can
reproduce it. Used by `mrtdetr deploy --run_benchmark`, bench/bench_deploy.py and
bench/check_trt.py."""

import os
import platform
from importlib import metadata
from typing import Dict, Sequence

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


def latency_record(seconds: Sequence[float], warmup: int, threads: int = 0) -> Dict[str, object]:
    """The protocol's fields for timed runs: median and interquartile range in ms, warm-up and
    run counts, machine and library versions."""
    q25, median, q75 = np.percentile(1000 * np.asarray(seconds, "float64"), [25, 50, 75])
    return {"median_ms": round(float(median), 1), "q25_ms": round(float(q25), 1),
            "q75_ms": round(float(q75), 1), "iqr_ms": round(float(q75 - q25), 1),
            "warmup": warmup, "runs": len(seconds), "machine": machine(threads),
            "versions": versions()}
