"""Peak resident memory: of the whole process, and of one piece of work in it (a feature set, a head).

A piece's own peak comes from resetting the kernel's high-water mark before it (`/proc/self/clear_refs`,
Linux >= 4.0) and reading VmHWM after it. The reset also lowers getrusage's ru_maxrss, so the process
peak is kept here across resets. Where the reset is not possible the piece's figure is the process
peak so far (an upper bound), and says so.
"""

from __future__ import annotations

import re
import resource
import weakref
from pathlib import Path

_KIB = 1024**2  # KiB per GiB: ru_maxrss and VmHWM are KiB on Linux
_peak_kib = 0  # the process's peak before the last reset
_open: weakref.WeakSet = weakref.WeakSet()  # windows that may still be read: a reset keeps their peak


def _hwm_kib() -> int:
    try:
        return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss_gib() -> float:
    """Peak resident memory of this process and of its largest finished child (DataLoader workers)."""
    own = max(_peak_kib, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, _hwm_kib())
    return max(round(own / _KIB, 2), children_peak_gib())


def children_peak_gib() -> float:
    """The largest peak resident memory of this process's finished children (worker processes)."""
    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / _KIB, 2)


def _reset() -> bool:
    """Lower the high-water mark to the current RSS; the peaks seen so far are kept first."""
    global _peak_kib
    now = _hwm_kib()
    _peak_kib = max(_peak_kib, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, now)
    for w in _open:
        w._seen = max(w._seen, now)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakWindow:
    """`w = PeakWindow()` before a piece of work, `w.gib()` after it: the peak resident memory in
    between, windows opened inside it included (`w.exact` False where the high-water mark could not
    be reset: then the process peak)."""

    def __init__(self) -> None:
        self._seen = 0
        self.exact = _reset()
        _open.add(self)

    def gib(self) -> float:
        return round(max(self._seen, _hwm_kib()) / _KIB, 2) if self.exact else peak_rss_gib()
