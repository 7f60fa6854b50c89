"""Suite-wide guards: no test may leave a wasm-engine segment in /dev/shm or a
child process behind. Tests run serially, so a before/after diff is exact."""
import os
import time

import psutil
import pytest

from wasm_engine.shm_protocol import list_segments


def _ours(name: str, me: psutil.Process) -> bool:
    """A leaked segment is ours if our process or a descendant created it, or its
    creator is dead; a live unrelated program's segments are not this test's."""
    pid_part = name[len("we_"):].split("_", 1)[0]
    if not pid_part.isdigit():
        return True
    pid = int(pid_part)
    if pid == me.pid or not psutil.pid_exists(pid):
        return True
    try:
        return any(p.pid == me.pid for p in psutil.Process(pid).parents())
    except psutil.Error:
        return True


@pytest.fixture(autouse=True)
def no_leaks():
    before = set(list_segments())
    me = psutil.Process()
    yield
    # Children get a moment to finish exiting after the test's last join.
    deadline = time.monotonic() + 5.0
    while True:
        kids = [p for p in me.children(recursive=True) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        # The multiprocessing resource tracker is a long-lived helper, not a leak.
        kids = [p for p in kids if "resource_tracker" not in " ".join(p.cmdline())]
        leaked = {n for n in set(list_segments()) - before if _ours(n, me)}
        if (not kids and not leaked) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"test left shared-memory segments: {sorted(leaked)}"
    assert not kids, f"test left child processes: {[(p.pid, p.cmdline()) for p in kids]}"


def pytest_configure(config):
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
