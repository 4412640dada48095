"""Convert LabelMe, YOLO-seg or VOC-style mask annotations to a COCO instance data set.

    python data_scripts/x2coco.py --dataset_type labelme --json_input_dir LABELME_DIR \\
        --output_dir dataset/mine --train_proportion 0.8 --val_proportion 0.2 [--labels labels.txt]
    python data_scripts/x2coco.py --dataset_type yolo_seg --json_input_dir labels/train \\
        --image_input_dir images/train --labels data.yaml --output_dir dataset/mine
    python data_scripts/x2coco.py --dataset_type masks --json_input_dir SegmentationObject \\
        --class_input_dir SegmentationClass --image_input_dir JPEGImages --labels class_names.txt \\
        --output_dir dataset/mine

PaddleDetection's tools/x2coco.py flags and layout: OUTPUT_DIR/annotations/instance_{train,val,
test}.json and the images in OUTPUT_DIR/{train,val,test}/ (a split is written when its proportion
is above 0). The formats and their rules: mrtdetr_lib/data/convert.py. Every bad input is printed
on one line with its file and shape, and the exit status is 1; nothing is written then.
"""

import argparse
import sys
from typing import List, Optional

from mrtdetr_lib.data.convert import convert
from mrtdetr_lib.errors import UserError


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_type", required=True, choices=("labelme", "yolo_seg", "masks"))
    parser.add_argument("--json_input_dir", required=True,
                        help="labelme json files, YOLO .txt labels, or instance-id PNGs")
    parser.add_argument("--image_input_dir",
                        help="the images (labelme: optional, imagePath is relative to the json)")
    parser.add_argument("--class_input_dir", help="masks: class-id PNGs (SegmentationClass)")
    parser.add_argument("--output_dir", default="./", help="where annotations/ and the splits go")
    for split, default in (("train", 1.0), ("val", 0.0), ("test", 0.0)):
        parser.add_argument(f"--{split}_proportion", type=float, default=default,
                            help=f"share of the images in {split} (default {default})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split's shuffle")
    parser.add_argument("--keep_empty", action="store_true",
                        help="keep images without objects (train them with allow_empty)")
    parser.add_argument("--labels", help="class names: labelme labels.txt, YOLO data.yaml or "
                                         "classes.txt, masks: line k names class value k")
    args = parser.parse_args(argv)
    try:
        counts = convert(args.dataset_type, args.json_input_dir, args.image_input_dir,
                         args.output_dir, (args.train_proportion, args.val_proportion,
                                           args.test_proportion),
                         args.seed, args.keep_empty, args.labels, args.class_input_dir)
    except UserError as err:
        print(err, file=sys.stderr)
        return 1
    for split, (images, objects) in counts.items():
        print(f"{split}: {images} images, {objects} annotations -> "
              f"{args.output_dir}/annotations/instance_{split}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
