"""The library's one error type for user mistakes, apart from the bugs that keep their traceback.

A `UserError` says which file, config field or flag is wrong and how: a missing or corrupt image,
a weights file that does not fit, `data.batch_size=0`. `mrtdetr` prints it as one line and exits
with status 2; any other exception is a bug (or paddle's own error, e.g. a shape mismatch inside
the model) and keeps its full traceback. It subclasses ValueError, the type these mistakes raised
before, so `except ValueError` still catches them.
"""


class UserError(ValueError):
    """A mistake in what the user gave (a file, a config field, a flag); the message names it."""
