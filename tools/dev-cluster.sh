#!/usr/bin/env bash
# A local cluster to try hpchat with: etcd, nsqd and N nodes (default 2) on 127.0.0.1, with
# dev login on so the chat page at http://127.0.0.1:8081/ signs in anyone. Ctrl-C stops all.
#
#   tools/dev-cluster.sh [NODES]        (make cluster)
#
# Needs what `make test` installs: the virtualenv, Debian's etcd and tools/nsqd's nsqd.
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=${1:-2}
bin=${VENV:-.venv}/bin
work=$(mktemp -d /tmp/hpchat-cluster.XXXXXX)
pids=()
# Ctrl-C (or SIGTERM) stops everything and is a clean end (status 0); any other exit keeps its
# status.
stop() {
    local status=${1:-$?}
    trap - INT TERM EXIT
    echo; echo "stopping..."
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "logs and data kept in $work"
    exit "$status"
}
trap 'stop 0' INT TERM
trap stop EXIT

secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
etcd --data-dir "$work/etcd" --listen-client-urls http://127.0.0.1:2379 \
     --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
     > "$work/etcd.log" 2>&1 &
pids+=($!)
.build/bin/nsqd --tcp-address=127.0.0.1:4150 --http-address=127.0.0.1:4151 \
     --data-path="$work" --mem-queue-size=0 > "$work/nsqd.log" 2>&1 &
pids+=($!)
origins=""
for i in $(seq 1 "$nodes"); do origins+="${origins:+, }http://127.0.0.1:808$i"; done
for i in $(seq 1 "$nodes"); do
    cat > "$work/n$i.ini" <<INI
[node]
id = n$i
listen = tcp:808$i:interface=127.0.0.1
advertise_url = http://127.0.0.1:808$i
[storage]
path = $work/shared.sqlite3
[auth]
secret = $secret
dev_login = true
[http]
cors_origins = $origins
[cluster]
etcd = http://127.0.0.1:2379
[nsq]
nsqd_tcp = 127.0.0.1:4150
INI
    "$bin/twistd" -n --pidfile= hpchat --config "$work/n$i.ini" > "$work/n$i.log" 2>&1 &
    pids+=($!)
done
sleep 3
echo "cluster of $nodes nodes (logs in $work):"
for i in $(seq 1 "$nodes"); do echo "  chat page and API: http://127.0.0.1:808$i/"; done
echo "  cluster table:     $bin/hpchat status --config $work/n1.ini"
echo "  send a flirt:      $bin/hpchat notify --config $work/n1.ini bob flirt --from alice"
echo "  or through NSQ:    curl -d '{\"id\":\"f-1\",\"user\":\"bob\",\"type\":\"flirt\",\"from\":\"alice\",\"data\":{}}' 'http://127.0.0.1:4151/pub?topic=hpchat.notifications'"
echo "Ctrl-C stops everything."
wait
