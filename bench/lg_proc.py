"""
Process figures from /proc for the load generator: CPU time, RSS, open files and limits of
the node processes (and of the generator's own workers), plus small statistics helpers.
"""

from __future__ import annotations

import math
import os
import resource

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def raiseFdLimit() -> tuple[int, int]:
    """
    Raise this process's RLIMIT_NOFILE soft limit to the hard limit; return (soft, hard).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1_048_576
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def cpuSeconds(pid: int) -> float | None:
    """
    User + system CPU seconds of process C{pid} (all its threads), or None if it is gone.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = data[data.rindex(b")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


def status(pid: int) -> dict[str, int]:
    """
    VmRSS, VmHWM (KB) and Threads of C{pid} from /proc/<pid>/status; {} if it is gone.
    """
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "Threads"):
                    out[key] = int(value.split()[0])
    except OSError:
        return {}
    return out


def openFiles(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _limit(value: str) -> int:
    return -1 if value == "unlimited" else int(value)


def fdLimits(pid: int) -> tuple[int, int] | None:
    """
    (soft, hard) 'Max open files' of C{pid} from /proc/<pid>/limits.
    """
    try:
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    parts = line.split()
                    soft, hard = parts[3], parts[4]
                    return _limit(soft), _limit(hard)
    except OSError:
        return None
    return None


def percentile(sortedValues: list[float], q: float) -> float | None:
    """
    The C{q} (0..100) percentile of sorted values, nearest-rank.
    """
    if not sortedValues:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(sortedValues)))
    return sortedValues[min(rank, len(sortedValues)) - 1]


def summarize(values: list[float]) -> dict:
    values = sorted(values)
    if not values:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "p999": None, "max": None,
                "mean": None}
    return {"count": len(values),
            "p50": round(percentile(values, 50), 3),
            "p90": round(percentile(values, 90), 3),
            "p99": round(percentile(values, 99), 3),
            "p999": round(percentile(values, 99.9), 3),
            "max": round(values[-1], 3),
            "mean": round(sum(values) / len(values), 3)}


def parseMetrics(text: str) -> dict[str, float]:
    """
    Prometheus text to {name{labels}: value}, samples only.
    """
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def metricSum(metrics: dict[str, float], prefix: str) -> float:
    """
    The sum of every sample whose name (with labels) starts with C{prefix}.
    """
    total = 0.0
    for name, value in metrics.items():
        if name == prefix or name.startswith(prefix + "{"):
            total += value
    return total
