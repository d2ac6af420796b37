#!/usr/bin/env python3
"""
Run the load generator against a fresh Centrifugo (memory engine, unidirectional SSE), the same
pattern as against hpchat (`loadgen.py --target centrifugo`).

  python bench/lg_centrifugo.py [--wrap "taskset -c 0"] -- -c 5000 -r 1000 --duration 20

Fills bench/centrifugo/config.json.template in a temporary folder (a free loopback port, a
random HMAC secret for the connection tokens and a random HTTP API key), starts
`.build/bin/centrifugo --config FILE` (bench/centrifugo/build.sh builds it) with GOMAXPROCS=1
unless set, waits for /health, runs bench/loadgen.py with `--target centrifugo`, `--url`,
`--secret`, `--api-key` and `--node-pid` added, then stops Centrifugo and removes the folder.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from lg_node import TempServer, runLoadgen, splitArgs  # noqa: E402

BINARY = os.path.join(ROOT, ".build", "bin", "centrifugo")


class Centrifugo(TempServer):
    """
    A temporary Centrifugo process; C{secret} signs the connection tokens, C{apiKey}
    authorizes the HTTP API.
    """

    name = "lg_centrifugo"

    def __init__(self, keep: bool = False, wrapper=(), gomaxprocs: str = "1"):
        if not os.access(BINARY, os.X_OK):
            raise SystemExit(f"lg_centrifugo: {BINARY} missing; run bench/centrifugo/build.sh")
        super().__init__(keep, "hpchat-centrifugo-")
        self.wrapper = list(wrapper)
        self.gomaxprocs = gomaxprocs
        self.secret = secrets.token_hex(24)
        self.apiKey = secrets.token_hex(16)
        with open(os.path.join(HERE, "centrifugo", "config.json.template")) as f:
            text = f.read()
        for key, value in {"port": self.port, "secret": self.secret,
                           "api_key": self.apiKey}.items():
            text = text.replace("{" + key + "}", str(value))
        json.loads(text)  # the filled-in template must be JSON
        self.conf = os.path.join(self.folder, "config.json")
        with open(self.conf, "w") as f:
            f.write(text)
        self.log = os.path.join(self.folder, "centrifugo.log")

    def __enter__(self):
        env = dict(os.environ)
        env.setdefault("GOMAXPROCS", self.gomaxprocs)
        out = open(self.log, "wb")
        self.proc = subprocess.Popen(self.wrapper + [BINARY, "--config", self.conf],
                                     cwd=self.folder, env=env, stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        out.close()
        self.awaitHealthy("/health", 20, "centrifugo")
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.stopProcess(10)

    def _dumpLog(self) -> None:
        try:
            with open(self.log, errors="replace") as f:
                sys.stderr.write("---- centrifugo log (tail) ----\n" + "".join(f.readlines()[-30:]))
        except OSError:
            pass


def main(argv=None) -> int:
    own, rest = splitArgs(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keep", action="store_true", help="keep Centrifugo's folder (config, log)")
    p.add_argument("--wrap", default="", help="command prefix, e.g. 'taskset -c 0'")
    p.add_argument("--gomaxprocs", default="1", help="GOMAXPROCS unless set in the environment")
    args = p.parse_args(own)
    with Centrifugo(args.keep, args.wrap.split(), args.gomaxprocs) as server:
        sys.stderr.write(f"lg_centrifugo: centrifugo pid {server.pid} at {server.url} "
                         f"(folder {server.folder})\n")
        return runLoadgen(server, ["--target", "centrifugo", "--url", server.url,
                                   "--secret", server.secret, "--api-key", server.apiKey,
                                   "--node-pid", str(server.pid)] + rest)


if __name__ == "__main__":
    sys.exit(main())
