"""``nnlite bench [kernels] [training] [scaling] [options]`` (all three parts by default).

Examples:
    nnlite bench                                   everything, every installed system
    nnlite bench training --workloads W1,W4 --systems numba,torch --repeat 3
    nnlite bench kernels --threads 1
    nnlite bench --quick --out /tmp/bench          tiny sizes (the smoke test)

Writes ``<part>.jsonl`` and ``<part>.md`` for each part run, ``report.md`` (all of them, with the
machine and the command) and the scaling plots to ``--out`` (default ``out/bench``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

from nnlite.bench import PARTS
from nnlite.bench import systems as S
from nnlite.bench.workloads import WORKLOADS
from nnlite.cli import _positive_int

DEFAULT_SYSTEMS = ("numpy", "numba", "cupy", "torch", "keras")


def _list(choices, what):
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in choices]
        if not values or bad:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what} from {', '.join(choices)}, received {text!r}")
        return values

    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``nnlite bench`` (shared by the ``nnlite`` command and the scripts)."""
    p.add_argument("parts", nargs="*", metavar="PART",
                   help=f"parts to run, any of {', '.join(PARTS)} (default: all)")
    p.add_argument("--workloads", type=_list(tuple(WORKLOADS), "workloads"),
                   default=list(WORKLOADS),
                   help="workloads, comma-separated (default: W1,W2,W3,W4,W5,W6)")
    p.add_argument("--systems", type=_list(S.NNLITE + ("torch", "keras"), "systems"),
                   default=list(DEFAULT_SYSTEMS),
                   help="systems, comma-separated: numpy, numba, cupy (nnlite backends), torch, "
                        "keras (both jit_compile settings); missing ones are skipped with a note "
                        "(default: all)")
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help="epochs per training run, the first reported apart (default: per "
                        "workload: 3, W5 10, W6 2)")
    p.add_argument("--repeat", type=_positive_int, default=1,
                   help="training runs per system and workload, alternated (default: 1)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes and few samples: checks that everything runs (smoke test)")
    p.add_argument("--out", metavar="DIR", default=os.path.join("out", "bench"),
                   help="output folder (default: out/bench)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="threads for BLAS, Numba, PyTorch and TensorFlow (default: their own; "
                        "the GEMM peak always uses every core)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--profile", action="store_true",
                   help="also run each nnlite training once under cProfile and write "
                        "profile_<workload>_<backend>.txt to --out")
    p.add_argument("--data-dir", metavar="DIR", default=None,
                   help="where the scaled MNIST arrays are cached (default: <out>/data)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnlite bench", description="Benchmark nnlite's kernels, training and scaling "
        "against its NumPy backend, PyTorch and Keras.")
    add_arguments(parser)
    return parser


def command_line(args: argparse.Namespace) -> str:
    """``nnlite bench ...`` with every option ``args`` holds (how a report names its run)."""
    words = ["nnlite", "bench", *args.parts, "--workloads", ",".join(args.workloads),
             "--systems", ",".join(args.systems), "--repeat", str(args.repeat)]
    for flag, value in (("--epochs", args.epochs), ("--threads", args.threads),
                        ("--data-dir", args.data_dir)):
        if value is not None:
            words += [flag, str(value)]
    words += ["--seed", str(args.seed), "--out", args.out]
    words += [flag for flag, on in (("--quick", args.quick), ("--profile", args.profile)) if on]
    return shlex.join(words)


class Options:
    """Parsed options plus what the parts ask of them."""

    def __init__(self, args: argparse.Namespace):
        self.__dict__.update(vars(args))
        self.data_dir = args.data_dir or os.path.join(args.out, "data")
        self.silent = getattr(args, "silent", False)
        from nnlite.bench.workloads import lstm_available

        self.skip_lstm = not lstm_available()

    def workload_list(self):
        return [WORKLOADS[name] for name in self.workloads]

    def system_list(self) -> list[str]:
        return list(self.systems)


def run(args: argparse.Namespace, command: str | None = None) -> int:
    """Run the parts named in ``args``; returns the exit status (1 if a check failed)."""
    from nnlite import config
    from nnlite.bench import report

    parts = args.parts or list(PARTS)
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise SystemExit(f"nnlite bench: unknown part(s) {bad}; expected any of {list(PARTS)}")
    options = Options(args)
    os.makedirs(options.out, exist_ok=True)
    command = command or command_line(args)
    config.set_floatx("float32")
    if options.threads is not None:
        # Applied before any record is written, so every context shows it (the GEMM peak still
        # measures every core).
        config.set_threads(options.threads)
    sections, failed, peak = [], False, None
    started = time.perf_counter()
    context = None
    for part in parts:
        writer = report.Writer(options.out, part, command=command, verbose=not options.silent)
        context = context or writer.base
        t0 = time.perf_counter()
        if not options.silent:
            print(f"nnlite bench: {part} ...", flush=True)
        if part == "kernels":
            from nnlite.bench import kernels

            result = kernels.run(options, writer.emit)
            peak = result["peak"]["gflops"]
            text = kernels.markdown(result)
            failed |= not all(r.get("ok", True) for r in result["records"])
        elif part == "training":
            from nnlite.bench import training

            result = training.run(options, writer.emit, peak)
            text = training.markdown(result)
            failed |= any(row.get("check") is False for rows in result["summary"].values()
                          for row in rows.values())
        else:
            from nnlite.bench import scaling

            result = scaling.run(options, writer.emit)
            text = scaling.markdown(result)
        seconds = time.perf_counter() - t0
        writer.emit({"kind": "part_done", "seconds": seconds})
        writer.close()
        with open(os.path.join(options.out, f"{part}.md"), "w", encoding="utf-8") as f:
            f.write(text)
        sections.append((part, text, seconds))
        if not options.silent:
            print(text, flush=True)
    body = [f"# nnlite bench ({time.strftime('%Y-%m-%d %H:%M')})", "",
            report.header(command, context)]
    for part, text, seconds in sections:
        body += [f"## {part} ({seconds:.0f} s)", "", text]
    path = os.path.join(options.out, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(body))
    if not options.silent:
        print(f"nnlite bench: wrote {path} ({time.perf_counter() - started:.0f} s)", flush=True)
    return 1 if failed else 0


def main(argv=None, command: str | None = None) -> int:
    """Parse ``argv`` and run; ``command`` is how the report names the invocation."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    return run(args, command or shlex.join(["nnlite", "bench", *argv]))
