"""The kernels benchmark alone, the same as `nnlite bench kernels`:

    python benchmarks/bench_kernels.py [options]

Options as `nnlite bench --help`; see benchmarks/README.md for what the numbers mean.
"""

import shlex
import sys

from nnlite.bench.cli import main

if __name__ == "__main__":
    sys.exit(main(["kernels", *sys.argv[1:]], shlex.join(["python", *sys.argv])))
