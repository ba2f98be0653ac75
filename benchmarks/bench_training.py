"""The training benchmark alone, the same as `nnlite bench training`:

    python benchmarks/bench_training.py [options]

Options as `nnlite bench --help`; see benchmarks/README.md for what the numbers mean.
"""

import shlex
import sys

from nnlite.bench.cli import main

if __name__ == "__main__":
    sys.exit(main(["training", *sys.argv[1:]], shlex.join(["python", *sys.argv])))
