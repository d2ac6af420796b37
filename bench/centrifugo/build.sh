#!/bin/sh
# Build Centrifugo v6.9.1 from the Go module proxy into <repo>/.build/bin/centrifugo, for the
# side-by-side benchmark (bench/lg_centrifugo.py).
#
# The version is stamped into the binary (`centrifugo version`) with the -X flag its release
# build uses; the check reads the module version Go records in the binary
# (`go version -m`). A no-op when the binary is there and holds that version. Set FORCE=1 to
# rebuild anyway.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
version="v6.9.1"
out="$repo/.build/bin/centrifugo"

module="github.com/centrifugal/centrifugo/v6"

built() {
    [ -x "$out" ] && go version -m "$out" 2>/dev/null \
        | grep -q "^[[:space:]]*mod[[:space:]]*$module[[:space:]]*$version[[:space:]]"
}

if [ "${FORCE:-0}" != "1" ] && command -v go >/dev/null 2>&1 && built; then
    echo "centrifugo is up to date: $out"
    exit 0
fi

command -v go >/dev/null 2>&1 || {
    echo "build.sh: the go toolchain (>= 1.24) is needed to build centrifugo" >&2
    exit 1
}

mkdir -p "$repo/.build/bin"
# go install builds in the module cache and writes only the final binary into GOBIN.
GOBIN="$repo/.build/bin" go install -trimpath \
    -ldflags "-X $module/internal/build.Version=${version#v}" "$module@$version"
built || {
    echo "build.sh: unexpected build: $(go version -m "$out" | head -3)" >&2
    exit 1
}
echo "built $("$out" version) -> $out"
