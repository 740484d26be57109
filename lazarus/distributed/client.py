"""Client of the parameter server: pull weights when newer, push gradients, watch versions.

Every call has a deadline (the client's `timeout` unless given). Transient failures (server down or
restarting, connection reset mid-stream) are retried with exponential backoff and jitter until the
retries or the deadline run out (a call the server refused as busy, until the deadline); the channel
reconnects on its own once the server is back. A push carries a unique id, so a retried push is
applied once.

A client of a server on this host (a loopback address) pulls through the server's sealed shared memory
(`shared`): the same versions, header and checksums, one copy of the snapshot for all the host's
actors. Other clients (and same-host ones where shared memory is not offered) pull through the server's
transfer socket (`transfer`): a ticket from an authenticated call, then the bytes over a plain socket
straight into the arrays, checked against the same digests. When neither is offered (an older server,
a port a firewall blocks) or a transfer breaks off, the pull streams over gRPC.
"""

from __future__ import annotations

from lazarus.errors import LazarusError
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import grpc
import mlx.core as mx
import mlx.nn as nn
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lazarus.distributed import auth, codec, shared, transfer
from lazarus.distributed import parameter_server_pb2 as pb
from lazarus.distributed import parameter_server_pb2_grpc as pb_grpc
from lazarus.distributed.retry import DeadlinePassed, call_with_retries

log = logging.getLogger(__name__)
TRANSIENT = (grpc.StatusCode.UNAVAILABLE,)
SCOPES = {"full": pb.SCOPE_FULL, "trainable": pb.SCOPE_TRAINABLE}
T = TypeVar("T")


class ParameterServerError(LazarusError):
    """A call the server refused or could not answer; `code` is the gRPC status (None for a bad stream)."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code


class ServerUnavailable(ParameterServerError):
    """The server did not answer within the deadline, after retries."""


@dataclass
class Snapshot:
    version: int
    weights: dict[str, mx.array]
    sha256: str

    def apply_to(self, model: nn.Module) -> nn.Module:
        """Load these weights into `model` (a full snapshot, or only the trainable tensors)."""
        model.load_weights(list(self.weights.items()), strict=False)
        mx.eval(model.parameters())
        return model


@dataclass
class ServerStatus:
    version: int
    mode: str
    workers: int
    max_staleness: int
    optimizer: str
    pending_gradients: int
    tensors: list[pb.TensorSpec] = field(repr=False)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def trainable_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors if t.trainable)


@dataclass
class PushResult:
    accepted: bool
    applied: bool
    version: int
    pending: int
    detail: str = ""


class ParameterClient:
    """One channel to one server. Thread-safe; use one per process (or per role)."""

    def __init__(self, address: str, token: str | None = None, tls_cert: str | Path | None = None,
                 timeout: float = 30.0, retries: int = 6, backoff: float = 0.1, max_backoff: float = 2.0,
                 max_message_bytes: int = auth.MAX_MESSAGE_BYTES, reuse_buffers: bool = True,
                 shared_memory: bool = True, transfer_socket: bool = True):
        """`reuse_buffers` raises MLX's buffer cache to one snapshot's size (`codec.keep_snapshot_buffers`)
        so a client that drops each version before pulling the next receives into warm memory.
        `shared_memory` pulls from a server on this host through its shared memory; `transfer_socket`
        pulls through the server's transfer socket when shared memory is not used (both False: always
        stream over gRPC)."""
        self.address, self.timeout = address, timeout
        self.reuse_buffers = reuse_buffers
        self._host = _host_of(address)
        self.shared_memory = shared_memory and shared.SUPPORTED and auth.is_loopback(self._host)
        self.transfer_socket = transfer_socket
        self._ssl = auth.client_ssl_context(tls_cert) if tls_cert is not None and transfer_socket else None
        codec.keep_message_buffers()
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self._metadata = auth.call_metadata(token)
        options = auth.message_options(max_message_bytes) + [
            # Reconnect quickly after a server restart (gRPC's default backoff grows to 120 s).
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", int(max_backoff * 1000)),
            # Open each stream with room for two chunks instead of waiting for the window to grow.
            ("grpc.http2.lookahead_bytes", 2 * codec.MESSAGE_LIMIT),
        ]
        if tls_cert is not None:
            self.channel = grpc.secure_channel(address, auth.channel_credentials(tls_cert), options)
        else:
            self.channel = grpc.insecure_channel(address, options)
        self._stub = pb_grpc.ParameterServerStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        # Snapshots travel as serialized messages both ways: the codec frames and reads chunks without
        # protobuf's copies, and a gradient push is encoded once and reused by retries.
        self._push = self.channel.stream_unary("/lazarus.v1.ParameterServer/PushGradients",
                                               request_serializer=None,
                                               response_deserializer=pb.PushResult.FromString)
        self._pull = self.channel.unary_stream("/lazarus.v1.ParameterServer/PullWeights",
                                               request_serializer=pb.PullRequest.SerializeToString,
                                               response_deserializer=None)
        self._share = self.channel.unary_unary("/lazarus.v1.ParameterServer/ShareWeights",
                                               request_serializer=pb.PullRequest.SerializeToString,
                                               response_deserializer=pb.SharedSnapshot.FromString)
        self._open_transfer = self.channel.unary_unary("/lazarus.v1.ParameterServer/OpenTransfer",
                                                       request_serializer=pb.PullRequest.SerializeToString,
                                                       response_deserializer=pb.TransferTicket.FromString)

    # -- calls -------------------------------------------------------------------------------------

    def info(self, timeout: float | None = None) -> ServerStatus:
        reply = self._retrying("GetServerInfo", timeout, lambda t: self._stub.GetServerInfo(
            pb.ServerInfoRequest(), timeout=t, metadata=self._metadata))
        return ServerStatus(reply.version, reply.mode, reply.workers, reply.max_staleness, reply.optimizer,
                            reply.pending_gradients, list(reply.tensors))

    def health(self, service: str = "", timeout: float | None = None) -> str:
        reply = self._retrying("Health.Check", timeout, lambda t: self._health.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=t))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def pull_if_newer(self, have_version: int = -1, scope: str = "full",
                      timeout: float | None = None) -> Snapshot | None:
        """The server's weights if its version is newer than `have_version`, else None."""
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {sorted(SCOPES)}, got {scope!r}")
        if self.shared_memory:
            try:
                return self._pull_shared(have_version, scope, timeout)
            except _Stream:
                pass
        if self.transfer_socket:
            try:
                return self._pull_transfer(have_version, scope, timeout)
            except _Stream:
                pass

        def attempt(t: float) -> Snapshot | None:
            decoder = codec.SnapshotDecoder(accept_header=self._accept_header)
            try:
                for part in self.iter_pull(have_version, scope, timeout=t):
                    decoder.feed(part)
                weights = decoder.finish()
            finally:
                decoder.close()
            if decoder.header.unchanged:
                return None
            return Snapshot(decoder.header.version, weights, decoder.header.sha256.hex())

        return self._retrying("PullWeights", timeout, attempt)

    def _pull_shared(self, have_version: int, scope: str, timeout: float | None) -> Snapshot | None:
        """Pull through the server's shared memory; raises `_Stream` when this pull must stream instead."""
        request = pb.PullRequest(have_version=have_version, scope=SCOPES[scope])
        try:
            answer = self._retrying("ShareWeights", timeout, lambda t: self._share(
                request, timeout=t, metadata=self._metadata))
        except ParameterServerError as e:
            if e.code != grpc.StatusCode.UNIMPLEMENTED:  # an older server: stream from now on
                raise
            self.shared_memory = False
            raise _Stream() from None
        if not answer.available:  # not the same host after all (a proxy, a container): stream from now on
            self.shared_memory = False
            raise _Stream()
        if answer.header.unchanged:
            return None
        try:
            weights = shared.read_shared(answer, on_header=self._accept_header)
        except codec.CodecError as e:
            raise ParameterServerError(f"{self.address}: ShareWeights: {e}") from None
        except shared.SharedSnapshotError:
            # replaced by a newer version before we opened it, or another mount namespace: stream this one
            raise _Stream() from None
        return Snapshot(answer.header.version, weights, answer.header.sha256.hex())

    def _pull_transfer(self, have_version: int, scope: str, timeout: float | None) -> Snapshot | None:
        """Pull through the server's transfer socket; raises `_Stream` when this pull must stream instead."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        request = pb.PullRequest(have_version=have_version, scope=SCOPES[scope])
        try:
            answer = self._retrying("OpenTransfer", timeout, lambda t: self._open_transfer(
                request, timeout=t, metadata=self._metadata))
        except ParameterServerError as e:
            if e.code != grpc.StatusCode.UNIMPLEMENTED:  # an older server: stream from now on
                raise
            self.transfer_socket = False
            raise _Stream() from None
        if not answer.available:  # the server has no transfer socket: stream from now on
            self.transfer_socket = False
            raise _Stream()
        if answer.header.unchanged:
            return None
        try:
            weights = transfer.receive(self._host, answer, deadline, self._ssl, accept_header=self._accept_header)
        except codec.CodecError as e:
            raise ParameterServerError(f"{self.address}: transfer: {e}") from None
        except transfer.TransferUnreachable as e:  # a firewall or a proxy in the way: stream from now on
            log.warning("%s: %s; pulling over the gRPC stream from now on", self.address, e)
            self.transfer_socket = False
            raise _Stream() from None
        except transfer.TransferError as e:  # broken off (the server restarting, a deadline): stream this one
            log.info("%s: %s; streaming this pull over gRPC", self.address, e)
            raise _Stream() from None
        return Snapshot(answer.header.version, weights, answer.header.sha256.hex())

    def _accept_header(self, header: pb.SnapshotHeader) -> None:
        if self.reuse_buffers and not header.unchanged:
            codec.keep_snapshot_buffers(header.total_bytes)

    def iter_pull(self, have_version: int = -1, scope: str = "full",
                  timeout: float | None = None) -> Iterator[bytes]:
        """The serialized messages of one PullWeights call (no retries): header, then chunks."""
        request = pb.PullRequest(have_version=have_version, scope=SCOPES[scope])
        return self._pull(request, timeout=timeout or self.timeout, metadata=self._metadata)

    def push_gradients(self, grads: Mapping[str, mx.array], base_version: int, worker_id: str = "",
                       timeout: float | None = None) -> PushResult:
        """Send gradients computed on `base_version`; sync mode: the result says if this completed a step."""
        encoded = codec.encode(dict(grads), base_version, worker_id=worker_id, push_id=uuid.uuid4().hex)
        reply = self._retrying("PushGradients", timeout, lambda t: self._push(
            iter(encoded.parts), timeout=t, metadata=self._metadata))
        return PushResult(reply.accepted, reply.applied, reply.version, reply.pending, reply.detail)

    def watch(self, after_version: int = -1, timeout: float | None = None,
              window: float = 60.0) -> Iterator[int]:
        """Yield each version the server publishes after `after_version`, until `timeout` (None: forever).

        The stream is reopened every `window` seconds and after transient failures, so no single call
        outlives its deadline.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last, failures = after_version, 0
        while deadline is None or time.monotonic() < deadline:
            call_timeout = window if deadline is None else min(window, deadline - time.monotonic())
            stream = self._stub.WatchVersions(pb.WatchRequest(after_version=last), timeout=call_timeout,
                                              metadata=self._metadata)
            try:
                for event in stream:
                    failures = 0
                    last = event.version
                    yield event.version
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    continue
                if not _busy(e) and (e.code() not in TRANSIENT or failures >= self.retries):
                    raise _error("WatchVersions", self.address, e) from None
                failures += 1
                time.sleep(self._delay(failures, deadline))
            finally:
                stream.cancel()

    def wait_for_version(self, version: int, timeout: float | None = None) -> int:
        """Block until the server publishes `version` or later; returns the version seen."""
        timeout = self.timeout if timeout is None else timeout
        for seen in self.watch(after_version=version - 1, timeout=timeout):
            return seen
        raise ServerUnavailable(f"{self.address}: version {version} not published within {timeout:g}s",
                                grpc.StatusCode.DEADLINE_EXCEEDED)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- retries -----------------------------------------------------------------------------------

    def _delay(self, attempt: int, deadline: float | None) -> float:
        delay = min(self.backoff * 2 ** (attempt - 1), self.max_backoff) * random.uniform(0.5, 1.0)
        return delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic()))

    def _await_channel(self, seconds_left: float) -> None:
        """Wait (at most one reconnect backoff, never past the deadline) for the channel to connect, so each
        counted retry gets a real connection attempt after a server restart."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=min(seconds_left, 1.5 * self.max_backoff))
        except grpc.FutureTimeoutError:
            pass

    def _retrying(self, method: str, timeout: float | None, call: Callable[[float], T]) -> T:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            return call_with_retries(
                call, deadline, backoff=lambda attempt: self._delay(attempt, None), reconnect=self._await_channel,
                retryable=lambda e, attempt: _busy(e) or (e.code() in TRANSIENT and attempt <= self.retries))
        except DeadlinePassed as d:
            last = f"; last: {d.last.details()}" if d.last is not None else ""
            raise ServerUnavailable(f"{self.address}: {method} got no answer within the deadline "
                                    f"({d.attempts} attempts{last})", grpc.StatusCode.DEADLINE_EXCEEDED) from None
        except grpc.RpcError as e:
            raise _error(method, self.address, e) from None
        except codec.CodecError as e:
            raise ParameterServerError(f"{self.address}: {method}: {e}") from None


def _busy(e: grpc.RpcError) -> bool:
    """The server shed this call at its concurrency limit (`guard`): retried until the deadline, not counted."""
    return e.code() == grpc.StatusCode.UNAVAILABLE and (e.details() or "").startswith("server busy")


class _Stream(Exception):
    """This pull cannot use shared memory; stream it."""


def _host_of(address: str) -> str:
    """The host part of a gRPC target (127.0.0.1:5000, [::1]:5000, localhost:5000, dns:///host:5000)."""
    target = address.split("///", 1)[-1]
    if target.startswith("["):
        return target[1:target.find("]")]
    return target.rsplit(":", 1)[0] if target.count(":") == 1 else target


def _error(method: str, address: str, e: grpc.RpcError) -> ParameterServerError:
    code = e.code()
    kind = ServerUnavailable if code in TRANSIENT + (grpc.StatusCode.DEADLINE_EXCEEDED,) else ParameterServerError
    return kind(f"{address}: {method} failed with {code.name}: {e.details()}", code)
