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


def test_a_window_opened_inside_another_leaves_the_outer_peak_whole():
    outer = PeakWindow()
    big = _touch(400 * 2**20)
    del big
    inner = PeakWindow()  # resets the high-water mark below the 400 MiB just freed
    small = _touch(50 * 2**20)
    del small
    if outer.exact:
        assert outer.gib() >= inner.gib() + 0.3
