"""Atomic file writes: a reader, or a kill mid-write, never meets a half-written file.

Checkpoints, logs, plots, data set json and TensorRT engines are all written the same way: to
`path.tmp` in the same folder, synced to disk, then renamed over `path` (`os.replace` is atomic
within one file system), so the old file stays whole until the new one is complete.
"""

import os
from pathlib import Path
from typing import Callable, Union


def atomic_write(path: Union[str, Path], write: Callable[[str], None]) -> str:
    """`write(tmp)` writes the whole file under `tmp` (= `path` + ".tmp"); then fsync and rename
    it over `path`. A failure removes `tmp` and leaves `path` as it was. Returns `path`."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"  # one writer per path; a stale one from a kill is overwritten
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # on disk before the rename makes it the file
        os.replace(tmp, path)
    except OSError as err:
        if err.filename is None and err.errno:  # a full disk fails in write(), which names no file
            raise OSError(err.errno, err.strerror, path) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
