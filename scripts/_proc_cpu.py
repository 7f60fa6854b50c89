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
