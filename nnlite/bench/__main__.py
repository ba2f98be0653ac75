"""``python -m nnlite.bench ...``: the same as ``nnlite bench ...``."""

import sys

from nnlite.bench.cli import main

sys.exit(main())
