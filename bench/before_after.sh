#!/usr/bin/env bash
# The long-poll load on the code of another commit and on this checkout, in turns, so that
# both see the same machine: bench/before_after.sh REV OTHER_CHECKOUT [C:R ...]
#   REV             the commit OTHER_CHECKOUT holds (git worktree add --detach DIR REV)
#   C:R ...         points (default 1000:500 10000:500), each run twice per tree
#   LG_ARGS=...     more load generator arguments (LG_ARGS="--target hpchat-sse": streams)
#   NODE_ARGS=...   more bench/lg_node.py arguments (NODE_ARGS="--node-setting
#                   chat.history_in_memory=20": conversations longer than their memory)
# The node runs on core 0, the generator on core 1; JSON lines go to
# bench/results/before-after.jsonl (their "source.commit" tells the trees apart).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
rev=${1:?usage: before_after.sh REV OTHER_CHECKOUT [C:R ...]}
other=$(cd "${2:?usage: before_after.sh REV OTHER_CHECKOUT [C:R ...]}" && pwd)
shift 2
points=("${@:-1000:500 10000:500}")
[ "$(git -C "$other" rev-parse --short HEAD)" = "$(git -C "$other" rev-parse --short "$rev")" ] \
    || { echo "$other is not at $rev" >&2; exit 2; }
python=${BENCH_PY:-$here/.venv/bin/python}
out=$here/bench/results/before-after.jsonl
for rep in 1 2; do
    for point in ${points[@]}; do
        clients=${point%%:*}
        rate=${point##*:}
        for tree in "$other" "$here"; do
            (cd "$tree" && PYTHONPATH=$tree taskset -c 1 "$python" bench/lg_node.py \
                ${NODE_ARGS:-} --wrap "taskset -c 0" -- -c "$clients" -r "$rate" --duration 15 \
                --ramp-rate 1000 -q ${LG_ARGS:-} --json-out "$out" > /dev/null)
            echo "$(git -C "$tree" rev-parse --short HEAD) C=$clients R=$rate ${LG_ARGS:-} run $rep: done"
        done
    done
done
