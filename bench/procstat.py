"""CPU time and resident memory of processes, read from ``/proc`` (pure reads, Linux only).

A proxy started with ``--workers N`` is a process tree, so every figure is
summed over a process and all of its descendants, found by parent pid.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or ")".
    return raw[raw.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue.extend(children.get(current, ()))
    return found


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` and its descendants (stat fields 14 and 15)."""
    user = system = 0
    for each in descendants(pid):
        fields = _stat_fields(each)
        if fields is not None:
            user += int(fields[11])
            system += int(fields[12])
    return user / _TICKS, system / _TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants."""
    return sum(cpu_split(pid))


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` and its descendants (``statm`` field 2)."""
    total = 0
    for each in descendants(pid):
        try:
            total += int((PROC / str(each) / "statm").read_text().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def loadavg() -> list[float]:
    return [float(x) for x in (PROC / "loadavg").read_text().split()[:3]]


def cpu_model() -> str:
    for line in (PROC / "cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"
