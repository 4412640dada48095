"""`python -m mrtdetr_lib train|eval|infer ...`: the same as the `mrtdetr` command."""

import sys

from mrtdetr_lib.cli import main  # absolute: paddle.distributed.launch may run this file directly

sys.exit(main())
