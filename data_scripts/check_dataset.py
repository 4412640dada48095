"""Check a COCO-format instance segmentation data set before training on it.

    python data_scripts/check_dataset.py ANNOTATIONS.json IMAGE_DIR [--skip-images]

Prints every problem with its file and image/annotation ids (missing or corrupt images, sizes
that disagree with the json, bad boxes, degenerate polygons, wrong RLE, NaN or infinite numbers,
unknown categories, duplicate ids) and exits with status 1 if there is any.
"""

import argparse
import sys
from typing import List, Optional

from mrtdetr_lib.data.check import check_dataset


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("annotations", help="COCO json, e.g. annotations/instances_train2017.json")
    parser.add_argument("image_dir", help="folder with the images named in the json")
    parser.add_argument("--skip-images", action="store_true",
                        help="check the json only (no image decoding)")
    parser.add_argument("--threads", type=int, default=4, help="threads that decode images")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    report = check_dataset(args.annotations, args.image_dir, not args.skip_images, args.threads,
                           progress=not args.no_progress)
    print(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
