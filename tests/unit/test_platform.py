"""Process-wide platform set-up: freed model-sized buffers go back to the OS once a process asks for it."""

import os
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


def _run(script: str, *args: str, **env: str) -> str:
    """`script` in a fresh Python (a fresh allocator and BLAS); its stdout."""
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")
def test_return_freed_buffers_gives_freed_buffers_back_where_glibc_keeps_them():
    # given/when: the same frees of 128 MB in a process as started, and in one that called return_freed_buffers
    kept = float(_run(_FREE_AND_MEASURE, "default"))
    returned = float(_run(_FREE_AND_MEASURE, "return"))
    # then: glibc alone keeps them resident (its mmap threshold rose to 24 MB); asked, it gives them back
    assert kept < 32, kept
    assert returned > 100, returned


# Makes 2-thread BLAS calls, looks at its threads 20 ms after each, and prints the share of looks that found
# a thread other than the main one runnable: an idle BLAS thread that spins (OpenBLAS's default, ~0.1 s) is
# runnable all that time, a sleeping one is not. (Thread states, not CPU time: a spinning OpenBLAS thread
# yields to other processes, so on a busy machine its CPU time says little.)
_RUNNABLE_SHARE = """
import os, sys, time
import lazarus.platform
import mlx.core as mx
lazarus.platform.set_blas_threads(2)
if sys.argv[1] == "shared":
    assert lazarus.platform.share_blas_cores()
    assert lazarus.platform.info().blas_thread_timeout == lazarus.platform.BLAS_SLEEP_TIMEOUT
    assert lazarus.platform.preload_env()["OPENBLAS_THREAD_TIMEOUT"] == lazarus.platform.BLAS_SLEEP_TIMEOUT
a, b = mx.random.normal((256, 512)), mx.random.normal((512, 512))
mx.eval(a @ b)
def others_runnable():
    states = []
    for tid in os.listdir("/proc/self/task"):
        if int(tid) != os.getpid():
            stat = open(f"/proc/self/task/{tid}/stat").read()
            states.append(stat.rsplit(")", 1)[1].split()[0])
    return "R" in states
looks = []
for _ in range(40):
    mx.eval(a @ b)
    time.sleep(0.02)
    looks.append(others_runnable())
print(sum(looks) / len(looks))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the preloaded OpenBLAS")
def test_share_blas_cores_makes_idle_blas_threads_sleep_instead_of_spinning():
    # given a process whose idle BLAS thread spins after each call (OpenBLAS's default)
    spinning = float(_run(_RUNNABLE_SHARE, "alone"))
    # when the process shares the host's cores
    shared = float(_run(_RUNNABLE_SHARE, "shared"))
    # then the idle thread sleeps between calls instead of staying runnable
    assert spinning > 0.8 and shared < 0.2, (spinning, shared)


@pytest.mark.skipif(sys.platform != "linux", reason="the preloaded OpenBLAS")
def test_share_blas_cores_keeps_a_thread_timeout_the_user_set():
    script = ("import os, lazarus.platform as p; assert not p.share_blas_cores(); "
              "print(os.environ['OPENBLAS_THREAD_TIMEOUT'], p.preload_env()['OPENBLAS_THREAD_TIMEOUT'])")
    assert _run(script, OPENBLAS_THREAD_TIMEOUT="20").split() == ["20", "20"]


# Compiles exp, sigmoid, SiLU, log, tanh and erf through MLX's JIT and compares them bit for bit with MLX's
# own kernels; prints the directory of the g++ shim (or None) and the kernels the JIT built.
_JIT_SCRIPT = """
import glob, os
import lazarus.platform as platform
import mlx.core as mx
x = mx.random.uniform(-30.0, 30.0, (100_003,))
ops = [mx.exp, mx.sigmoid, lambda t: t * mx.sigmoid(t), lambda t: mx.log(mx.abs(t) + 1e-3), mx.tanh, mx.erf]
for op in ops:
    assert mx.array_equal(mx.compile(op)(x), op(x)).item(), op
print(platform.info().native_jit)
print("\\n".join(glob.glob(os.path.join(platform._mlx_kernel_cache(), "*.so"))))
"""


@pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64", reason="an x86-64 Linux set-up")
def test_mlx_jit_kernels_are_built_for_this_cpu_with_bit_identical_results(tmp_path):
    # given a fresh process with its own temp directory (so its own, empty, MLX kernel cache; a space in its
    # path, which the shim must quote)
    temp = tmp_path / "temp dir"
    temp.mkdir()
    # when it compiles transcendental elementwise functions through MLX's JIT
    shim, *kernels = _run(_JIT_SCRIPT, TMPDIR=str(temp)).splitlines()
    # then the results equal MLX's own kernels bit for bit
    # and the kernels were built through the shim, with 256-bit (or wider) SIMD instructions in them
    assert shim == str(temp / f"lazarus-native-jit-{os.getuid()}")
    assert kernels
    listing = subprocess.run(["objdump", "-d", *kernels], capture_output=True, text=True, check=True).stdout
    assert "%ymm" in listing or "%zmm" in listing


def test_the_g_plus_plus_shim_passes_other_builds_through_unchanged(tmp_path):
    # given the shim a process set up
    shim = _run("import lazarus.platform as p; print(p.info().native_jit)", TMPDIR=str(tmp_path))
    if shim == "None":
        pytest.skip("no native JIT set-up on this platform")
    source = tmp_path / "hello.cpp"
    source.write_text("#include <cstdio>\nint main() { std::puts(\"hi\"); }\n")
    # when it builds something that is not an MLX kernel, and when asked its version
    subprocess.run([f"{shim}/g++", str(source), "-o", str(tmp_path / "hello")], check=True)
    version = subprocess.run([f"{shim}/g++", "--version"], capture_output=True, text=True, check=True).stdout
    # then it behaves as the real g++
    assert subprocess.run([str(tmp_path / "hello")], capture_output=True, text=True).stdout == "hi\n"
    assert version == subprocess.run(["g++", "--version"], capture_output=True, text=True).stdout


def test_native_jit_is_off_with_lazarus_native_jit_0(tmp_path):
    # given LAZARUS_NATIVE_JIT=0 and a PATH without a shim
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if "lazarus-native-jit" not in d)
    # when a process starts
    out = _run("import os, lazarus.platform as p; print(p.info().native_jit, 'native-jit' in os.environ['PATH'])",
               TMPDIR=str(tmp_path), LAZARUS_NATIVE_JIT="0", PATH=path)
    # then no shim is set up
    assert out == "None False"
