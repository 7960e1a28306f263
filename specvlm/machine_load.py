"""How busy the machine is with other work while we time something: the CPU share that other processes took.

Timings taken while another job competes for the cores are too slow, and a cached measurement would keep them for
ever; a measurement samples this around itself and is repeated (or marked provisional) when it was taken under load.
Linux reads /proc/stat (every process's CPU time) against this process's own; elsewhere the 1-minute load average
stands in for it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

#: other processes' share of the machine's CPU time above which a timing counts as taken under load
BUSY_SHARE = 0.25
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user, nice, system, irq, softirq, steal (after the "cpu" label)


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _machine_busy_seconds() -> float | None:
    """CPU seconds every process on the machine has spent busy since boot (None where /proc/stat is missing)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    return sum(int(fields[i]) for i in _BUSY_FIELDS if i < len(fields)) / ticks


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


@dataclass(frozen=True)
class LoadSample:
    """Other processes' share of all cores over a stretch of wall time (0 = we had the machine to ourselves)."""

    others: float
    seconds: float

    @property
    def busy(self) -> bool:
        return self.others > BUSY_SHARE


class LoadMeter:
    """Start it, do the timed work, read `sample()`: what other processes took meanwhile."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.machine = _machine_busy_seconds()
        self.own = _own_seconds()

    def sample(self) -> LoadSample:
        wall = time.perf_counter() - self.wall
        machine = _machine_busy_seconds()
        if self.machine is None or machine is None or wall <= 0:
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
            return LoadSample(round(min(1.0, max(0.0, load - 1.0) / _cpu_count()), 3), wall)
        others = (machine - self.machine) - (_own_seconds() - self.own)
        return LoadSample(round(min(1.0, max(0.0, others / (wall * _cpu_count()))), 3), wall)


def current_load(seconds: float = 0.3) -> LoadSample:
    """A short look at the machine now: other processes' CPU share over `seconds` of sleeping."""
    meter = LoadMeter()
    time.sleep(seconds)
    return meter.sample()
