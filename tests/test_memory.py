import numpy as np

from smart_product.memory import PeakWindow, peak_rss_gib


def _touch(n_bytes: int) -> np.ndarray:
    a = np.empty(n_bytes, np.uint8)
    a[::4096] = 1  # resident, page by page
    return a


def test_a_window_sees_its_own_peak_and_the_process_peak_survives_the_reset():
    big = _touch(600 * 2**20)
    before = peak_rss_gib()
    del big
    w = PeakWindow()
    small = _touch(100 * 2**20)
    inside = w.gib()
    del small
    assert before >= 0.6
    if w.exact:  # Linux >= 4.0: the 600 MiB freed before the window is not this window's
        assert 0.1 <= inside < before - 0.3
    assert peak_rss_gib() >= before  # the reset does not lower the process's figure
