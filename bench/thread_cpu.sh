#!/bin/bash
# The CPU of each thread of a process over a window, user and system apart:
#
#   bench/thread_cpu.sh PID OUT [SECONDS]
#
# e.g. as the load generator's --on-measure "bench/thread_cpu.sh {pid} /tmp/threads.txt".
# Writes one line per thread to OUT: its name (the node's threads are all "twistd": the
# first is the reactor's, the second the SQLite writer's), then its share of one core in
# user and system time during the window (from /proc/PID/task/*/stat, in clock ticks).
pid=$1; out=$2; seconds=${3:-10}
hz=$(getconf CLK_TCK)
snap() { for t in /proc/"$pid"/task/*; do echo "$(basename "$t") $(cat "$t"/comm) $(awk '{print $14, $15}' "$t"/stat)"; done; }
before=$(snap)
sleep "$seconds"
after=$(snap)
join <(echo "$before" | sort) <(echo "$after" | sort) | sort -n | awk -v hz="$hz" -v s="$seconds" \
  '{printf "%s %-10s user %5.1f%%  sys %5.1f%%\n", $1, $2, 100*($6-$3)/hz/s, 100*($7-$4)/hz/s}' > "$out"
