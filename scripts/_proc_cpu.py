"""CPU time of the benchmarks' worker processes (shared by bench_runtime and bench_inference)."""
from __future__ import annotations


def children_cpu_s() -> dict[int, float]:
    """User + system CPU seconds so far of each child of this process, by pid,
    leaving out multiprocessing's resource tracker (not part of a run)."""
    import psutil

    out = {}
    for c in psutil.Process().children():
        try:
            if "resource_tracker" not in " ".join(c.cmdline()):
                t = c.cpu_times()
                out[c.pid] = t.user + t.system
        except psutil.Error:
            pass
    return out


def machine_steal_s() -> float | None:
    """CPU seconds the hypervisor has taken from this machine's CPUs since boot
    ("steal" in /proc/stat, all CPUs together); None where there is no such
    counter.  On a shared VM a run whose processes seem to wait on each other
    may instead have had a core taken away: the difference over a window says."""
    import os

    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if fields[:1] != ["cpu"] or len(fields) < 9:
        return None
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")
