"""Cross-host pulls through the transfer socket: the same snapshot as the stream, one ticket per connection,
only with the token, corruption named, TLS kept, and the gRPC stream whenever the socket cannot be used."""

import socket
import subprocess
import time

import grpc
import mlx.core as mx
import numpy as np
import pytest

from lazarus.distributed import codec, transfer
from lazarus.distributed import parameter_server_pb2 as pb
from lazarus.distributed.client import ParameterClient
from lazarus.distributed.server import BindError, ParameterStore, serve
from lazarus.distributed.transfer import TransferListener

OPEN = "/lazarus.v1.ParameterServer/OpenTransfer"


def model_weights() -> dict[str, mx.array]:
    rng = np.random.default_rng(0)
    return {"embed.weight": mx.array(rng.standard_normal((300, 64), dtype=np.float32)),
            "layers.0.weight": mx.array(rng.standard_normal((64, 64), dtype=np.float32)).astype(mx.bfloat16),
            "layers.0.bias": mx.zeros((0,)),
            "lm_head.weight": mx.array(rng.integers(0, 2**31, (1024, 3000), dtype=np.uint32))}


def open_transfer(channel, have_version=-1, token=None) -> pb.TransferTicket:
    call = channel.unary_unary(OPEN, request_serializer=pb.PullRequest.SerializeToString,
                               response_deserializer=pb.TransferTicket.FromString)
    return call(pb.PullRequest(have_version=have_version), timeout=10,
                metadata=(("authorization", f"Bearer {token}"),) if token else ())


def redeem(port: int, ticket: bytes) -> bytes:
    """Connect, send `ticket`, return everything the listener sends before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(ticket)
        received = bytearray()
        while chunk := conn.recv(1 << 20):
            received += chunk
    return bytes(received)


def test_a_remote_client_pulls_through_the_transfer_socket_the_same_snapshot_as_the_stream():
    # given a server with float32, bfloat16, empty and uint32 tensors (4 chunks of 4 MB)
    weights = model_weights()
    with serve(ParameterStore(weights)) as server:
        # when one client pulls as from another host (no shared memory) and another streams over gRPC
        with ParameterClient(server.address, timeout=10, shared_memory=False) as far, \
                ParameterClient(server.address, timeout=10, shared_memory=False, transfer_socket=False) as streaming:
            moved, streamed = far.pull_if_newer(-1), streaming.pull_if_newer(-1)
            # then the first came through the transfer socket, with its ticket used up
            assert far.transfer_socket and server.transfer.sent == 1 and server.transfer.outstanding() == 0
            # and both have version 0, the same sha256 and bit-identical tensors of the served dtypes
            assert (moved.version, moved.sha256) == (streamed.version, streamed.sha256)
            for name, value in weights.items():
                assert moved.weights[name].dtype == value.dtype and moved.weights[name].shape == value.shape
                assert mx.array_equal(moved.weights[name], value).item()
            # and a client that has the version gets nothing, without a ticket
            assert far.pull_if_newer(0) is None and server.transfer.outstanding() == 0
            # and a newer version comes through the socket too
            server.store.publish({"embed.weight": weights["embed.weight"] + 1})
            newer = far.pull_if_newer(0)
            assert newer.version == 1 and server.transfer.sent == 2
            assert mx.array_equal(newer.weights["embed.weight"], weights["embed.weight"] + 1).item()


def test_a_ticket_is_good_for_one_connection_and_only_the_token_gets_one():
    # given a server that requires a token
    with serve(ParameterStore(model_weights()), token="secret") as server, \
            grpc.insecure_channel(server.address) as channel:
        # when a caller without the token asks for a ticket, then it is refused
        with pytest.raises(grpc.RpcError) as e:
            open_transfer(channel)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # when a caller with the token redeems its ticket twice
        answer = open_transfer(channel, token="secret")
        first, second = redeem(answer.port, answer.ticket), redeem(answer.port, answer.ticket)
        # then the first connection gets the digests and the whole payload, the second only a refusal
        header = answer.header
        assert first[:1] == transfer.OK and len(first) == 1 + 32 * header.num_chunks + header.total_bytes
        assert second == transfer.REFUSED
        # and a made-up ticket is refused the same way
        assert redeem(answer.port, b"x" * transfer.TICKET_BYTES) == transfer.REFUSED
        assert server.transfer.sent == 1


def test_an_expired_ticket_is_refused_naming_the_listener():
    # given a listener whose tickets last 50 ms, holding a snapshot
    store = ParameterStore(model_weights())
    listener = TransferListener("127.0.0.1", ttl_s=0.05)
    try:
        ticket = listener.issue(store.snapshot())
        time.sleep(0.1)
        # when the ticket is redeemed late, then it is refused
        assert redeem(listener.port, ticket) == transfer.REFUSED
        # and the client's receive says so
        answer = pb.TransferTicket(available=True, header=store.snapshot().header, port=listener.port,
                                   ticket=listener.issue(store.snapshot()))
        time.sleep(0.1)
        with pytest.raises(transfer.TransferError, match=f"127.0.0.1:{listener.port} refused the ticket"):
            transfer.receive("127.0.0.1", answer, time.monotonic() + 10)
    finally:
        listener.close()


def test_corrupt_bytes_on_the_transfer_socket_are_caught_naming_the_tensor():
    # given a listener holding a snapshot whose second chunk was altered after it was hashed
    store = ParameterStore(model_weights())
    encoded = store.snapshot()
    damaged = bytearray(encoded.parts[2])
    damaged[-100] ^= 0xFF  # inside the chunk's data
    encoded = codec.EncodedSnapshot(encoded.header, [*encoded.parts[:2], bytes(damaged), *encoded.parts[3:]])
    listener = TransferListener("127.0.0.1")
    try:
        answer = pb.TransferTicket(available=True, header=encoded.header, port=listener.port,
                                   ticket=listener.issue(encoded))
        # when a client receives it, then the sha256 mismatch names the chunk and the tensor it covers
        with pytest.raises(codec.CodecError, match=r"corrupt chunk 1 .*lm_head.weight"):
            transfer.receive("127.0.0.1", answer, time.monotonic() + 10)
    finally:
        listener.close()


def test_a_client_that_cannot_reach_the_transfer_port_streams_over_grpc_from_then_on():
    # given a server whose transfer port is closed (as a firewall would drop it)
    weights = model_weights()
    with serve(ParameterStore(weights)) as server:
        server.transfer.close()
        with ParameterClient(server.address, timeout=10, shared_memory=False) as client:
            # when the client pulls, then it gets the weights over the gRPC stream and stops trying the socket
            snapshot = client.pull_if_newer(-1)
            assert mx.array_equal(snapshot.weights["lm_head.weight"], weights["lm_head.weight"]).item()
            assert not client.transfer_socket and server.transfer.sent == 0
    # and a server started without a transfer socket says so; its clients stream
    with serve(ParameterStore(weights), transfer_port=None) as server, \
            grpc.insecure_channel(server.address) as channel:
        assert not open_transfer(channel).available and server.transfer is None
        with ParameterClient(server.address, timeout=10, shared_memory=False) as client:
            assert client.pull_if_newer(-1).version == 0 and not client.transfer_socket


def test_a_transfer_port_in_use_is_refused_naming_it():
    # given a port another socket holds
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        # when a server is asked to put its transfer socket there, then it refuses, naming the port
        with pytest.raises(BindError, match=f"weight transfers on 127.0.0.1:{port}: address already in use"):
            serve(ParameterStore(model_weights()), transfer_port=port)


def test_with_tls_the_transfer_socket_is_tls_too(tmp_path):
    # given a server with a certificate for localhost
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    weights = model_weights()
    with serve(ParameterStore(weights), token="t", tls_cert=cert, tls_key=key) as server:
        # when a client that trusts it pulls as from another host, then the weights come through the socket
        with ParameterClient(f"localhost:{server.port}", token="t", tls_cert=cert, timeout=10,
                             shared_memory=False) as client:
            snapshot = client.pull_if_newer(-1)
            assert server.transfer.sent == 1
            assert mx.array_equal(snapshot.weights["embed.weight"], weights["embed.weight"]).item()
        # and a plaintext connection with a valid ticket gets no bytes of the snapshot
        with grpc.secure_channel(f"localhost:{server.port}",
                                 grpc.ssl_channel_credentials(cert.read_bytes())) as channel:
            answer = open_transfer(channel, token="t")
        with socket.create_connection(("127.0.0.1", answer.port), timeout=10) as conn:
            conn.sendall(answer.ticket)
            try:
                got = conn.recv(1 << 16)
            except ConnectionResetError:
                got = b""
        assert got[:1] != transfer.OK  # the TLS handshake fails: no status byte, no payload
        assert server.transfer.sent == 1
