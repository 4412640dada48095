"""The course's helpers: what only the notebooks use (walkthrough, trained weights, training
instruments, threshold explorer, query study). The core never imports this package.

Importing it sets up the notebook's process, as a program's start does (`mrtdetr_lib.setup`:
paddle's logging quiet, every core in use), so import it before anything that loads paddle.
"""

from ..runtime import setup

setup()

from .weights import checkpoint_config, course_checkpoint, course_weights, load_course_model, score  # noqa: E402

__all__ = ["checkpoint_config", "course_checkpoint", "course_weights", "load_course_model",
           "score", "setup"]
