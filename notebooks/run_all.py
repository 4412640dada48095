"""Run every course notebook headless, in order, into an output folder; print a summary.

`make course` calls this (quick mode unless QUICK=0). Executed copies land in `--out`, with
summary.md (the table printed at the end: notebook, ok/FAILED, seconds) and summary.json; the
notebooks in this folder are left as they are. Exit status 1 if any notebook failed.
"""

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the colours of IPython's tracebacks


def run_notebook(path: Path, out_dir: Path, timeout: int) -> Tuple[bool, float, str]:
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
    return not error, time.time() - start, ANSI.sub("", error)


def summary_table(rows: List[Dict]) -> str:
    """Markdown table of the runs, one row per notebook and a total."""
    lines = ["| notebook | result | seconds | error |", "|---|---|---:|---|"]
    lines += [f"| {r['notebook']} | {'ok' if r['ok'] else 'FAILED'} | {r['seconds']:.1f} | "
              f"{r['error'].replace('|', '/')} |" for r in rows]
    total = sum(r["seconds"] for r in rows)
    passed = sum(r["ok"] for r in rows)
    lines.append(f"| **total** | {passed}/{len(rows)} ok | {total:.1f} | |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
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
        ok, seconds, error = run_notebook(path.resolve(), out_dir, args.timeout)
        rows.append({"notebook": path.name, "ok": ok, "seconds": round(seconds, 1),
                     "error": error})
        print(f"  {'ok' if ok else 'FAILED'} in {seconds:.1f} s {error}", flush=True)
    quick = os.environ.get("MRTDETR_QUICK", "0")
    table = summary_table(rows)
    print("\n" + table)
    (out_dir / "summary.md").write_text(f"# make course (MRTDETR_QUICK={quick})\n\n{table}\n")
    (out_dir / "summary.json").write_text(json.dumps(
        {"quick": quick, "notebooks": rows,
         "total_seconds": round(sum(r["seconds"] for r in rows), 1)}, indent=1) + "\n")
    print(f"executed copies and summary.md / summary.json in {out_dir}/")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
