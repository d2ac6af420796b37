"""
What the node wrappers share (bench/lg_gcwrap.py, bench/lg_stallwrap.py): their own options
before the program they run, and writing to stderr behind twistd's back.
"""

from __future__ import annotations

import os


def wrapperArgs(argv: list[str], flags: tuple[str, ...], options: tuple[str, ...],
                usage: str | None) -> tuple[dict[str, str | bool], list[str]]:
    """
    The wrapper's own C{flags} (True when given) and C{options} (their values) from the head
    of C{argv}, and the program's command after them (after an optional C{--}); exits with
    C{usage} when no program is given.
    """
    found: dict[str, str | bool] = {}
    while argv[:1] and (argv[0] in flags or (argv[0] in options and len(argv) > 1)):
        if argv[0] in flags:
            found[argv[0]] = True
            argv = argv[1:]
        else:
            found[argv[0]] = argv[1]
            argv = argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise SystemExit(usage)
    return found, argv


def err(text: str) -> None:
    # Straight to fd 2: twistd replaces sys.stderr with its logger, which would allocate
    # inside a GC callback and is gone by the time atexit runs.
    os.write(2, text.encode("utf-8", "replace"))
