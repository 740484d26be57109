"""Parameter server on loopback, in-process: broadcast, gradient sync, staleness, integrity, auth, fuzzing."""

import subprocess
import threading

import grpc
import mlx.core as mx
import numpy as np
import pytest
from conftest import REDUCED
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazarus.distributed import codec, experience_pb2_grpc
from lazarus.distributed import experience_pb2 as xpb
from lazarus.distributed import parameter_server_pb2 as pb
from lazarus.distributed.auth import InsecureBindError
from lazarus.distributed.client import ParameterClient, ParameterServerError, ServerUnavailable
from lazarus.distributed.server import ParameterStore, serve

PUSH = "/lazarus.v1.ParameterServer/PushGradients"


def random_weights(seed=0) -> dict[str, mx.array]:
    rng = np.random.default_rng(seed)
    return {
        "embed.weight": mx.array(rng.standard_normal((64, 32), dtype=np.float32)),
        "layers.0.weight": mx.array(rng.standard_normal((32, 32), dtype=np.float32)),
        "norm.weight": mx.array(rng.standard_normal((32,), dtype=np.float32)).astype(mx.bfloat16),
    }


def random_grads(weights, seed) -> dict[str, mx.array]:
    rng = np.random.default_rng(100 + seed)
    return {k: mx.array(rng.standard_normal(v.shape, dtype=np.float32)).astype(v.dtype) for k, v in weights.items()}


def as_np(x: mx.array) -> np.ndarray:
    return np.array(x.astype(mx.float32))


def raw_push(address, parts, token=None):
    """Send pre-serialized messages to PushGradients, bypassing the client (to send damaged ones)."""
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_unary(PUSH, request_serializer=None, response_deserializer=pb.PushResult.FromString)
        return call(iter(parts), timeout=10, metadata=(("authorization", f"Bearer {token}"),) if token else ())


def test_several_clients_pull_the_same_version_and_get_identical_bytes():
    # given a server holding weights at version 0
    weights = random_weights()
    store = ParameterStore(weights)
    with serve(store) as server:
        # when four clients stream it at the same time
        snapshots = [None] * 4

        def pull(i):
            with ParameterClient(server.address, timeout=10, shared_memory=False) as client:
                snapshots[i] = client.pull_if_newer(-1)

        threads = [threading.Thread(target=pull, args=(i,)) for i in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        # then all got version 0 with the same sha256, equal to the served weights, serialized once
        assert {s.version for s in snapshots} == {0}
        assert len({s.sha256 for s in snapshots}) == 1
        for snapshot in snapshots:
            for name, value in weights.items():
                assert snapshot.weights[name].dtype == value.dtype
                assert mx.array_equal(snapshot.weights[name], value).item()
        assert store.encode_count == 1
        # and a client that already has version 0 gets nothing
        with ParameterClient(server.address, timeout=10) as client:
            assert client.pull_if_newer(0) is None


def test_a_client_receives_each_new_version_into_the_buffers_of_the_one_it_dropped():
    # given a server with weights, and MLX's buffer cache at its small CPU default
    weights = random_weights()
    store = ParameterStore(weights)
    total = sum(v.nbytes for v in weights.values())
    previous = mx.set_cache_limit(1024)
    try:
        with serve(store) as server:
            # when a client that does not reuse buffers pulls, the cache limit is left alone
            with ParameterClient(server.address, timeout=10, reuse_buffers=False) as client:
                client.pull_if_newer(-1)
            assert mx.set_cache_limit(1024) == 1024
            # and when a reusing client pulls, drops the snapshot and pulls a changed version
            with ParameterClient(server.address, timeout=10) as client:
                first = client.pull_if_newer(-1)
                assert mx.set_cache_limit(total) >= total  # one snapshot's worth of freed buffers is kept
                del first
                store.publish({k: v + 1 for k, v in weights.items()})
                second = client.pull_if_newer(0)
            # then the second version arrives whole in the recycled memory
            assert second.version == 1
            for name, value in weights.items():
                assert mx.array_equal(second.weights[name], value + 1).item()
    finally:
        mx.set_cache_limit(previous)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_sync_mode_with_three_workers_equals_numpy_average_then_update(optimizer):
    # given a sync server waiting for 3 workers
    weights = {k: v.astype(mx.float32) for k, v in random_weights().items()}
    lr = 0.05
    store = ParameterStore(weights, mode="sync", workers=3, optimizer=optimizer, learning_rate=lr)
    expected = {k: as_np(v) for k, v in weights.items()}
    m = {k: np.zeros_like(v) for k, v in expected.items()}
    v2 = {k: np.zeros_like(v) for k, v in expected.items()}
    with serve(store) as server:
        for step in range(2):
            # when three workers push gradients for the current version, concurrently
            grads = [random_grads(weights, seed=10 * step + w) for w in range(3)]
            results = [None] * 3

            def push(w):
                with ParameterClient(server.address, timeout=10) as client:
                    results[w] = client.push_gradients(grads[w], base_version=step, worker_id=f"w{w}")

            threads = [threading.Thread(target=push, args=(w,)) for w in range(3)]
            [t.start() for t in threads]
            [t.join() for t in threads]
            # then exactly one push completed the step, and the new version is numpy's update of the mean
            assert sum(r.applied for r in results) == 1 and all(r.accepted for r in results)
            with ParameterClient(server.address, timeout=10) as client:
                assert client.wait_for_version(step + 1, timeout=10) == step + 1
                snapshot = client.pull_if_newer(step)
            for name in expected:
                mean = np.mean([as_np(g[name]) for g in grads], axis=0)
                if optimizer == "sgd":
                    expected[name] = expected[name] - lr * mean
                else:  # mlx Adam: betas (0.9, 0.999), eps 1e-8, no bias correction
                    m[name] = 0.9 * m[name] + 0.1 * mean
                    v2[name] = 0.999 * v2[name] + 0.001 * mean ** 2
                    expected[name] = expected[name] - lr * m[name] / (np.sqrt(v2[name]) + 1e-8)
                np.testing.assert_allclose(as_np(snapshot.weights[name]), expected[name], rtol=1e-5, atol=1e-6)
            assert snapshot.version == step + 1


def test_sync_mode_refuses_a_gradient_for_an_old_version_and_a_second_one_from_the_same_worker():
    weights = random_weights()
    store = ParameterStore(weights, mode="sync", workers=2)
    with serve(store) as server, ParameterClient(server.address, timeout=10) as client:
        client.push_gradients(random_grads(weights, 0), base_version=0, worker_id="a")
        with pytest.raises(ParameterServerError, match="worker a already sent a gradient for version 0") as e:
            client.push_gradients(random_grads(weights, 1), base_version=0, worker_id="a")
        assert e.value.code == grpc.StatusCode.ALREADY_EXISTS
        client.push_gradients(random_grads(weights, 2), base_version=0, worker_id="b")
        with pytest.raises(ParameterServerError, match="pull and recompute") as e:
            client.push_gradients(random_grads(weights, 3), base_version=0, worker_id="a")
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert client.info().version == 1 and client.info().pending_gradients == 0


def test_async_mode_applies_each_gradient_and_rejects_a_too_stale_push():
    # given an async server that accepts gradients at most 1 version behind
    weights = random_weights()
    store = ParameterStore(weights, mode="async", max_staleness=1, learning_rate=0.1)
    with serve(store) as server, ParameterClient(server.address, timeout=10) as client:
        # when two gradients computed on version 0 arrive, then both are applied (staleness 0, then 1)
        assert client.push_gradients(random_grads(weights, 0), base_version=0).version == 1
        assert client.push_gradients(random_grads(weights, 1), base_version=0).version == 2
        before = client.pull_if_newer(-1)
        # when a third one on version 0 arrives (2 versions behind)
        with pytest.raises(ParameterServerError) as e:
            client.push_gradients(random_grads(weights, 2), base_version=0, worker_id="slow")
        # then it is refused with a clear status and nothing changes
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert (
            "worker slow: gradient base version 0 is 2 versions behind server version 2 (max_staleness 1)"
            in str(e.value)
        )
        assert client.pull_if_newer(1).sha256 == before.sha256 and client.info().version == 2


def test_a_flipped_byte_in_a_pushed_chunk_is_detected_and_nothing_applied():
    # given a gradient push whose one chunk has a flipped byte
    weights = {"a.weight": mx.zeros((300_000,)), "b.weight": mx.zeros((1_200_000,))}  # 6 MB: two chunks
    store = ParameterStore(weights)
    encoded = codec.encode({k: mx.ones(v.shape) for k, v in weights.items()}, version=0, worker_id="w")
    damaged = pb.SnapshotPart.FromString(encoded.parts[2])
    data = bytearray(damaged.chunk.data)
    data[1000] ^= 0x10
    damaged.chunk.data = bytes(data)
    parts = encoded.parts[:2] + [damaged.SerializeToString()]
    with serve(store) as server:
        # when it is sent
        with pytest.raises(grpc.RpcError) as e:
            raw_push(server.address, parts)
        # then the server refuses it naming the tensor, and the version does not move
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "corrupt chunk 1" in e.value.details() and "b.weight" in e.value.details()
        assert store.version == 0 and store.pending() == 0


def test_a_push_for_the_wrong_tensors_is_refused_naming_the_tensor():
    weights = random_weights()
    store = ParameterStore(weights, trainable=["layers.0.weight"])
    with serve(store) as server, ParameterClient(server.address, timeout=10) as client:
        with pytest.raises(ParameterServerError, match="worker w: tensor embed.weight is not a trainable parameter"):
            client.push_gradients({"embed.weight": weights["embed.weight"],
                                   "layers.0.weight": weights["layers.0.weight"]}, 0, worker_id="w")
        with pytest.raises(ParameterServerError, match=r"tensor layers.0.weight has shape \[2, 2\]"):
            client.push_gradients({"layers.0.weight": mx.ones((2, 2))}, 0, worker_id="w")
        assert store.version == 0


TOKEN = "correct-horse-battery-staple"


@pytest.mark.parametrize("sent", [None, "wrong-token"])
def test_missing_or_wrong_token_gets_unauthenticated_and_nothing_is_applied(sent):
    # given a server that requires a token
    weights = random_weights()
    store = ParameterStore(weights, mode="async", max_staleness=5)
    with serve(store, token=TOKEN) as server:
        with ParameterClient(server.address, token=sent, timeout=5) as intruder:
            # when a client without the right token calls anything
            for call in (intruder.info, lambda: intruder.pull_if_newer(-1),
                         lambda: intruder.push_gradients(random_grads(weights, 0), 0),
                         lambda: next(intruder.watch(timeout=5))):
                with pytest.raises(ParameterServerError) as e:
                    call()
                # then it is UNAUTHENTICATED
                assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
            # health probes stay open
            assert intruder.health() == "SERVING"
        # and nothing was applied; the right token works
        assert store.version == 0
        with ParameterClient(server.address, token=TOKEN, timeout=5) as client:
            assert client.push_gradients(random_grads(weights, 0), 0).applied
            assert client.pull_if_newer(0).version == 1


def test_binding_a_public_address_without_a_token_is_refused():
    store = ParameterStore(random_weights())
    with pytest.raises(InsecureBindError):
        serve(store, host="0.0.0.0")
    with serve(store, host="0.0.0.0", token=TOKEN) as server:
        with ParameterClient(f"127.0.0.1:{server.port}", token=TOKEN, timeout=5) as client:
            assert client.info().version == 0


def test_tls_server_talks_to_a_client_that_trusts_its_certificate(tmp_path):
    # given a self-signed certificate for localhost
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    weights = random_weights()
    with serve(ParameterStore(weights), token=TOKEN, tls_cert=cert, tls_key=key) as server:
        # when a TLS client pulls, then it gets the weights
        with ParameterClient(f"localhost:{server.port}", token=TOKEN, tls_cert=cert, timeout=10) as client:
            assert mx.array_equal(client.pull_if_newer(-1).weights["embed.weight"], weights["embed.weight"]).item()
        # and a plaintext client gets no answer
        with ParameterClient(f"localhost:{server.port}", token=TOKEN, timeout=1, retries=1) as plain:
            with pytest.raises(ServerUnavailable):
                plain.info()


def test_a_message_over_the_size_limit_is_refused():
    store = ParameterStore(random_weights())
    with serve(store, max_message_bytes=1024 * 1024) as server:
        with grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", -1)]) as channel:
            stub = experience_pb2_grpc.ExperienceStub(channel)
            with pytest.raises(grpc.RpcError) as e:
                stub.PushTrajectories(xpb.TrajectoryBatch(trajectories=[b"x" * 2 * 1024 * 1024]), timeout=5)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert server.hub.take_groups(1, timeout=0) == []


def test_lora_only_sync_moves_only_the_adapters(micro_model_dir):
    # given a server for a LoRA model (base frozen) and an actor with the same base
    from lazarus.models.load import load
    from lazarus.models.lora import adapter_parameters, apply_lora

    learner, _ = load(micro_model_dir)
    apply_lora(learner, rank=4)
    store = ParameterStore.from_model(learner, optimizer="sgd", learning_rate=0.5)
    actor, _ = load(micro_model_dir)
    apply_lora(actor, rank=4)
    with serve(store) as server, ParameterClient(server.address, timeout=10) as client:
        # when the learner steps on adapter gradients and the actor pulls the trainable scope
        grads = {k: mx.ones(v.shape, v.dtype) for k, v in adapter_parameters(learner).items()}
        assert client.push_gradients(grads, 0).applied
        full, adapters = client.pull_if_newer(-1, "full"), client.pull_if_newer(0, "trainable")
        # then the trainable snapshot holds just the adapters, is much smaller, and updates the actor
        assert set(adapters.weights) == set(grads)
        adapter_bytes = sum(v.nbytes for v in adapters.weights.values())
        assert adapter_bytes * 5 < sum(v.nbytes for v in full.weights.values())
        adapters.apply_to(actor)
        for name, value in adapter_parameters(actor).items():
            assert mx.array_equal(value, full.weights[name]).item()


def test_watch_tells_subscribers_each_new_version():
    weights = random_weights()
    store = ParameterStore(weights, mode="async", max_staleness=10)
    seen = []
    with serve(store) as server, ParameterClient(server.address, timeout=10) as client:
        watcher = threading.Thread(target=lambda: seen.extend(client.watch(after_version=0, timeout=3)))
        watcher.start()
        for v in range(3):
            client.push_gradients(random_grads(weights, v), base_version=v)
        watcher.join()
    assert seen and seen[-1] == 3 and seen == sorted(set(seen))


def test_publish_from_a_learner_that_steps_itself_bumps_the_version():
    weights = random_weights()
    store = ParameterStore(weights)
    with serve(store) as server, ParameterClient(server.address, timeout=10) as client:
        assert store.publish({"norm.weight": mx.zeros((32,), dtype=mx.bfloat16)}) == 1
        snapshot = client.pull_if_newer(0)
        assert snapshot.version == 1 and not snapshot.weights["norm.weight"].any().item()


def test_a_restarted_store_continues_from_the_checkpointed_version_and_optimizer_state(tmp_path):
    # given two adam steps taken without interruption
    weights = {k: v.astype(mx.float32) for k, v in random_weights().items()}
    settings = dict(mode="async", max_staleness=0, optimizer="adam", learning_rate=0.01)
    straight = ParameterStore(weights, **settings)
    for step in range(2):
        straight.push(step, random_grads(weights, step))
    # when the same two steps are taken with a restart in between
    first = ParameterStore(weights, state_dir=tmp_path, **settings)
    first.push(0, random_grads(weights, 0))
    restarted = ParameterStore(weights, state_dir=tmp_path, **settings)
    assert restarted.version == 1
    restarted.push(1, random_grads(weights, 1))
    # then version and weights match the uninterrupted run
    assert restarted.version == straight.version == 2
    for name in weights:
        assert mx.allclose(restarted.weights[name], straight.weights[name], rtol=1e-6, atol=1e-7).item()


METHODS = [
    ("/lazarus.v1.ParameterServer/GetServerInfo", "unary_unary"),
    ("/lazarus.v1.ParameterServer/PullWeights", "unary_stream"),
    ("/lazarus.v1.ParameterServer/WatchVersions", "unary_stream"),
    (PUSH, "stream_unary"),
    ("/lazarus.v1.Experience/NextTask", "unary_unary"),
    ("/lazarus.v1.Experience/PushTrajectories", "unary_unary"),
    ("/lazarus.v1.Experience/Heartbeat", "unary_unary"),
]


@pytest.fixture(scope="module")
def fuzzed_server():
    weights = random_weights()
    store = ParameterStore(weights, mode="sync", workers=2)
    with serve(store) as server, grpc.insecure_channel(server.address) as channel:
        yield store, server, channel


@settings(max_examples=15 if REDUCED else 60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(METHODS), messages=st.lists(st.binary(max_size=200), min_size=1, max_size=4))
def test_random_bytes_to_every_method_never_crash_the_server(fuzzed_server, method, messages):
    store, server, channel = fuzzed_server
    path, kind = method
    call = getattr(channel, kind)(path, request_serializer=None, response_deserializer=None)
    try:
        if kind == "unary_unary":
            call(messages[0], timeout=2)
        elif kind == "unary_stream":
            for _ in call(messages[0], timeout=0.3):
                pass
        else:
            call(iter(messages), timeout=2)
    except grpc.RpcError as e:
        # an unhandled exception in a handler would show as UNKNOWN
        assert e.code() != grpc.StatusCode.UNKNOWN, e.details()
    assert store.version == 0 and store.pending() == 0
    with ParameterClient(server.address, timeout=5) as client:
        assert client.health() == "SERVING"
