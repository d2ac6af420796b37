#!/usr/bin/env python3
"""
Run the load generator against a fresh nginx with Nchan (one worker process), the same
pattern as against hpchat (`loadgen.py --target nchan`).

  python bench/lg_nchan.py -- -c 5000 -r 1000 --duration 20

Writes bench/nchan/nginx.conf.template, filled in, to a temporary folder (a free loopback
port, worker_rlimit_nofile at the hard limit, pid file, logs and temp paths in that folder),
starts `nginx -p DIR -c DIR/nginx.conf -e DIR/error.log` (Debian's nginx-light with
libnginx-mod-nchan), waits for /nchan_status, runs bench/loadgen.py with `--target nchan`,
`--url` and `--node-pid <the worker>` added, then stops nginx (SIGQUIT, SIGTERM, SIGKILL) and
removes the folder.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from lg_node import TempServer, runLoadgen, splitArgs  # noqa: E402

MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"


def nginxBinary() -> str:
    for candidate in ("/usr/sbin/nginx", shutil.which("nginx") or ""):
        if candidate and os.path.exists(candidate):
            return candidate
    raise SystemExit("lg_nchan: no nginx; apt-get install -y nginx-light libnginx-mod-nchan")


class Nchan(TempServer):
    """
    A temporary nginx + Nchan. C{pid} is the worker's.
    """

    name = "lg_nchan"

    def __init__(self, keep=False, timeout=25, shm="256M", wrapper=()):
        if not os.path.exists(MODULE):
            raise SystemExit(f"lg_nchan: {MODULE} missing; apt-get install -y "
                             "libnginx-mod-nchan")
        super().__init__(keep, "hpchat-nchan-")
        self.wrapper = list(wrapper)
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nofile = hard if hard != resource.RLIM_INFINITY else 65536
        with open(os.path.join(HERE, "nchan", "nginx.conf.template")) as f:
            text = f.read()
        for key, value in {"module": MODULE, "dir": self.folder, "port": self.port,
                           "nofile": nofile, "conns": nofile - 64, "timeout": int(timeout),
                           "shm": shm}.items():
            text = text.replace("{" + key + "}", str(value))
        self.conf = os.path.join(self.folder, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(text)
        self.log = os.path.join(self.folder, "error.log")

    def __enter__(self):
        out = open(os.path.join(self.folder, "stdout.log"), "wb")
        self.proc = subprocess.Popen(
            self.wrapper + [nginxBinary(), "-p", self.folder, "-c", self.conf, "-e", self.log],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        out.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.failed = True
                self._dumpLog()
                raise SystemExit(f"lg_nchan: nginx exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + "/nchan_status", timeout=1) as r:
                    if r.status == 200 and self.workerPid():
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.failed = True
        self.stop()
        self._dumpLog()
        raise SystemExit("lg_nchan: nginx did not answer within 15 s")

    def workerPid(self) -> int | None:
        try:
            with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                children = [int(x) for x in f.read().split()]
        except OSError:
            return None
        return children[0] if children else None

    @property
    def pid(self) -> int:
        return self.workerPid()

    @property
    def masterPid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGQUIT, 5), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                self.proc.send_signal(sig)
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def _dumpLog(self) -> None:
        for name in ("stdout.log", "error.log"):
            try:
                with open(os.path.join(self.folder, name), errors="replace") as f:
                    sys.stderr.write(f"---- nginx {name} (tail) ----\n"
                                     + "".join(f.readlines()[-30:]))
            except OSError:
                pass


def main(argv=None) -> int:
    own, rest = splitArgs(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keep", action="store_true", help="keep nginx's folder (conf, logs)")
    p.add_argument("--shm", default="256M", help="nchan_max_reserved_memory")
    p.add_argument("--wrap", default="", help="command prefix for nginx, e.g. 'taskset -c 0'")
    args = p.parse_args(own)
    with Nchan(args.keep, shm=args.shm, wrapper=args.wrap.split()) as server:
        sys.stderr.write(f"lg_nchan: nginx master {server.masterPid}, worker {server.pid} at "
                         f"{server.url} (folder {server.folder})\n")
        return runLoadgen(server, ["--target", "nchan", "--url", server.url,
                                   "--node-pid", str(server.pid)] + rest)


if __name__ == "__main__":
    sys.exit(main())
