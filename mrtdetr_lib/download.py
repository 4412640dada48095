"""Downloads that survive interruptions: resume with HTTP Range, verify, then rename into place.

Used for the official weights (weights.py) and the COCO archives (data_scripts/download_coco.py).
A file at `dest` is always complete and verified: bytes arrive in `dest + ".part"`, which is
checked (size, md5/sha256) and renamed atomically; an interrupted download continues from the
part file next time.
"""

import hashlib
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Union

from tqdm.auto import tqdm

CHUNK = 1 << 20


def cache_dir() -> Path:
    """Where downloaded weights live: env MRTDETR_CACHE, default ~/.cache/mrtdetr."""
    return Path(os.environ.get("MRTDETR_CACHE", Path.home() / ".cache" / "mrtdetr"))


def file_digest(path: Union[str, Path], algorithm: str) -> str:
    """Hex digest (md5, sha256, ...) of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, url: str, size: Optional[int], md5: Optional[str],
            sha256: Optional[str]) -> None:
    """Raise (and delete the file) when its size or checksum is not the expected one."""
    checks = [("size", size, lambda: path.stat().st_size),
              ("md5", md5, lambda: file_digest(path, "md5")),
              ("sha256", sha256, lambda: file_digest(path, "sha256"))]
    for name, expected, actual_of in checks:
        if expected is None:
            continue
        actual = actual_of()
        if str(actual).lower() != str(expected).lower():
            path.unlink()
            raise IOError(f"{url}: {name} mismatch for the downloaded file (expected {expected}, "
                          f"got {actual}); the partial file was removed, run again to retry")


def _fetch(url: str, part: Path, progress: bool) -> None:
    """Append the rest of `url` to `part`, asking the server for the missing byte range."""
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:  # the part file is already whole
            return
        raise IOError(f"cannot download {url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        raise IOError(f"cannot download {url}: {getattr(err, 'reason', err)}") from None
    with response:
        if start and response.status != 206:  # the server ignored Range: start over
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        with open(part, "ab" if start else "wb") as out, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                desc=part.name[:-len(".part")], disable=not progress) as bar:
            for block in iter(lambda: response.read(CHUNK), b""):
                out.write(block)
                bar.update(len(block))
    if total is not None and part.stat().st_size < total:
        raise IOError(f"download of {url} stopped at {part.stat().st_size} of {total} bytes; "
                      "run again to resume")


def download(url: str, dest: Union[str, Path], sha256: Optional[str] = None,
             md5: Optional[str] = None, size: Optional[int] = None,
             progress: bool = True) -> Path:
    """Download `url` (http, https or file://) to `dest`, resuming a previous partial download.

    An existing `dest` is returned as it is (it was verified when it was written). Raises
    IOError naming the URL on network errors and on a size/checksum mismatch.
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if url.startswith("file://"):
        source = Path(urllib.request.url2pathname(url[len("file://"):]))
        if not source.is_file():
            raise IOError(f"cannot download {url}: no such file {source}")
        shutil.copyfile(source, part)
    else:
        _fetch(url, part, progress)
    _verify(part, url, size, md5, sha256)
    os.replace(part, dest)  # atomic: dest is never half written
    return dest
