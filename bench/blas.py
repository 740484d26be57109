"""float32 1024x1024 matmul: MLX vs numpy in one run. Target on Linux after `make install`: ratio <= 2.

Prints seconds per matmul for both, the achieved GFLOP/s and the ratio MLX/numpy (lower is better).
"""

from __future__ import annotations

import argparse
import json
import time

import lazarus  # noqa: F401  (OpenBLAS before mlx.core)
import mlx.core as mx
import numpy as np


def time_it(fn, repeats: int) -> float:
    fn()
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def matmul_gflops(n: int = 1024, repeats: int = 20) -> dict:
    a = mx.random.normal((n, n), key=mx.random.key(0))
    b = mx.random.normal((n, n), key=mx.random.key(1))
    mx.eval(a, b)
    a_np, b_np = np.array(a), np.array(b)
    t_mlx = time_it(lambda: mx.eval(a @ b), repeats)
    t_np = time_it(lambda: a_np @ b_np, repeats)
    flops = 2 * n**3
    max_diff = float(np.abs(np.array(a @ b) - a_np @ b_np).max())
    return {
        "n": n,
        "mlx_s": t_mlx,
        "numpy_s": t_np,
        "mlx_gflops": flops / t_mlx / 1e9,
        "numpy_gflops": flops / t_np / 1e9,
        "ratio_mlx_over_numpy": t_mlx / t_np,
        "max_abs_diff": max_diff,
        "blas": lazarus.platform.info().blas_path,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    r = matmul_gflops(args.n, args.repeats)
    if args.json:
        print(json.dumps(r))
        return
    print(f"float32 {r['n']}x{r['n']} matmul  (BLAS preloaded: {r['blas']})")
    print(f"  mlx   {r['mlx_s'] * 1e3:8.2f} ms  {r['mlx_gflops']:7.1f} GFLOP/s")
    print(f"  numpy {r['numpy_s'] * 1e3:8.2f} ms  {r['numpy_gflops']:7.1f} GFLOP/s")
    print(f"  ratio mlx/numpy = {r['ratio_mlx_over_numpy']:.2f}  (target <= 2)   max |diff| = {r['max_abs_diff']:.2e}")


if __name__ == "__main__":
    main()
