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
