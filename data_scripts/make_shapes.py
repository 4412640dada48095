"""Build the synthetic shapes data set (`make course` runs this first; it is a no-op when the
data set already exists with the same parameters).

    python data_scripts/make_shapes.py [--out dataset/shapes] [--train N] [--val N]

Default sizes: 1000 train / 100 val images, 300 / 50 with MRTDETR_QUICK=1.
"""

import argparse
import sys
import time
from typing import List, Optional

from mrtdetr_lib.data.shapes import make_shapes


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="dataset/shapes", help="output folder")
    parser.add_argument("--train", type=int, default=None, help="number of training images")
    parser.add_argument("--val", type=int, default=None, help="number of validation images")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    start = time.time()
    made = make_shapes(args.out, args.train, args.val, args.size, args.seed,
                       progress=not args.no_progress)
    if made:
        print(f"shapes data set written to {args.out} in {time.time() - start:.1f} s")
    else:
        print(f"shapes data set in {args.out} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
