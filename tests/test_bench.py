"""The benchmark's CPU memory measurement counts what the measured block allocates, not
the libraries loaded before it."""

import sys

import numpy as np
import pytest

from sbldm.runner.bench import _rss_kib, cpu_peak_increase

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


def test_peak_increase_sees_an_allocation_of_known_size_freed_before_the_end():
    size = 300 * 2 ** 20
    with cpu_peak_increase() as mem:
        a = np.ones(size, np.uint8)        # touched, so resident
        del a                              # freed: only the high-water mark remembers it
    assert mem.exact
    assert 0.9 * size < mem.increase < 1.3 * size
    assert mem.peak >= mem.baseline + mem.increase - 1


def test_peak_increase_ignores_memory_held_before_the_block():
    held = np.ones(300 * 2 ** 20, np.uint8)    # a "library" loaded before the measurement
    with cpu_peak_increase() as mem:
        b = np.ones(20 * 2 ** 20, np.uint8)
        del b
    assert mem.increase < 80 * 2 ** 20             # the 300 MB already held are not counted
    assert mem.baseline >= held.nbytes              # but they are in the baseline
    assert _rss_kib("VmRSS") * 1024 >= held.nbytes
