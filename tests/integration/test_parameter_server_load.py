"""Parameter server under load and misuse: call limits, server-side deadlines, the port, TLS files, refusal logs,
and a soak of 64 concurrent clients mixing pulls, pushes, stalled streams and garbage."""

import json
import logging
import os
import random
import subprocess
import sys
import threading
import time

import grpc
import mlx.core as mx
import numpy as np
import pytest
from conftest import REDUCED

from lazarus.distributed import codec
from lazarus.distributed import parameter_server_pb2 as pb
from lazarus.distributed.auth import TLSFileError
from lazarus.distributed.client import ParameterClient, ParameterServerError
from lazarus.distributed.guard import MethodLimit
from lazarus.distributed.server import BindError, ParameterStore, serve
from lazarus.errors import LazarusError

PUSH = "/lazarus.v1.ParameterServer/PushGradients"
WATCH = "/lazarus.v1.ParameterServer/WatchVersions"


def small_weights() -> dict[str, mx.array]:
    rng = np.random.default_rng(0)
    return {"embed.weight": mx.array(rng.standard_normal((64, 32), dtype=np.float32)),
            "layers.0.weight": mx.array(rng.standard_normal((32, 32), dtype=np.float32))}


def stalled_push(channel: grpc.Channel, header: bytes, release: threading.Event, timeout: float = 30):
    """Open a push, send its header, then send nothing more until `release` (or the server ends the call)."""
    def parts():
        yield header
        release.wait()

    call = channel.stream_unary(PUSH, request_serializer=None, response_deserializer=pb.PushResult.FromString)
    return call.future(parts(), timeout=timeout)


def settles(predicate, seconds: float = 5.0) -> bool:
    """Whether `predicate` holds within `seconds` (a handler finishes just after its client sees the end)."""
    end = time.monotonic() + seconds
    while not predicate() and time.monotonic() < end:
        time.sleep(0.05)
    return predicate()


def push_header(weights) -> bytes:
    return codec.encode({k: mx.ones_like(v) for k, v in weights.items()}, 0, push_id="stalled").parts[0]


def test_a_stalled_push_is_cancelled_by_the_server_and_frees_its_slot():
    # given a server whose pushes may sit idle for 0.5 s at most
    weights = small_weights()
    store = ParameterStore(weights, mode="async", max_staleness=1)
    limits = {"PushGradients": MethodLimit(limit=2, deadline_s=60, idle_s=0.5)}
    release = threading.Event()
    with serve(store, limits=limits) as server, grpc.insecure_channel(server.address) as channel:
        # when a client opens a push, sends the header and stalls (its own deadline is 30 s away)
        future = stalled_push(channel, push_header(weights), release)
        # then the server ends the call itself, nothing is applied, and the slot is free again
        with pytest.raises(grpc.RpcError) as e:
            future.result(timeout=20)
        assert e.value.code() == grpc.StatusCode.CANCELLED
        assert settles(lambda: server.guard.running("PushGradients") == 0)
        assert store.version == 0
        release.set()
        with ParameterClient(server.address, timeout=10) as client:
            assert client.push_gradients({k: mx.zeros_like(v) for k, v in weights.items()}, 0).applied


def test_calls_over_a_method_limit_are_refused_as_busy_and_health_still_answers():
    # given a server allowing 2 watches and 2 pushes at once
    weights = small_weights()
    store = ParameterStore(weights, mode="async", max_staleness=1)
    limits = {"WatchVersions": MethodLimit(limit=2, deadline_s=60, idle_s=None),
              "PushGradients": MethodLimit(limit=2, deadline_s=60, idle_s=60)}
    release = threading.Event()
    with serve(store, limits=limits, max_workers=12) as server, grpc.insecure_channel(server.address) as channel:
        watch = channel.unary_stream(WATCH, request_serializer=pb.WatchRequest.SerializeToString,
                                     response_deserializer=pb.VersionEvent.FromString)
        # when 2 watches and 2 stalled pushes hold their slots
        watches = [watch(pb.WatchRequest(after_version=100), timeout=30) for _ in range(2)]
        pushes = [stalled_push(channel, push_header(weights), release) for _ in range(2)]
        assert settles(lambda: server.guard.running() == 4)
        # then a third of each is refused at once as busy (UNAVAILABLE, which clients retry)
        with pytest.raises(grpc.RpcError) as e:
            next(watch(pb.WatchRequest(after_version=100), timeout=30))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "busy" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            stalled_push(channel, push_header(weights), release).result(timeout=30)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        # and health and other methods still answer
        with ParameterClient(server.address, timeout=5, retries=0) as client:
            assert client.health(timeout=1) == "SERVING"
            assert client.info(timeout=1).version == 0
        release.set()
        for call in watches:
            call.cancel()
        for push in pushes:
            with pytest.raises(grpc.RpcError):  # a push that ended without chunks is refused, not applied
                push.result(timeout=10)
        assert store.version == 0


def test_a_client_refused_as_busy_retries_until_its_deadline_and_gets_through_when_a_slot_frees():
    # given a server allowing one push at a time, held by a stalled push
    weights = small_weights()
    store = ParameterStore(weights, mode="async", max_staleness=1)
    limits = {"PushGradients": MethodLimit(limit=1, deadline_s=60, idle_s=60)}
    release = threading.Event()
    with serve(store, limits=limits) as server, grpc.insecure_channel(server.address) as channel:
        stalled = stalled_push(channel, push_header(weights), release)
        assert settles(lambda: server.guard.running("PushGradients") == 1)
        # when a client that allows no retries for failures pushes, and the stall ends a moment later
        results = []
        with ParameterClient(server.address, timeout=30, retries=0) as client:
            pushing = threading.Thread(target=lambda: results.append(
                client.push_gradients({k: mx.zeros_like(v) for k, v in weights.items()}, 0)))
            pushing.start()
            time.sleep(0.5)
            release.set()
            pushing.join()
        # then its push went through: busy is back-pressure, retried until the deadline, not a failure
        assert results and results[0].applied and store.version == 1
        with pytest.raises(grpc.RpcError):
            stalled.result(timeout=10)


def test_a_watch_is_ended_at_its_server_deadline_and_the_client_reopens_it():
    # given a server whose watches last at most 1 s
    store = ParameterStore(small_weights(), mode="async", max_staleness=1)
    limits = {"WatchVersions": MethodLimit(limit=2, deadline_s=1.0, idle_s=None)}
    with serve(store, limits=limits) as server, ParameterClient(server.address, timeout=10) as client:
        seen = []
        watching = threading.Thread(target=lambda: seen.extend(client.watch(after_version=0, timeout=6)))
        watching.start()
        # when a version is published after several server-side deadlines have passed
        time.sleep(2.5)
        store.publish({"embed.weight": mx.zeros((64, 32))})
        watching.join()
        # then the client, reopening the stream each time, still saw it, and no watch is left running
        assert seen == [1]
        assert settles(lambda: server.guard.running("WatchVersions") == 0)


def test_a_second_server_on_the_same_port_fails_with_address_in_use():
    # given a server on some port
    store = ParameterStore(small_weights())
    with serve(store) as first:
        # when a second server tries the same port
        with pytest.raises(BindError) as e:
            serve(ParameterStore(small_weights()), port=first.port)
        # then it is refused, naming the address and the cause, as a one-line user error
        assert f"127.0.0.1:{first.port}" in str(e.value) and "address already in use" in str(e.value)
        assert isinstance(e.value, LazarusError)
        # and every client still reaches the first server
        with ParameterClient(first.address, timeout=5) as client:
            assert client.info().version == 0


def make_certificate(tmp_path, name: str):
    cert, key = tmp_path / f"{name}-cert.pem", tmp_path / f"{name}-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    return cert, key


def test_a_bad_tls_key_reports_the_key_not_a_failed_bind(tmp_path):
    # given a certificate, the key of another certificate, and a key file that is not PEM
    cert, _ = make_certificate(tmp_path, "a")
    _, other_key = make_certificate(tmp_path, "b")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key\n")
    store = ParameterStore(small_weights())
    # when the server starts with each, then the error names the key file and the real cause
    with pytest.raises(TLSFileError) as e:
        serve(store, token="t", tls_cert=cert, tls_key=other_key)
    assert str(other_key) in str(e.value) and "does not belong" in str(e.value)
    with pytest.raises(TLSFileError) as e:
        serve(store, token="t", tls_cert=cert, tls_key=garbage)
    assert str(garbage) in str(e.value) and "not PEM" in str(e.value)
    with pytest.raises(TLSFileError) as e:
        serve(store, token="t", tls_cert=cert, tls_key=tmp_path / "missing.pem")
    assert "missing.pem" in str(e.value)
    assert "bind" not in str(e.value)


def test_refused_peers_are_logged_with_their_address_at_most_once_per_interval(caplog):
    # given a server that requires a token
    store = ParameterStore(small_weights())
    with serve(store, token="right") as server:
        with caplog.at_level(logging.WARNING, logger="lazarus.distributed"):
            # when one peer calls 20 times with a wrong token
            with ParameterClient(server.address, token="wrong", timeout=5, retries=0) as intruder:
                for _ in range(20):
                    with pytest.raises(ParameterServerError):
                        intruder.info()
    # then one line names the peer, the method and the reason; the other 19 are held back
    lines = [r.getMessage() for r in caplog.records if r.name == "lazarus.distributed"]
    assert len(lines) == 1, lines
    assert "127.0.0.1" in lines[0] and "GetServerInfo" in lines[0] and "wrong auth token" in lines[0]


# -- soak --------------------------------------------------------------------------------------------------

SOAK_SERVER = r"""
import json, sys
import lazarus
import numpy as np
import mlx.core as mx
from lazarus.distributed.guard import MethodLimit
from lazarus.distributed.server import ParameterStore, serve
rng = np.random.default_rng(0)
weights = {f"layers.{i}.weight": mx.array(rng.standard_normal((256, 256), dtype=np.float32)) for i in range(8)}
store = ParameterStore(weights, mode="async", max_staleness=1000, optimizer="sgd", learning_rate=1e-3)
limits = {"PushGradients": MethodLimit(limit=4, deadline_s=30, idle_s=2.0),
          "PullWeights": MethodLimit(limit=8, deadline_s=30, idle_s=2.0),
          "WatchVersions": MethodLimit(limit=8, deadline_s=2.0, idle_s=None)}
server = serve(store, limits=limits, max_workers=32)
print(json.dumps({"address": server.address}), flush=True)
sys.stdin.readline()  # until the test is done
finite = all(bool(mx.all(mx.isfinite(v)).item()) for v in store.weights.values())
print(json.dumps({"version": store.version, "finite": finite}), flush=True)
server.stop(grace=0)
"""


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


@pytest.mark.slow
def test_soak_64_clients_mixing_pulls_pushes_stalls_and_garbage_never_starve_health():
    # given a real server process (async mode, 8 x 256 KB tensors)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    server = subprocess.Popen([sys.executable, "-c", SOAK_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        address = json.loads(server.stdout.readline())["address"]
        rng = np.random.default_rng(1)
        grads = {f"layers.{i}.weight": mx.array(rng.standard_normal((256, 256), dtype=np.float32)) for i in range(8)}
        valid = codec.encode(grads, 0, push_id="x")
        seconds = 6 if REDUCED else 20
        stop = threading.Event()
        applied, busy, errors, health_failures, rss = [0], [0], [], [], []
        lock = threading.Lock()
        with ParameterClient(address, timeout=10) as warm:
            warm.pull_if_newer(-1)
        baseline = rss_mb(server.pid)

        def client(seed: int) -> None:
            """One of 64 clients: a random mix of what actors, learners, broken and hostile peers do."""
            chooser = random.Random(seed)
            with ParameterClient(address, timeout=15, retries=8) as good, grpc.insecure_channel(address) as raw:
                push = raw.stream_unary(PUSH, request_serializer=None, response_deserializer=None)
                while not stop.is_set():
                    action = chooser.choice(["pull", "push", "stall", "garbage", "corrupt", "watch"])
                    try:
                        if action == "pull":
                            good.pull_if_newer(-1)
                        elif action == "push":
                            version = good.info().version
                            if good.push_gradients(grads, version).applied:
                                with lock:
                                    applied[0] += 1
                        elif action == "stall":  # a push that stops after its header, until the server ends it
                            release = threading.Event()
                            try:
                                stalled_push(raw, valid.parts[0], release, timeout=10).result()
                            except grpc.RpcError:
                                pass
                            release.set()
                        elif action == "garbage":
                            try:
                                push(iter([chooser.randbytes(chooser.randint(1, 300)) for _ in range(3)]), timeout=5)
                            except grpc.RpcError as e:
                                assert e.code() != grpc.StatusCode.UNKNOWN, e.details()
                        elif action == "corrupt":  # a valid header, then a chunk with one flipped byte
                            damaged = bytearray(valid.parts[1])
                            damaged[len(damaged) // 2] ^= 1
                            try:
                                push(iter([valid.parts[0], bytes(damaged)] + valid.parts[2:]), timeout=5)
                                raise AssertionError("a corrupt push was accepted")
                            except grpc.RpcError as e:
                                assert e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAVAILABLE)
                        else:
                            for _ in good.watch(timeout=chooser.uniform(0.1, 3)):
                                pass
                    except ParameterServerError as e:
                        with lock:
                            if "server busy" in str(e):
                                busy[0] += 1  # shed under load until the client's deadline: allowed
                            elif e.code != grpc.StatusCode.FAILED_PRECONDITION:  # too stale: a legitimate refusal
                                errors.append(f"{action}: {e}")
                    except AssertionError as e:
                        with lock:
                            errors.append(f"{action}: {e}")

        def prober() -> None:
            """Health every 0.2 s, each with a 1 s deadline; and the server's memory."""
            with ParameterClient(address, timeout=1, retries=0) as probe:
                while not stop.is_set():
                    try:
                        assert probe.health(timeout=1) == "SERVING"
                    except (ParameterServerError, AssertionError) as e:
                        health_failures.append(str(e))
                    rss.append(rss_mb(server.pid))
                    time.sleep(0.2)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(64)] + [threading.Thread(target=prober)]
        # when 64 clients run at once for a bounded time
        [t.start() for t in threads]
        time.sleep(seconds)
        stop.set()
        [t.join(timeout=60) for t in threads]
        assert not any(t.is_alive() for t in threads), "a client is stuck"
        server.stdin.write("done\n")
        server.stdin.flush()
        final = json.loads(server.stdout.readline())
    finally:
        server.kill()
        server.wait()
    # then health answered every probe within its deadline, valid work got through (or was shed as busy,
    # never failed otherwise), memory stayed bounded, and the server published exactly one version per
    # applied gradient, all finite
    print(f"soak: {applied[0]} gradients applied, {busy[0]} calls shed as busy, server RSS {baseline:.0f} -> "
          f"max {max(rss):.0f} MB")
    assert health_failures == []
    assert errors == []
    assert applied[0] > 0
    assert final == {"version": applied[0], "finite": True}
    assert max(rss) - baseline < 400, f"server RSS grew from {baseline:.0f} MB to {max(rss):.0f} MB"
