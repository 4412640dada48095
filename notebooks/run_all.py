"""Run every course notebook headless, in order, into an output folder; print a summary.

`make course` calls this (quick mode unless QUICK=0). Executed copies land in `--out`; the
notebooks in this folder are left as they are. Exit status 1 if any notebook failed.
"""

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent


def run_notebook(path: Path, out_dir: Path, timeout: int) -> tuple:
    """Execute one notebook with its folder as working directory; return (ok, seconds, error)."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.time()
    error = ""
    try:
        client.execute()
    except CellExecutionError as err:
        error = str(err).strip().splitlines()[-1][:200]
    except Exception as err:  # a dead kernel or a timeout: report it, run the next notebook
        error = f"{type(err).__name__}: {err}"[:200]
    nbformat.write(nb, out_dir / path.name)
    return not error, time.time() - start, error


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/course", help="folder for the executed copies")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    parser.add_argument("notebooks", nargs="*", help="notebooks to run (default: all numbered)")
    args = parser.parse_args(argv)
    paths = [Path(p) for p in args.notebooks] or sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        print("no notebooks found in", HERE)
        return 1
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in paths:
        print(f"running {path.name} ...", flush=True)
        rows.append((path.name, *run_notebook(path.resolve(), out_dir, args.timeout)))
    print(f"\n{'notebook':<28} {'result':<7} {'time':>8}")
    for name, ok, seconds, error in rows:
        print(f"{name:<28} {'ok' if ok else 'FAILED':<7} {seconds:>7.1f}s  {error}")
    print(f"executed copies in {out_dir}/")
    return 0 if all(ok for _, ok, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
