"""Peak resident memory: of the whole process, and of one piece of work in it (a feature set, a head).

A piece's own peak is sampled: while a `PeakWindow` is open, a daemon thread reads the resident set
(/proc/self/statm) every SAMPLE_S seconds. The kernel's high-water mark is left alone, so `time -v`,
getrusage and any outside tool still see the process's true peak. An allocation that lives shorter
than one sample can be missed; where /proc is absent the figure is the process peak (an upper bound).
"""

from __future__ import annotations

import os
import resource
import threading
import time
import weakref

SAMPLE_S = 0.05
_KIB = 1024**2  # KiB per GiB: ru_maxrss is KiB on Linux
_open: weakref.WeakSet = weakref.WeakSet()  # windows not yet read
_lock = threading.Lock()
_sampler: threading.Thread | None = None


def peak_rss_gib() -> float:
    """Peak resident memory of this process and of its largest finished child (DataLoader workers)."""
    return max(round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / _KIB, 2), children_peak_gib())


def children_peak_gib() -> float:
    """The largest peak resident memory of this process's finished children (worker processes)."""
    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / _KIB, 2)


def _rss_kib() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return None


def _sample() -> None:
    while True:
        time.sleep(SAMPLE_S)
        if not _open:
            continue
        now = _rss_kib() or 0
        with _lock:
            for w in list(_open):
                w._seen = max(w._seen, now)


class PeakWindow:
    """`w = PeakWindow()` before a piece of work, `w.gib()` after it: the peak resident memory in
    between, sampled (`w.exact` False where it cannot be: then the process peak)."""

    def __init__(self) -> None:
        global _sampler
        now = _rss_kib()
        self.exact, self._seen = now is not None, now or 0
        if not self.exact:
            return
        with _lock:
            _open.add(self)
            if _sampler is None:
                _sampler = threading.Thread(target=_sample, name="peak-rss", daemon=True)
                _sampler.start()

    def gib(self) -> float:
        """The peak so far (the window stays open: a later call sees later peaks too)."""
        if not self.exact:
            return peak_rss_gib()
        with _lock:
            self._seen = max(self._seen, _rss_kib() or 0)
            return round(self._seen / _KIB, 2)
