"""Memory figures for the per-step metrics: the peak of the MLX allocator and of the process, in GB (1e9 bytes).

On Apple silicon MLX memory is unified and shows up in the allocator figure; on Linux CPU the process RSS
is the honest number. `peak_memory_gb` reports the larger of the two.
"""

from __future__ import annotations

import os
import resource
import sys

import mlx.core as mx

GB = 1e9


def peak_memory_gb() -> float:
    """Max of MLX's peak allocation (since the last `reset_peak`) and the process's peak RSS (since start)."""
    return max(mx.get_peak_memory(), _peak_rss_bytes()) / GB


def rss_gb() -> float | None:
    """Current resident set size of this process, or None where /proc/self/statm does not exist (macOS)."""
    try:
        with open("/proc/self/statm") as f:
            resident_pages = int(f.read().split()[1])
    except OSError:
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / GB


def reset_peak() -> None:
    """Reset MLX's peak-allocation counter. The process's peak RSS cannot be reset."""
    mx.reset_peak_memory()


def _peak_rss_bytes() -> int:
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kibibytes, macOS bytes.
    return max_rss if sys.platform == "darwin" else max_rss * 1024
