"""Platform set-up done once, before `mlx.core` is first imported.

On Linux the `mlx[cpu]` wheel bundles a reference BLAS that makes float32 matmul ~50x slower than
numpy. Loading Debian's OpenBLAS with RTLD_GLOBAL before MLX binds its BLAS symbols makes MLX use it,
with bit-identical results. On x86-64 Linux, MLX's JIT builds the kernels of compiled functions (every
compiled train step, `nn.silu`) for the baseline x86-64 CPU, where its `exp` polynomial calls a software
`fma`; `setup_native_jit` has them built for this CPU instead (SIMD, hardware FMA), again with
bit-identical results. `import lazarus` runs this; so does every console script.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform as _platform
import shlex
import shutil
import sys
import warnings
from dataclasses import dataclass

OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)
FIX_HINT = "install it with `sudo apt-get install libopenblas0-pthread` (or run `make install` as root)"


@dataclass(frozen=True)
class PlatformInfo:
    system: str
    machine: str
    blas_path: str | None
    blas_loaded_before_mlx: bool
    device: str
    blas_thread_timeout: str | None  # OPENBLAS_THREAD_TIMEOUT: how long idle BLAS threads spin (`share_blas_cores`)
    native_jit: str | None  # the g++ shim's directory when MLX's JIT kernels are built for this CPU


_blas_path: str | None = None
_blas_before_mlx = False
_user_blas_threads = os.environ.get("OPENBLAS_NUM_THREADS")  # as the user's environment had it, if at all
_user_blas_timeout = os.environ.get("OPENBLAS_THREAD_TIMEOUT")

#: OpenBLAS's idle worker threads spin for 2**28 cycles (~0.1 s) after each call before they sleep, so a
#: process with 2 BLAS threads keeps 2 cores busy even through its single-threaded work (measured here: CPU
#: time / wall time 2.00 on alternating matmuls and `exp`, 1.03 with the timeout at 2**4 cycles). Alone on
#: a host that spin is ~5% faster (bench/runtime.py, local: 0.83 vs 0.78 steps/s); when a learner and its
#: actors share the cores it starves whoever runs beside it (async k=1 vs local: 1.04-1.14 spinning,
#: 1.44-1.46 sleeping).
BLAS_SPIN_TIMEOUT, BLAS_SLEEP_TIMEOUT = "28", "4"


def find_openblas() -> str | None:
    """The OpenBLAS shared library to preload: $LAZARUS_BLAS, else the first Debian path that exists."""
    explicit = os.environ.get("LAZARUS_BLAS")
    if explicit:
        return explicit if os.path.exists(explicit) else None
    return next((p for p in OPENBLAS_CANDIDATES if os.path.exists(p)), None)


def setup_blas() -> str | None:
    """Preload OpenBLAS for MLX on Linux. Idempotent; warns once (and only once) when it cannot."""
    global _blas_path, _blas_before_mlx
    if _blas_path is not None or sys.platform != "linux" or os.environ.get("LAZARUS_NO_BLAS"):
        return _blas_path
    mlx_already_imported = "mlx.core" in sys.modules
    path = find_openblas()
    if path is None:
        warnings.warn(
            f"OpenBLAS not found: MLX float32 matmul on CPU will be ~50x slower; {FIX_HINT}.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    # Ray workers default OMP_NUM_THREADS=1; OpenBLAS reads its own variable, so set it explicitly.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(os.cpu_count() or 1))
    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    _blas_path = path
    _blas_before_mlx = not mlx_already_imported
    if mlx_already_imported:
        warnings.warn(
            "mlx.core was imported before lazarus: OpenBLAS may not be used; import lazarus first.",
            RuntimeWarning,
            stacklevel=2,
        )
    return path


def user_blas_threads() -> str | None:
    """OPENBLAS_NUM_THREADS as the user set it before lazarus started (None: lazarus chooses)."""
    return _user_blas_threads


def set_blas_threads(n: int) -> bool:
    """Set the preloaded OpenBLAS's thread count in this process (it read $OPENBLAS_NUM_THREADS at load).

    False when there is no OpenBLAS of ours to tell (macOS's Accelerate, or no preload)."""
    if not _blas_path:
        return False
    try:
        ctypes.CDLL(_blas_path).openblas_set_num_threads(ctypes.c_int(max(1, int(n))))
    except (OSError, AttributeError):
        return False
    os.environ["OPENBLAS_NUM_THREADS"] = str(max(1, int(n)))
    return True


def share_blas_cores(shared: bool = True) -> bool:
    """Whether this process's idle BLAS threads yield their core at once (`shared`) or spin (alone on a host).

    Set by the launcher of processes that share one host's cores (a learner and its actors); children
    started afterwards inherit it through `preload_env`. An OPENBLAS_THREAD_TIMEOUT the user set is kept.
    False when there is no OpenBLAS of ours to tell (macOS's Accelerate, or no preload)."""
    if _user_blas_timeout is not None:
        return False
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = BLAS_SLEEP_TIMEOUT if shared else BLAS_SPIN_TIMEOUT
    if not _blas_path:
        return False
    try:
        lib = ctypes.CDLL(_blas_path)
        lib.openblas_read_env()  # OpenBLAS reads its environment once, at load: read it again
        lib.blas_thread_shutdown_()  # the thread pool is rebuilt, with the new timeout, by the next call
    except (OSError, AttributeError):
        return False
    return True


def preload_env() -> dict[str, str]:
    """Environment that makes a child process (Ray worker, subprocess) load the same BLAS."""
    env = {}
    if _blas_path:
        env["LD_PRELOAD"] = _blas_path
        env["OPENBLAS_NUM_THREADS"] = os.environ.get("OPENBLAS_NUM_THREADS", str(os.cpu_count() or 1))
        if "OPENBLAS_THREAD_TIMEOUT" in os.environ:
            env["OPENBLAS_THREAD_TIMEOUT"] = os.environ["OPENBLAS_THREAD_TIMEOUT"]
    return env


#: Added to MLX's JIT compiles by `setup_native_jit`. `-march=native` gives SIMD and hardware FMA (MLX's
#: `exp` is a polynomial of `fma` calls: in software ~14 ns per element, 1.1 ns here); `-finline-limit`
#: lets GCC inline that polynomial so the kernel loop vectorizes; `-ffp-contract=off` keeps every
#: rounding as in MLX's own build (no fused multiply-adds it did not write), so results are bit-identical.
#: `-mprefer-vector-width=256`: GCC's tuning for some CPUs (AMD Zen 1) otherwise keeps loops at 128 bits
#: (as fast there, 2.3-2.8 ns per element either way, and 256 bits on every AVX2 CPU elsewhere).
NATIVE_JIT_FLAGS = ("-march=native", "-mprefer-vector-width=256", "-ffp-contract=off", "-fno-math-errno",
                    "-fno-trapping-math", "-finline-limit=100000")
_native_jit_dir: str | None = None


def _mlx_kernel_cache() -> str:
    """Where MLX's CPU JIT keeps its kernels: C++'s temp_directory_path()/mlx/VERSION/cpu."""
    from importlib.metadata import PackageNotFoundError, version

    tmp = next((os.environ[v] for v in ("TMPDIR", "TMP", "TEMP", "TEMPDIR") if os.environ.get(v)), "/tmp")
    try:
        mlx_version = version("mlx")
    except PackageNotFoundError:
        mlx_version = "unknown"
    return os.path.join(tmp, "mlx", mlx_version, "cpu")


def setup_native_jit() -> str | None:
    """Have MLX's CPU JIT build its kernels for this CPU (x86-64 Linux only); the shim's directory, or None.

    MLX runs `g++` from PATH to build the kernel of each compiled function. A `g++` shim put first on
    PATH adds `NATIVE_JIT_FLAGS` when the build is one of MLX's (its output is in MLX's kernel cache) and
    passes every other call through unchanged. Kernels MLX cached earlier without these flags are removed
    once (a marker in the cache records the flags), so they are rebuilt with them. Idempotent; child
    processes inherit PATH. Off with LAZARUS_NATIVE_JIT=0, or where there is no g++.
    """
    global _native_jit_dir
    if _native_jit_dir is not None or os.environ.get("LAZARUS_NATIVE_JIT") == "0":
        return _native_jit_dir
    if sys.platform != "linux" or _platform.machine() not in ("x86_64", "AMD64"):
        return None
    shim_dir = os.path.join(_temp_root(), f"lazarus-native-jit-{os.getuid()}")
    # without any shim's directory (a parent process's, with another temp dir, included)
    path_dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep)
                 if not os.path.basename(d.rstrip("/")).startswith("lazarus-native-jit-")]
    real = shutil.which("g++", path=os.pathsep.join(path_dirs))
    if real is None:
        return None
    cache = _mlx_kernel_cache()
    flags = " ".join(NATIVE_JIT_FLAGS)
    script = ("#!/bin/sh\n"
              "# Written by lazarus.platform.setup_native_jit: MLX's JIT kernels are built for this CPU.\n"
              f'case "$*" in *{shlex.quote(cache + "/")}*) exec {shlex.quote(real)} "$@" {flags} ;; esac\n'
              f'exec {shlex.quote(real)} "$@"\n')
    try:
        os.makedirs(shim_dir, mode=0o700, exist_ok=True)
        owner = os.stat(shim_dir)
        if owner.st_uid != os.getuid() or owner.st_mode & 0o022:  # a directory others could write into
            return None
        shim = os.path.join(shim_dir, "g++")
        if not os.path.exists(shim) or open(shim).read() != script:
            tmp = f"{shim}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(script)
            os.chmod(tmp, 0o755)
            os.replace(tmp, shim)
        _forget_kernels_built_otherwise(cache, hashlib.sha256(script.encode()).hexdigest()[:16])
    except OSError:  # read-only temp dir, someone else's shim: MLX's own flags then
        return None
    os.environ["PATH"] = os.pathsep.join([shim_dir] + path_dirs)
    _native_jit_dir = shim_dir
    return shim_dir


def _temp_root() -> str:
    import tempfile

    return tempfile.gettempdir()


def _forget_kernels_built_otherwise(cache: str, stamp: str) -> None:
    """Remove the kernels in MLX's cache unless the marker says this shim built them."""
    marker = os.path.join(cache, f".lazarus-native-jit-{stamp}")
    if os.path.exists(marker):
        return
    os.makedirs(cache, exist_ok=True)
    for name in os.listdir(cache):
        if name.endswith(".so") or name.startswith(".lazarus-native-jit-"):
            try:
                os.unlink(os.path.join(cache, name))
            except FileNotFoundError:
                pass
    open(marker, "w").close()


def info() -> PlatformInfo:
    import mlx.core as mx

    return PlatformInfo(
        system=_platform.system(),
        machine=_platform.machine(),
        blas_path=_blas_path,
        blas_loaded_before_mlx=_blas_before_mlx,
        device=str(mx.default_device()),
        blas_thread_timeout=os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
        native_jit=_native_jit_dir,
    )


#: glibc's mallopt parameter: allocations at least this big get their own mmap, returned on free.
M_MMAP_THRESHOLD = -3


def return_freed_buffers(threshold_bytes: int = 256 << 10) -> bool:
    """Make glibc hand large freed buffers back to the OS (this process, from now on). False off glibc.

    glibc raises its mmap threshold each time a large mmapped buffer is freed (up to 32 MB), after which
    buffers of that size come from the heap and stay resident when freed: a process that loads a model
    and frees it gains hundreds of MB of RSS that nothing uses (SmolLM2: 980 MB after one evaluation, 396 MB
    with a fixed threshold). A fixed threshold turns that off. Call it where a process starts its work.
    """
    if sys.platform != "linux":
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, ctypes.c_int(threshold_bytes)))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


setup_blas()
setup_native_jit()
