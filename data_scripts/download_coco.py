"""Download COCO 2017 (train/val images, instance annotations) and unpack it for training.

    python data_scripts/download_coco.py [--dest dataset/coco] [--only val annotations]

Each archive comes from the official site, resumes where it stopped when the script is run
again after an interruption, is checked against its official size and MD5 sum, and is unpacked
to DEST/train2017, DEST/val2017 and DEST/annotations (the layout of the COCO presets' DataConfig).
About 20 GB in all (train2017.zip alone is 18 GB); `--only val annotations` fetches 1 GB, enough
to evaluate. Finished steps are remembered, so running it twice does nothing the second time.
"""

import argparse
import os
import shutil
import sys
import zipfile
from typing import Dict, List, NamedTuple, Optional, Sequence

BASE_URL = "http://images.cocodataset.org"


class Archive(NamedTuple):
    path: str  # on the server, under BASE_URL
    size: int  # bytes
    md5: str
    folder: str  # what unpacking creates in DEST


ARCHIVES: Dict[str, Archive] = {
    "train": Archive("zips/train2017.zip", 19_336_861_798, "cced6f7f71b7629ddf16f17bbcfab6b2",
                     "train2017"),
    "val": Archive("zips/val2017.zip", 815_585_330, "442b8da7639aecaf257c1dceb8ba8c80",
                   "val2017"),
    "annotations": Archive("annotations/annotations_trainval2017.zip", 252_907_541,
                           "f4bbac642086de4f52a3fdda2de5fa2c", "annotations"),
}


def _gb(size: int) -> str:
    return f"{size / 1e9:.1f} GB"


def unpack(zip_path: str, dest: str, progress: bool = True) -> None:
    """Extract a zip into dest with a progress bar (files already there are overwritten)."""
    from tqdm.auto import tqdm

    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = archive.infolist()
            for member in tqdm(members, desc=f"unpack {os.path.basename(zip_path)}",
                               unit="file", disable=not progress):
                archive.extract(member, dest)
    except zipfile.BadZipFile as err:
        raise RuntimeError(f"{zip_path} is not a valid zip ({err}); delete it and run again"
                           ) from None


def fetch(name: str, archive: Archive, dest: str, base_url: str = BASE_URL,
          keep_zip: bool = False, progress: bool = True) -> str:
    """Download (resumable, checked), unpack and remember one archive; returns its folder."""
    from mrtdetr_lib.download import download

    folder, done = os.path.join(dest, archive.folder), os.path.join(dest, f".{name}.done")
    if os.path.isfile(done):
        print(f"{name}: already in {folder}")
        return folder
    zip_path = os.path.join(dest, os.path.basename(archive.path))
    if not os.path.isfile(zip_path):  # not yet fully downloaded and verified
        free = shutil.disk_usage(dest).free
        partial = os.path.getsize(zip_path + ".part") if os.path.isfile(zip_path + ".part") else 0
        if free < 2 * archive.size - partial:  # the zip, then its unpacked content
            raise RuntimeError(f"{name}: needs about {_gb(2 * archive.size)} free in {dest}, "
                               f"only {_gb(free)} left")
        url = f"{base_url.rstrip('/')}/{archive.path}"
        print(f"{name}: downloading {url} ({_gb(archive.size)})")
        download(url, zip_path, md5=archive.md5, size=archive.size, progress=progress)
    if os.path.getsize(zip_path) != archive.size:
        raise RuntimeError(f"{zip_path} has {os.path.getsize(zip_path)} bytes, expected "
                           f"{archive.size}; delete it and run again")
    unpack(zip_path, dest, progress)
    with open(done, "w") as f:  # only now: an interrupted unpack is redone
        f.write(archive.md5 + "\n")
    if not keep_zip:
        os.remove(zip_path)
    print(f"{name}: ready in {folder}")
    return folder


def download_coco(dest: str = "dataset/coco", only: Sequence[str] = tuple(ARCHIVES),
                  base_url: str = BASE_URL, archives: Optional[Dict[str, Archive]] = None,
                  keep_zips: bool = False, progress: bool = True) -> List[str]:
    """Fetch the chosen archives into dest; returns the unpacked folders."""
    archives = archives or ARCHIVES
    unknown = [name for name in only if name not in archives]
    if unknown:
        raise ValueError(f"unknown archive(s) {unknown}; choose from {list(archives)}")
    os.makedirs(dest, exist_ok=True)
    return [fetch(name, archives[name], dest, base_url, keep_zips, progress) for name in only]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", default="dataset/coco", help="where COCO goes")
    parser.add_argument("--only", nargs="+", choices=list(ARCHIVES), default=list(ARCHIVES),
                        help="fetch only these archives")
    parser.add_argument("--keep-zips", action="store_true", help="keep the zips after unpacking")
    parser.add_argument("--base-url", default=BASE_URL, help="a mirror of images.cocodataset.org")
    args = parser.parse_args(argv)
    try:
        download_coco(args.dest, args.only, args.base_url, keep_zips=args.keep_zips)
    except (RuntimeError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"COCO is in {args.dest}; check it with: python data_scripts/check_dataset.py "
          f"{args.dest}/annotations/instances_val2017.json {args.dest}/val2017")
    return 0


if __name__ == "__main__":
    sys.exit(main())
