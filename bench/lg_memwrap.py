#!/usr/bin/env python3
"""
Run a Python program (e.g. twistd) with tracemalloc on, and on SIGUSR2 write what the live
heap is made of to the file given by --out: the objects tracked by the garbage collector
counted by type (count and shallow size), and tracemalloc's biggest allocation sites. With
many idle long-polls waiting, the types and lines whose counts are a multiple of the number of
polls are what one waiting poll holds.

  python bench/lg_node.py --wrap "python bench/lg_memwrap.py --out /tmp/mem.txt --" -- \
      -c 2000 -r 1 --duration 2 --on-measure "kill -USR2 {pid}"
"""

from __future__ import annotations

import argparse
import collections
import gc
import runpy
import signal
import sys
import tracemalloc


def _census(out: str, frames: int) -> None:
    counts: collections.Counter[str] = collections.Counter()
    sizes: collections.Counter[str] = collections.Counter()
    for o in gc.get_objects():
        name = type(o).__qualname__
        counts[name] += 1
        sizes[name] += sys.getsizeof(o)
    snapshot = tracemalloc.take_snapshot()
    traced, _ = tracemalloc.get_traced_memory()
    with open(out, "a") as f:
        f.write(f"== traced {traced / 1024:.0f} KB; gc-tracked objects by type "
                "(count, shallow KB)\n")
        for name, count in counts.most_common(40):
            f.write(f"{count:9d} {sizes[name] / 1024:9.1f}  {name}\n")
        f.write("== allocation sites still live (KB, blocks)\n")
        for stat in snapshot.statistics("traceback" if frames > 1 else "lineno")[:40]:
            f.write(f"{stat.size / 1024:9.1f} {stat.count:8d}  "
                    f"{' <- '.join(str(fr) for fr in stat.traceback)}\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--frames", type=int, default=1)
    parser.add_argument("program", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    program = args.program[1:] if args.program[:1] == ["--"] else args.program
    tracemalloc.start(args.frames)
    signal.signal(signal.SIGUSR2, lambda signum, frame: _census(args.out, args.frames))
    sys.argv = program
    runpy.run_path(program[0], run_name="__main__")


if __name__ == "__main__":
    main()
