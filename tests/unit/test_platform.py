"""Process-wide platform set-up: freed model-sized buffers go back to the OS once a process asks for it."""

import subprocess
import sys

import pytest

# Frees a 24 MB buffer (as a process does when it drops a model), then allocates and frees 16 x 8 MB,
# keeping one 512 KB allocation made after them (so the heap top cannot shrink); prints how many MB of
# resident memory the frees gave back.
_FREE_AND_MEASURE = """
import ctypes, sys
import lazarus.platform
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "return":
    assert lazarus.platform.return_freed_buffers()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
big = libc.malloc(24 << 20); ctypes.memset(big, 1, 24 << 20); libc.free(big)
chunks = [libc.malloc(8 << 20) for _ in range(16)]
for chunk in chunks:
    ctypes.memset(chunk, 1, 8 << 20)
keep = libc.malloc(512 << 10); ctypes.memset(keep, 1, 512 << 10)
before = rss()
for chunk in chunks:
    libc.free(chunk)
print((before - rss()) / 2**20)
"""


def _released_mb(mode: str) -> float:
    proc = subprocess.run([sys.executable, "-c", _FREE_AND_MEASURE, mode], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout.strip())


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")
def test_return_freed_buffers_gives_freed_buffers_back_where_glibc_keeps_them():
    # given/when: the same frees of 128 MB in a process as started, and in one that called return_freed_buffers
    kept = _released_mb("default")
    returned = _released_mb("return")
    # then: glibc alone keeps them resident (its mmap threshold rose to 24 MB); asked, it gives them back
    assert kept < 32, kept
    assert returned > 100, returned
