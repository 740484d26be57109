"""Memory figures: peak of the MLX allocator and of the process, in GB."""

import sys

import mlx.core as mx

from lazarus.observe.memory import peak_memory_gb, reset_peak, rss_gb


def test_peak_memory_is_positive_and_covers_a_large_mlx_allocation():
    # given a 64 MB array materialized by MLX
    reset_peak()
    big = mx.ones((4096, 4096), dtype=mx.float32)
    mx.eval(big)
    # then the peak is at least that large
    assert peak_memory_gb() >= 4096 * 4096 * 4 / 1e9
    del big


def test_rss_on_linux_is_positive_and_not_above_the_peak():
    current = rss_gb()
    if sys.platform == "linux":
        assert current is not None and 0 < current <= peak_memory_gb() + 1e-3
    else:
        assert current is None  # no /proc/self/statm
