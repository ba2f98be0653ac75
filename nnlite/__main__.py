"""``python -m nnlite ...`` runs the ``nnlite`` command."""

import sys

from nnlite.cli import main

sys.exit(main())
