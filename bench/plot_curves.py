"""Plot the mask AP curves of `bench/train_shapes.py` runs (its JSON lines) against minutes.

    python bench/train_shapes.py --minutes 10 --procs 2 -c configs/tiny_shapes_10min.yml \
        >> runs.jsonl
    python bench/plot_curves.py runs.jsonl -o curves.png [--target 0.5]

One line per run, labelled with its seed and final mask AP; a dashed line marks the target.
"""

import argparse
import json
import sys
from typing import List

import matplotlib

matplotlib.use("Agg")  # a file, no display
import matplotlib.pyplot as plt  # noqa: E402


def read_runs(paths: List[str]) -> List[dict]:
    """The `train_shapes` records of the given JSON-lines files (other lines are skipped)."""
    runs = []
    for path in paths:
        with open(path) as f:
            for line in f:
                if line.strip().startswith("{"):
                    record = json.loads(line)
                    if record.get("what") == "train_shapes":
                        runs.append(record)
    if not runs:
        raise SystemExit(f"no train_shapes record in {', '.join(paths)}")
    return runs


def plot(runs: List[dict], out: str, target: float) -> None:
    """Mask AP (EMA weights, val split) against training minutes, one line per run."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for run in runs:
        minutes = [0.0] + [p["minutes"] for p in run["curve"]]
        ap = [0.0] + [p["mask_AP"] for p in run["curve"]]
        ax.plot(minutes, ap, marker="o", ms=3,
                label=f"seed {run.get('seed', '?')}: {run['mask_AP']:.3f}")
    ax.axhline(target, ls="--", c="gray", lw=1, label=f"target {target}")
    ax.set_xlabel("training minutes (2 CPU cores; the clock stops while evaluating)")
    ax.set_ylabel("mask AP (val)")
    ax.set_ylim(0, max(target, max(r["best_mask_AP"] for r in runs)) * 1.1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"tiny from scratch on shapes: {runs[0]['config']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("jsonl", nargs="+", help="files holding train_shapes JSON lines")
    parser.add_argument("-o", "--out", default="train_curves.png")
    parser.add_argument("--target", type=float, default=0.5)
    args = parser.parse_args(argv)
    plot(read_runs(args.jsonl), args.out, args.target)
    print(json.dumps({"what": "plot_curves", "out": args.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
