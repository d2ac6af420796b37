#!/usr/bin/env bash
# Installs what the tests run for real: Debian's etcd 3.4 and PostgreSQL, an nsqd built from the Go module
# proxy (tools/nsqd) and Debian's chromium for the browser test (driven by Playwright, from
# the 'test' extra, with executable_path: no `playwright install` browser download).
# Idempotent: does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v etcd >/dev/null 2>&1 && [ ! -x /usr/bin/etcd ]; then
    echo "installing etcd-server (Debian)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq etcd-server >/dev/null
    # The package starts a system etcd on 2379; the tests start their own on free ports.
    as_root systemctl disable --now etcd >/dev/null 2>&1 || as_root service etcd stop >/dev/null 2>&1 || true
fi

if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    echo "installing postgresql (Debian)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >/dev/null
    # The package starts a system cluster on 5432; the tests start their own on free ports.
    as_root systemctl disable --now postgresql >/dev/null 2>&1 || as_root service postgresql stop >/dev/null 2>&1 || true
fi

if [ ! -x /usr/bin/chromium ]; then
    echo "installing chromium (Debian)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium >/dev/null
fi

if [ -x tools/nsqd/build.sh ]; then
    tools/nsqd/build.sh
fi
