"""A trained `tiny` shapes checkpoint for the notebooks, without a binary in git.

Chapters 04 (evaluation), 05 (query tuning) and 06 (deployment) need a model that has learnt
something. `tiny_shapes_checkpoint()` gives the path of one:

1. `weights=` given: that file;
2. a full training run exists (`output/tiny_shapes/best_model.pdparams`, what
   `mrtdetr train -c configs/tiny_shapes.yml --eval` writes) and we are not in quick mode: that;
3. otherwise a short quick training: `tiny` on a small shapes data set for a fixed number of
   steps (never a time budget, so the weights do not depend on the machine's speed), cached under
   `<cache>/quick/<settings>/`. Later calls with the same settings (the next notebook, the next
   `make test`) reuse it. The same settings give the same weights on the same kind of CPU
   (training always uses QUICK_THREADS threads; another instruction set may round differently).

Quick mode ignores a full run on purpose: notebook outputs are committed and checked by nbval,
so they must come from the same deterministic weights on every machine.
Next to every checkpoint lies the `config.yml` it was trained with (model sizes, data folder):
read it with `checkpoint_config(path)`.
"""

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Union

from ..config import Config, get_config, load_config, quick_mode, save_config
from ..download import cache_dir

PathLike = Union[str, Path]
ROOT = Path(__file__).resolve().parents[2]  # the project folder (an editable install)
FULL_MODEL = ROOT / "output" / "tiny_shapes" / "best_model.pdparams"
QUICK_VERSION = 2  # bump when the quick recipe changes, so old caches are not reused
# CPU kernels split their sums by thread, so the weights depend on the thread count: a fixed
# count makes every machine of the same CPU kind train the same weights (nbval outputs).
QUICK_THREADS = 2
WEIGHTS_NAME = "model_final.pdparams"  # what the Trainer writes at the end of a run


def quick_settings(steps: int = 150, image_size: int = 128, num_train: int = 96,
                   num_val: int = 16, seed: int = 0) -> dict:
    """The settings that define a quick checkpoint (and name its cache folder)."""
    for name, value in (("steps", steps), ("image_size", image_size), ("num_train", num_train),
                        ("num_val", num_val)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if image_size % 32 or image_size < 96:  # fewer tokens than tiny's 100 queries below 96
        raise ValueError(f"image_size must be a multiple of 32 and >= 96, got {image_size}")
    return {"version": QUICK_VERSION, "steps": steps, "image_size": image_size,
            "num_train": num_train, "num_val": num_val, "seed": seed}


def quick_config(settings: dict, data_dir: PathLike, output_dir: PathLike) -> Config:
    """The `tiny` Config of a quick run: small images, every knob else the preset's."""
    size = settings["image_size"]
    cfg = get_config("tiny")
    cfg.model.eval_size = (size, size)
    cfg.data.dataset_dir = str(Path(data_dir).resolve())  # absolute: notebooks run elsewhere
    cfg.data.train_sizes, cfg.data.eval_size = [size], [size, size]
    cfg.data.batch_size = 4
    # no worker processes: on 2 cores they only compete with the training step
    cfg.data.num_workers = 0
    cfg.train.max_iters, cfg.train.seed = settings["steps"], settings["seed"]
    # a short run cannot wait 100 steps for the learning rate to arrive
    cfg.train.warmup_steps = min(cfg.train.warmup_steps, max(settings["steps"] // 5, 1))
    cfg.train.eval, cfg.train.output_dir = False, str(output_dir)
    cfg.train.log_iter = max(settings["steps"] // 5, 1)
    return cfg


def tiny_shapes_checkpoint(weights: Optional[PathLike] = None, steps: int = 150,
                           image_size: int = 128, num_train: int = 96, num_val: int = 16,
                           seed: int = 0, cache: Optional[PathLike] = None,
                           use_full: Optional[bool] = None, progress: bool = True) -> str:
    """Path of a trained `tiny` shapes `.pdparams`: `weights`, a full run, or a cached quick run.

    `use_full` (default: not quick mode) picks `output/tiny_shapes/best_model.pdparams` when it
    exists. A quick run trains `steps` steps of batch 4 on `num_train` shapes images of
    `image_size` px (about 1-2 minutes on 2 CPU cores at the defaults); its data set (with a
    `num_val` images val split) and `config.yml` are kept next to the weights.
    """
    if weights is not None:
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"weights file not found: {weights}")
        return str(weights)
    if (quick_mode() is False if use_full is None else use_full) and FULL_MODEL.is_file():
        return str(FULL_MODEL)
    settings = quick_settings(steps, image_size, num_train, num_val, seed)
    folder = quick_folder(settings, cache)
    if not (folder / WEIGHTS_NAME).is_file():
        _train_quick(settings, folder, progress)
    return str(folder / WEIGHTS_NAME)


def quick_folder(settings: dict, cache: Optional[PathLike] = None) -> Path:
    """`<cache>/quick/tiny_shapes_<steps>steps_<size>px_<hash>`: one folder per settings."""
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    name = f"tiny_shapes_{settings['steps']}steps_{settings['image_size']}px_{key}"
    return Path(cache if cache is not None else cache_dir()) / "quick" / name


def checkpoint_config(weights: PathLike) -> Config:
    """The Config a checkpoint was trained with: the `config.yml` the Trainer left beside it."""
    path = Path(weights).parent / "config.yml"
    if not path.is_file():
        raise FileNotFoundError(f"no config.yml next to {weights}: pass the Config it was "
                                "trained with yourself (e.g. get_config('tiny'))")
    cfg = load_config(str(path))
    data_dir = cfg.data.dataset_dir
    if not os.path.isabs(data_dir) and not os.path.isdir(data_dir) and (ROOT / data_dir).is_dir():
        cfg.data.dataset_dir = str(ROOT / data_dir)  # `mrtdetr train` ran in the project folder
    return cfg


def _train_quick(settings: dict, folder: Path, progress: bool) -> None:
    """Build the data, train, keep weights + config + log; the folder appears only when done."""
    from .. import set_num_threads
    from ..data.shapes import make_shapes
    from .trainer import Trainer

    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    set_num_threads(QUICK_THREADS)
    try:
        make_shapes(str(work / "shapes"), settings["num_train"], settings["num_val"],
                    image_size=settings["image_size"], seed=settings["seed"], progress=False)
        cfg = quick_config(settings, folder / "shapes", work)
        cfg.data.dataset_dir = str(work / "shapes")  # trains from here; saved config: final
        if not progress:  # quiet: no loss lines either
            cfg.train.log_iter = 2**31
        trainer = Trainer(cfg, progress=progress)
        result = trainer.train()
        if result["stopped"]:  # Ctrl-C / SIGTERM: never cache a half-trained model
            raise RuntimeError(f"quick training stopped at step {result['steps']} "
                               f"({result['stopped']}); nothing cached")
        os.remove(trainer.checkpoint_path)  # optimiser state: not needed to use the model
        save_config(quick_config(settings, folder / "shapes", folder), str(work / "config.yml"))
        try:
            os.replace(work, folder)  # atomic: a half-trained folder is never found
        except OSError:  # another process finished the same settings first: keep theirs
            if not (folder / WEIGHTS_NAME).is_file():
                raise
    finally:
        set_num_threads(0)  # back to the default (env MRTDETR_THREADS, else every core)
        shutil.rmtree(work, ignore_errors=True)
