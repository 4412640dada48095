"""Reading `.pdparams` / `.pdckpt` pickles without running code, like PyTorch's `weights_only=True`.

Unpickling calls every global the file names, so a hostile "weights" file can name `os.system`.
What `paddle.save` writes calls few globals (read with `pickletools` from real files): numpy's
array rebuilders for a state dict, plus `_codecs.encode` for bytes under pickle protocol 2; a
trainer checkpoint adds `OrderedDict` (`Layer.state_dict()`), `tuple` (a tensor inside a nested
dict is saved as `(name, array)`) and paddle's RNG `GeneratorState`. `load` admits exactly those
and refuses any other global, naming the file and the global, before it is called.
"""

import pickle
from pathlib import Path
from typing import Any, Union

from .errors import UserError

ALLOWED = {
    ("numpy._core.multiarray", "_reconstruct"),  # an ndarray, as numpy 2 pickles it ...
    ("numpy.core.multiarray", "_reconstruct"),  # ... and numpy 1 (PaddleDetection's files)
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # protocol 2 writes bytes as encode(text, "latin1")
    ("collections", "OrderedDict"),
    ("builtins", "tuple"),
    ("paddle.base.libpaddle", "GeneratorState"),  # paddle.get_rng_state() (random numbers only)
}


class UnsafePickleError(UserError):
    """A pickle names a global that no weights or checkpoint file holds: it would run code."""


class _GuardedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, path: str):
        super().__init__(file, encoding="latin1")  # as paddle.load: arrays pickled by Python 2
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        """Called for every global the pickle names, before it can be called."""
        if (module, name) not in ALLOWED:
            raise UnsafePickleError(
                f"refusing to load {self.path}: it calls {module}.{name}, which a weights or "
                "checkpoint file never holds (a pickle can run any code; only open files you "
                "trust, and prefer .safetensors)")
        return super().find_class(module, name)


def load(path: Union[str, Path]) -> Any:
    """Unpickle the file at `path`, admitting only the globals in ALLOWED."""
    with open(path, "rb") as f:
        return _GuardedUnpickler(f, str(path)).load()
