#!/bin/sh
# Build a real nsqd v1.3.0 from the Go module proxy into <repo>/.build/bin/nsqd.
#
# nsqd cannot be `go install`ed (its go.mod has a replace directive), so this
# directory is a wrapper module that pins it with a `tool` directive and
# copies upstream's replace line (NSQ reference sheet, §3.3).
# A no-op when the binary is newer than go.mod, go.sum and this script and
# reports v1.3.0. Set FORCE=1 to rebuild anyway.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out="$repo/.build/bin/nsqd"
want="nsqd v1.3.0"

upToDate() {
    [ -x "$out" ] || return 1
    for dep in "$here/go.mod" "$here/go.sum" "$here/build.sh"; do
        [ "$out" -nt "$dep" ] || return 1
    done
    "$out" --version 2>/dev/null | grep -q "^$want " || return 1
}

if [ "${FORCE:-0}" != "1" ] && upToDate; then
    echo "nsqd is up to date: $out"
    exit 0
fi

command -v go >/dev/null 2>&1 || {
    echo "build.sh: the go toolchain (>= 1.24) is needed to build nsqd" >&2
    exit 1
}

mkdir -p "$repo/.build/bin"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT INT TERM
cd "$here"
# -trimpath: reproducible paths; -mod=readonly: go.sum must already be complete.
go build -mod=readonly -trimpath -o "$tmp" github.com/nsqio/nsq/apps/nsqd
"$tmp" --version | grep -q "^$want " || {
    echo "build.sh: unexpected version: $("$tmp" --version)" >&2
    exit 1
}
mv -f "$tmp" "$out"
trap - EXIT INT TERM
echo "built $("$out" --version) -> $out"
