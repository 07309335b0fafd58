"""Run a command and sample the resident memory of its whole process tree.

``tickvault replay`` is two processes (the owner and its producer); a peak RSS taken from
one of them would hide the other. The tree is found through ``/proc/*/stat`` parent ids and
sampled every ``interval`` seconds, so the peak can miss a spike shorter than that. Linux
only (it reads ``/proc``); written by hand because only this one figure is needed.
"""

from __future__ import annotations

import os
import resource
import subprocess
import threading
import time
from dataclasses import dataclass

_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class TreeRun:
    seconds: float
    stdout: str
    peak_tree_rss_mb: float
    """Largest sum of the RSS of the process and its descendants seen at one sample."""
    peak_process_rss_mb: float
    """Largest RSS of any single process of the tree seen at one sample."""
    cpu_seconds: float
    """User + system CPU time of the process and every descendant it waited for."""


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(name))
    return children


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def tree_rss(root: int) -> tuple[int, int]:
    """(sum, max) of the RSS in bytes of ``root`` and all its descendants now."""
    children = _children_map()
    total = largest = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        rss = _rss_bytes(pid)
        total += rss
        largest = max(largest, rss)
        todo.extend(children.get(pid, ()))
    return total, largest


def run_sampled(args: list[str], interval: float = 0.05, **kw: object) -> TreeRun:
    """Run ``args`` to completion (check=True), timing it and sampling its tree's RSS."""
    peak = [0, 0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, **kw)  # type: ignore[call-overload]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            total, largest = tree_rss(proc.pid)
            peak[0], peak[1] = max(peak[0], total), max(peak[1], largest)
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, args, out)
    return TreeRun(seconds, out, peak[0] / 2**20, peak[1] / 2**20, cpu)
