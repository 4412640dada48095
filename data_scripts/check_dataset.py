"""Check a COCO-format instance segmentation data set before training on it.

    python data_scripts/check_dataset.py ANNOTATIONS.json IMAGE_DIR [--skip-images]
        [--num_classes K | -c CONFIG]

Prints the category ids training will use (COCO id -> label, name), then every problem with its
file and image/annotation ids (missing or corrupt images, sizes that disagree with the json, bad
boxes, degenerate polygons, wrong RLE, NaN or infinite numbers, unknown categories, duplicate
ids, a category count that is not the model's num_classes) and warnings (EXIF-rotated images,
unused categories, crowd regions), and exits with status 1 if there is a problem. A COCO json
from CVAT or Roboflow is checked as it is.
"""

import argparse
import os
import sys
from typing import List, Optional

from mrtdetr_lib.config import get_config, load_config
from mrtdetr_lib.data.check import check_dataset


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("annotations", help="COCO json, e.g. annotations/instances_train2017.json")
    parser.add_argument("image_dir", help="folder with the images named in the json")
    parser.add_argument("--skip-images", action="store_true",
                        help="check the json only (no image decoding)")
    parser.add_argument("--threads", type=int, default=4, help="threads that decode images")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    classes = parser.add_mutually_exclusive_group()
    classes.add_argument("--num_classes", type=int, help="the model's number of classes")
    classes.add_argument("-c", "--config", help="a config (or preset) whose model.num_classes "
                                                "the categories must fit")
    args = parser.parse_args(argv)
    num_classes = args.num_classes
    if args.config:
        try:
            num_classes = (load_config(args.config) if os.path.isfile(args.config)
                           else get_config(args.config)).model.num_classes
        except ValueError as err:
            print(f"check_dataset: -c {args.config}: {err}", file=sys.stderr)
            return 2
    report = check_dataset(args.annotations, args.image_dir, not args.skip_images, args.threads,
                           progress=not args.no_progress, num_classes=num_classes)
    if report.category_map:
        print(report.category_table())
    print(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
