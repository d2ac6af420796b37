#!/usr/bin/env python3
"""
Run a command as the terminal's foreground process group, so that Ctrl-C reaches the command
alone and not make: make, hit by the same SIGINT, would report "Interrupt" and fail however
cleanly the command stopped.

  tools/foreground.py COMMAND [ARGS...]      (make run, make cluster)

The exit status is the command's, except that a stop by Ctrl-C (SIGINT, or twistd's and
a shell's 130) is a clean end: status 0 and one line. Without a terminal the command just
runs. SIGTERM and SIGHUP sent to this process are passed on to the command.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: foreground.py COMMAND [ARGS...]", file=sys.stderr)
        return 2
    try:
        tty = os.open("/dev/tty", os.O_RDWR)
    except OSError:
        tty = None
    try:
        child = subprocess.Popen(argv, preexec_fn=os.setpgrp if tty is not None else None)
    except OSError as e:
        print(f"foreground.py: cannot run {argv[0]}: {e.strerror}", file=sys.stderr)
        return 127
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, lambda signum, frame: child.send_signal(signum))
    if tty is not None:
        # Handing the terminal over (and back) from a background group raises SIGTTOU.
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        try:
            os.tcsetpgrp(tty, child.pid)
        except OSError:
            pass
    # Should make still get a SIGINT (no terminal, or `kill -INT` to its group), let the
    # command decide how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        status = child.wait()
    finally:
        if tty is not None:
            try:
                os.tcsetpgrp(tty, os.getpgrp())
            except OSError:
                pass
            os.close(tty)
    if status in (-signal.SIGINT, 128 + signal.SIGINT):
        print("stopped (Ctrl-C)")
        return 0
    return 128 - status if status < 0 else status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
