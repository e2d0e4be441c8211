"""CPU time and memory of processes, read from /proc (Linux)."""

from __future__ import annotations

import os

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of every thread of ``pid`` so far (not of its children)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK      # utime, stime


def status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rss_mb(pid: int) -> float:
    return status_kb(pid, "VmRSS") / 1024


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the largest resident set since start or since :func:`reset_peak`."""
    return status_kb(pid, "VmHWM") / 1024


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, needs permission on the process)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def tree(pid: int) -> list[int]:
    """``pid`` and every process descended from it (``sink serve``'s storage workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        one = todo.pop()
        found.append(one)
        todo.extend(children.get(one, ()))
    return found


def _tree_sum(pid: int, measure) -> float:
    total = 0.0
    for one in tree(pid):
        try:
            total += measure(one)
        except OSError:             # exited meanwhile
            continue
    return total


def tree_cpu_seconds(pid: int) -> float:
    """CPU of ``pid`` and of its living descendants."""
    return _tree_sum(pid, cpu_seconds)


def tree_rss_mb(pid: int) -> float:
    return _tree_sum(pid, rss_mb)


def tree_peak_rss_mb(pid: int) -> float:
    """The sum of every process's own peak: an upper bound of the tree's peak (the processes
    need not have peaked at the same moment)."""
    return _tree_sum(pid, peak_rss_mb)


def reset_tree_peak(pid: int) -> bool:
    return all([reset_peak(one) for one in tree(pid)])


def pids_named(name: str) -> list[int]:
    """Processes whose command name (comm) is ``name``, e.g. every PostgreSQL process."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() == name:
                    found.append(int(entry))
        except OSError:
            continue
    return found


class GroupCpu:
    """CPU of a changing group of processes between two samples (new ones count in full)."""

    def __init__(self, name: str):
        self.name = name
        self.before: dict[int, float] = {}

    def _sample(self) -> dict[int, float]:
        out = {}
        for pid in pids_named(self.name):
            try:
                out[pid] = cpu_seconds(pid)
            except OSError:
                continue
        return out

    def start(self) -> None:
        self.before = self._sample()

    def stop(self) -> float:
        after = self._sample()
        return sum(cpu - self.before.get(pid, 0.0) for pid, cpu in after.items())


def system_cpu_seconds() -> float:
    """Busy CPU time of the whole machine (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    values = [int(v) for v in parts]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / _TICK
