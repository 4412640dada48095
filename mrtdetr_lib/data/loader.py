"""Batches in the model's input format: data set + transforms -> paddle.io.DataLoader.

Mirrors `ppdet/data/reader.py` with the Mask RT-DETR reader's `collate_batch: false`: `image`
[B,3,H,W], `im_shape` [B,2] and `scale_factor` [B,2] are stacked, the targets `gt_class` [n,1],
`gt_bbox` [n,4] (normalised cx,cy,w,h) and `gt_segm` [n,H,W] stay one array per image (n varies).
Eval batches carry `im_id` [B,1] and `orig_size` [B,2] (h, w) instead of targets.
"""

import math
import os
import traceback
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import paddle
from paddle.io.dataloader.collate import default_collate_fn

from ..config import Config, DataConfig
from ..errors import UserError
from .coco import COCOInstanceDataset
from .transforms import eval_transforms, train_transforms

STACKED = ("image", "im_shape", "scale_factor", "im_id", "orig_size")
PER_IMAGE = ("gt_class", "gt_bbox", "gt_segm")


class Collate:
    """Run the batch transforms, then stack the image fields and list the targets per image."""

    def __init__(self, batch_transforms: Sequence[Callable] = ()):
        self.batch_transforms = list(batch_transforms)

    def __call__(self, samples: List[Dict[str, Any]]) -> Dict[str, Any]:
        failed = [s for s in samples if "error" in s]
        if failed:  # a sample failed to load (see LoaderWithErrors): pass its message on
            return _error_batch(failed[0]["error"], failed[0]["user_error"])
        # seeded by every sample's seed: the batch's random size is as reproducible as they are
        rng = np.random.default_rng([s["seed"] for s in samples])
        for transform in self.batch_transforms:
            samples = transform(samples, rng)
        batch = {k: np.stack([s[k] for s in samples]) for k in STACKED if k in samples[0]}
        batch.update({k: [s[k] for s in samples] for k in PER_IMAGE if k in samples[0]})
        return batch


class SeededBatchSampler:
    """Batches of (index, seed) keys, fixed by (seed, epoch): resumable mid-epoch, sharded by rank.

    The data set seeds each sample's augmentation (and Collate the batch's random size) from the
    keys, so the same sample gets the same augmentation in the same epoch whatever the number
    of workers or restarts. A full pass moves on to the next epoch; `set_epoch` chooses one.
    """

    def __init__(self, size: int, batch_size: int, shuffle: bool = True, drop_last: bool = True,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.rank, self.world = rank, world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Choose the epoch's order and how many of its first batches to leave out (resume)."""
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        per_rank = math.ceil(self.size / self.world)
        return per_rank // self.batch_size if self.drop_last else math.ceil(
            per_rank / self.batch_size)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        order = (np.random.RandomState([self.seed, self.epoch]).permutation(self.size)
                 if self.shuffle else np.arange(self.size))
        per_rank = math.ceil(self.size / self.world)
        # every rank gets as many samples: the order is padded by repeating its start
        order = np.resize(order, per_rank * self.world)[self.rank::self.world]
        seeds = np.random.RandomState([self.seed, self.epoch, 1]).randint(0, 2**31 - 1, self.size)
        for b in range(self.skip, len(self)):
            yield [(int(i), int(seeds[i])) for i in order[b * self.batch_size:
                                                         (b + 1) * self.batch_size]]
        self.epoch, self.skip = self.epoch + 1, 0


def _error_batch(text: str, user_error: bool) -> Dict[str, Any]:
    """A failure sent as a batch (see LoaderWithErrors); with one array: paddle's queue takes a
    batch of no arrays for the end of data."""
    return {"error": text, "user_error": np.array([user_error], np.int32)}


class _Guarded(paddle.io.Dataset):
    """A data set whose failing samples become {"error": text, "user_error": bool} instead of
    raising: the user's mistake (a missing or corrupt file) as its one-line message, any other
    exception (a bug, e.g. in a transform) as its formatted traceback, which says where."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Dict[str, Any]:
        try:
            return self.dataset[key]
        except (UserError, OSError) as err:  # any failure must reach the main process as data
            return {"error": str(err), "user_error": True}
        except Exception:
            return {"error": traceback.format_exc(), "user_error": False}

    def __getattr__(self, name: str) -> Any:  # coco, cat_ids, ... of the wrapped data set
        if name == "dataset":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


class _GuardedCollate:
    """A collate_fn whose failure (e.g. in a batch transform) becomes an error batch, as
    `_Guarded` does for samples: it runs in the same feeding thread or worker."""

    def __init__(self, collate_fn: Optional[Callable]):
        self.collate_fn = collate_fn or default_collate_fn  # paddle's, when the data set has none

    def __call__(self, samples: List[Any]) -> Dict[str, Any]:
        try:
            return self.collate_fn(samples)
        except (UserError, OSError) as err:
            return _error_batch(str(err), True)
        except Exception:
            return _error_batch(traceback.format_exc(), False)


class LoaderWithErrors(paddle.io.DataLoader):
    """paddle.io.DataLoader that raises a failed sample's error, with its message, to the caller.

    paddle's own loader hangs when a sample or the collate_fn raises with num_workers=0 (the
    exception ends its feeding thread) and raises a bare SystemError with workers; here the
    error travels as data and is raised again in the main process: a UserError for the user's
    data (one line naming the file), a RuntimeError carrying the traceback for anything else.
    """

    def __init__(self, dataset: Any, batch_sampler: Any, num_workers: int = 0):
        super().__init__(_Guarded(dataset), batch_sampler=batch_sampler,
                         collate_fn=_GuardedCollate(dataset.collate_fn), num_workers=num_workers,
                         use_shared_memory=_shared_memory_ok())

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        batches = super().__iter__()
        try:
            for batch in batches:
                if "error" in batch:
                    if int(np.asarray(batch["user_error"]).reshape(-1)[0]):
                        raise UserError(f"loading a batch failed: {batch['error']}")
                    raise RuntimeError(f"loading a batch failed; the sample's traceback:\n"
                                       f"{batch['error']}")
                yield batch
        finally:  # also when the caller stops early (break, an error, a closed generator)
            _stop_feeding(batches)


def _stop_feeding(batches: Any) -> None:
    """Stop a paddle loader iterator's feeding thread (and workers) now. Left to itself, a thread
    whose consumer stopped early waits on its full queue forever, and holds the iterator alive
    (a bound method is its target), so paddle's own clean-up in __del__ never runs: every early
    stop (a training run's end mid-epoch, `next(iter(loader))`) leaked a thread and a queue."""
    shutdown = getattr(batches, "_try_shutdown_all", None)
    if shutdown is not None:
        shutdown()


def build_dataset(cfg: DataConfig, split: str,
                  eval_size: Optional[Sequence[int]] = None) -> COCOInstanceDataset:
    """The "train" or "val" data set of a DataConfig, with its transforms and `collate_fn`;
    "val" resizes to `eval_size` (h, w): the model's, `cfg.model.eval_size` of a Config."""
    if split not in ("train", "val"):
        raise UserError(f"split must be 'train' or 'val', got {split!r}")
    if split == "val" and not eval_size:
        raise UserError("the val split needs eval_size (h, w), the model's: "
                        "build_dataset(cfg.data, 'val', cfg.model.eval_size)")
    train = split == "train"
    image_dir = os.path.join(cfg.dataset_dir, cfg.train_image_dir if train else cfg.val_image_dir)
    anno_path = os.path.join(cfg.dataset_dir, cfg.train_anno_path if train else cfg.val_anno_path)
    if train:
        transforms, batch_transforms = train_transforms(cfg.train_sizes, cfg.augment)
    else:
        transforms, batch_transforms = eval_transforms(eval_size), []
    return COCOInstanceDataset(image_dir, anno_path, transforms, train=train,
                               allow_empty=cfg.allow_empty, max_images=cfg.max_images,
                               collate_fn=Collate(batch_transforms))


def _shared_memory_ok() -> bool:
    """Workers pass batches through /dev/shm; ppdet turns that off below 1 GB (small containers)."""
    try:
        stat = os.statvfs("/dev/shm")
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize >= 1 << 30


def build_loader(cfg: Config, split: str, num_workers: Optional[int] = None,
                 seed: Optional[int] = None, dataset: Any = None, rank: int = 0,
                 world_size: int = 1) -> LoaderWithErrors:
    """DataLoader of a split (of `dataset` if given): train shuffles and drops the last partial
    batch, seed = train.seed; each of `world_size` processes reads its own shard."""
    if dataset is None:
        dataset = build_dataset(cfg.data, split, cfg.model.eval_size)
    classes = len(getattr(dataset, "cat_ids", ()))
    if classes > cfg.model.num_classes:  # labels past the last class: the loss would fail
        raise UserError(f"{getattr(dataset, 'anno_path', 'the data set')} has {classes} "
                        f"categories, more than model.num_classes={cfg.model.num_classes}")
    train = split == "train"
    batch_size = cfg.data.batch_size if train else cfg.data.eval_batch_size
    sampler = SeededBatchSampler(len(dataset), batch_size, shuffle=train, drop_last=train,
                                 seed=cfg.train.seed if seed is None else seed, rank=rank,
                                 world_size=world_size)
    if len(sampler) == 0:
        where = getattr(dataset, "anno_path", "the data set")
        raise UserError(f"{where}: {len(dataset)} images, fewer than one batch of "
                        f"data.batch_size={batch_size} per process ({world_size} processes)")
    workers = cfg.data.num_workers if num_workers is None else num_workers
    return LoaderWithErrors(dataset, sampler, workers)
