"""Non-finite numbers never reach the parameter server's weights, its pullers or its state directory: a
NaN/Inf gradient (or published tensor) is refused with INVALID_ARGUMENT naming the tensor."""

import grpc
import mlx.core as mx
import numpy as np
import pytest

from lazarus.distributed.client import ParameterClient, ParameterServerError
from lazarus.distributed.server import GradientRejected, ParameterStore, serve


def weights():
    rng = np.random.default_rng(0)
    return {"embed.weight": mx.array(rng.standard_normal((16, 8), dtype=np.float32)),
            "layers.0.weight": mx.array(rng.standard_normal((8, 8), dtype=np.float32))}


def poisoned(value: float):
    grads = {k: mx.ones(v.shape) for k, v in weights().items()}
    grads["layers.0.weight"] = grads["layers.0.weight"].at[3, 4].add(value)
    return grads


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_gradient_is_refused_with_invalid_argument_naming_the_tensor(tmp_path, mode, value):
    # given a server (with a state directory) and a worker that pushes a gradient holding one NaN/Inf
    store = ParameterStore(weights(), mode=mode, max_staleness=1, state_dir=tmp_path)
    with serve(store) as server, ParameterClient(server.address, timeout=10) as client:
        # when it is pushed
        with pytest.raises(ParameterServerError) as e:
            client.push_gradients(poisoned(value), 0, worker_id="w1")
        # then it is refused as INVALID_ARGUMENT, naming the tensor; nothing was applied, published or saved
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "layers.0.weight" in str(e.value) and "NaN or Inf" in str(e.value)
        assert store.version == 0 and store.pending() == 0
        assert not (tmp_path / "ps-state").exists()
        # and a finite gradient afterwards is applied as usual
        client.push_gradients(poisoned(0.0), 0, worker_id="w1")
        assert store.version == 1
    assert all(mx.all(mx.isfinite(v)).item() for v in store.weights.values())
    saved = mx.load(str(tmp_path / "ps-state" / "weights.safetensors"))
    assert all(mx.all(mx.isfinite(v)).item() for v in saved.values())


def test_a_step_whose_result_would_overflow_is_rolled_back():
    # given float16 weights near the top of their range and a huge (finite) gradient
    store = ParameterStore({"w": mx.full((4,), 60000.0, mx.float16)}, mode="async", learning_rate=1.0)
    # when it is applied, the result would be -inf: refused, and the version and optimizer state unchanged
    with pytest.raises(GradientRejected, match="parameter w"):
        store.push(0, {"w": mx.full((4,), 60000.0, mx.float16) * -1.0}, worker_id="w")
    store.push(0, {"w": mx.full((4,), 1.0, mx.float16)}, worker_id="w")
    assert store.version == 1 and mx.all(mx.isfinite(store.weights["w"])).item()


def test_publishing_non_finite_weights_is_refused_naming_the_tensor():
    store = ParameterStore(weights())
    bad = {"embed.weight": mx.full((16, 8), float("nan"))}
    with pytest.raises(GradientRejected, match="published tensor embed.weight holds NaN or Inf"):
        store.publish(bad)
    assert store.version == 0
