"""Every benchmark part: `python benchmarks/bench_all.py [options]` = `nnlite bench`.

Options as `nnlite bench --help`; see benchmarks/README.md for what the numbers mean.
"""

import shlex
import sys

from nnlite.bench.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], shlex.join(["python", *sys.argv])))
