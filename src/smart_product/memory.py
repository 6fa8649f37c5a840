"""Peak resident memory: of the whole process, and of one piece of work in it (a feature set, a head).

A piece's own peak comes from resetting the kernel's high-water mark before it (`/proc/self/clear_refs`,
Linux >= 4.0) and reading VmHWM after it. The reset also lowers getrusage's ru_maxrss, so the process
peak is kept here across resets. Where the reset is not possible the piece's figure is the process
peak so far (an upper bound), and says so.
"""

from __future__ import annotations

import re
import resource
from pathlib import Path

_KIB = 1024**2  # KiB per GiB: ru_maxrss and VmHWM are KiB on Linux
_peak_kib = 0  # the process's peak before the last reset


def _hwm_kib() -> int:
    try:
        return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss_gib() -> float:
    """Peak resident memory of this process and of its largest finished child (DataLoader workers)."""
    own = max(_peak_kib, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, _hwm_kib())
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / _KIB, 2)


class PeakWindow:
    """`w = PeakWindow()` before a piece of work, `w.gib()` after it: the peak resident memory in
    between (`w.exact` False where the high-water mark could not be reset: then the process peak)."""

    def __init__(self) -> None:
        global _peak_kib
        _peak_kib = max(_peak_kib, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, _hwm_kib())
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.exact = True
        except OSError:
            self.exact = False

    def gib(self) -> float:
        return round(_hwm_kib() / _KIB, 2) if self.exact else peak_rss_gib()
