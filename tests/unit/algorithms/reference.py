"""Helpers for the algorithm tests: float64 numpy as the independent reference."""

import mlx.core as mx
import numpy as np

TOL = 1e-6  # float32 results against float64 numpy on small, well-scaled tensors


def to_numpy(x: mx.array) -> np.ndarray:
    return np.array(x.astype(mx.float32), dtype=np.float64)


def assert_close(actual: mx.array, expected, tol: float = TOL) -> None:
    np.testing.assert_allclose(to_numpy(actual), np.asarray(expected, dtype=np.float64), rtol=tol, atol=tol)


def fixed(shape, seed: int, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """A fixed float32 tensor (as float64 numpy holding exactly the float32 values)."""
    values = np.random.default_rng(seed).normal(size=shape) * scale + shift
    return values.astype(np.float32).astype(np.float64)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def f32(values) -> mx.array:
    """numpy/list -> float32 mx.array (the dtype the learner uses)."""
    return mx.array(np.asarray(values, dtype=np.float32))


def numeric_grad(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of the float64 numpy function `f` (scalar) at `x`."""
    x = np.asarray(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += h
        down[index] -= h
        grad[index] = (f(up) - f(down)) / (2 * h)
    return grad


def assert_grad_matches(mx_loss, np_loss, x: np.ndarray, tol: float = 1e-4) -> None:
    """d mx_loss / dx (float32 MLX autodiff) equals the numpy reference's central differences."""
    grad = mx.grad(lambda v: mx_loss(v))(f32(x))
    np.testing.assert_allclose(to_numpy(grad), numeric_grad(np_loss, x), rtol=tol, atol=tol)
