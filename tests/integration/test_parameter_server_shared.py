"""Same-host broadcast through the server's sealed shared memory: same bytes as a stream, sealed, authenticated,
replaced per version, nothing left behind."""

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import grpc
import mlx.core as mx
import numpy as np
import pytest

from lazarus.distributed import parameter_server_pb2 as pb
from lazarus.distributed.client import ParameterClient
from lazarus.distributed.server import ParameterStore, serve
from lazarus.distributed.shared import SUPPORTED, SharedSnapshotError, read_shared

pytestmark = pytest.mark.skipif(not SUPPORTED, reason="no sealed memfd on this platform")
SHARE = "/lazarus.v1.ParameterServer/ShareWeights"


def model_weights() -> dict[str, mx.array]:
    rng = np.random.default_rng(0)
    return {"embed.weight": mx.array(rng.standard_normal((300, 64), dtype=np.float32)),
            "layers.0.weight": mx.array(rng.standard_normal((64, 64), dtype=np.float32)).astype(mx.bfloat16),
            "layers.0.bias": mx.zeros((0,)),
            "lm_head.weight": mx.array(rng.integers(0, 2**31, (1024, 300), dtype=np.uint32))}


def share(channel, have_version=-1, token=None) -> pb.SharedSnapshot:
    call = channel.unary_unary(SHARE, request_serializer=pb.PullRequest.SerializeToString,
                               response_deserializer=pb.SharedSnapshot.FromString)
    return call(pb.PullRequest(have_version=have_version), timeout=10,
                metadata=(("authorization", f"Bearer {token}"),) if token else ())


def lazarus_memfds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:lazarus")
        except OSError:
            pass
    return count


def test_a_same_host_client_gets_the_same_snapshot_through_shared_memory_as_over_the_stream():
    # given a server on loopback with float32, bfloat16, empty and uint32 tensors (3 chunks of 1.5 MB)
    weights = model_weights()
    store = ParameterStore(weights)
    with serve(store) as server:
        # when one client pulls through shared memory and another streams
        with ParameterClient(server.address, timeout=10) as near, \
                ParameterClient(server.address, timeout=10, shared_memory=False) as far:
            assert near.shared_memory and not far.shared_memory
            through_memory = near.pull_if_newer(-1)
            assert store.encode_count == 0  # the segment is written from the arrays, not from a stream's chunks
            streamed = far.pull_if_newer(-1)
            # then both have version 0, the same sha256 and bit-identical tensors of the served dtypes
            assert (through_memory.version, through_memory.sha256) == (streamed.version, streamed.sha256)
            for name, value in weights.items():
                assert through_memory.weights[name].dtype == value.dtype
                assert mx.array_equal(through_memory.weights[name], value).item()
            # and a client that has the version gets nothing
            assert near.pull_if_newer(0) is None
        # and the memory came from one sealed segment that no one can write
        with grpc.insecure_channel(server.address) as channel:
            answer = share(channel)
        assert answer.header == store.snapshot().header  # same chunks, digests and layout as the stream's
        fd = os.open(answer.path, os.O_RDWR)
        try:
            with pytest.raises(OSError) as e:
                os.pwrite(fd, b"x", 0)
            assert e.value.errno == errno.EPERM
        finally:
            os.close(fd)


def test_shared_memory_is_handed_out_only_with_the_token():
    # given a server that requires a token
    with serve(ParameterStore(model_weights()), token="secret") as server, \
            grpc.insecure_channel(server.address) as channel:
        # when a caller asks for the shared snapshot without it, then it is refused
        with pytest.raises(grpc.RpcError) as e:
            share(channel)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # and with it, the client pulls through shared memory
        with ParameterClient(server.address, token="secret", timeout=10) as client:
            assert client.pull_if_newer(-1).version == 0 and client.shared_memory


def test_a_new_version_replaces_the_segment_and_a_stale_answer_is_refused_not_misread():
    # given a client holding the shared-snapshot answer for version 0
    weights = model_weights()
    store = ParameterStore(weights)
    with serve(store) as server, grpc.insecure_channel(server.address) as channel:
        stale = share(channel)
        # when the server publishes version 1 and someone pulls it (replacing the segment)
        store.publish({"embed.weight": weights["embed.weight"] + 1})
        with ParameterClient(server.address, timeout=10) as client:
            assert client.pull_if_newer(0).version == 1
        fresh = share(channel, have_version=0)
        # then the new answer names another file, and the stale one no longer opens as version 0's
        assert (fresh.inode, fresh.header.version) != (stale.inode, 0)
        with pytest.raises(SharedSnapshotError):
            read_shared(stale)
        # and the new one reads as version 1
        assert mx.array_equal(read_shared(fresh)["embed.weight"], weights["embed.weight"] + 1).item()
        # and a version with the same bytes as the last is still a new version to its pullers
        store.publish({"embed.weight": weights["embed.weight"] + 1})
        with ParameterClient(server.address, timeout=10) as client:
            assert client.pull_if_newer(1).version == 2


def test_stopping_the_server_leaves_no_shared_memory_behind():
    # given a server that has shared a snapshot
    before = lazarus_memfds()
    server = serve(ParameterStore(model_weights()))
    with ParameterClient(server.address, timeout=10) as client:
        client.pull_if_newer(-1)
    assert lazarus_memfds() == before + 1
    # when it stops, then its segment is closed (the kernel frees it with the last reader)
    server.stop(grace=0)
    assert lazarus_memfds() == before


@pytest.mark.slow
def test_the_weights_bench_prints_the_stream_vs_tcp_rows_and_the_broadcast_ratio():
    # given the broadcast benchmark in quick mode (8 MB, 1 and 2 clients)
    bench = Path(__file__).resolve().parents[2] / "bench" / "weights.py"
    # when it runs as its own process
    result = subprocess.run([sys.executable, str(bench), "--quick"], capture_output=True, text=True, timeout=600,
                            cwd=bench.parent.parent)
    assert result.returncode == 0, result.stderr[-4000:]
    # then it prints a one-client steady row with the transfer socket's and the stream's ratios to raw TCP,
    # and the broadcast ratio, all positive
    steady = re.search(r"^\s*1\s+steady\s.*\s([0-9.]+)\s+([0-9.]+)$", result.stdout, re.MULTILINE)
    ratio = re.search(r"broadcast 2 clients vs 1: time ratio ([0-9.]+)", result.stdout)
    assert steady and float(steady.group(1)) > 0 and float(steady.group(2)) > 0, result.stdout
    assert ratio and float(ratio.group(1)) > 0, result.stdout
