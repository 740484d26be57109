"""Cross-host weight pulls over a plain TCP socket beside gRPC: one copy per byte, from the socket into the arrays.

gRPC's Python stack hands each 4 MiB message over as a new `bytes`, so a streamed pull copies every byte
twice after the kernel and one client gets about 0.4x what a raw socket carries (bench/weights.py). Here
gRPC stays the control plane and the bytes take a socket of their own:

1. The client calls `OpenTransfer` (authenticated like every call). The server pins the current snapshot
   and answers with its header, the port of its `TransferListener` and a ticket: 32 random bytes, good
   for one connection within `TICKET_TTL_S`.
2. The client connects to that port on the host it reached the server at and sends the ticket. The
   server answers one status byte (`OK`, or `REFUSED` for a ticket that is unknown, used or expired),
   then the chunks' sha256 digests in order, then the payload: the chunks' data end to end (`codec`).
3. The client `recv_into`s each chunk straight into the tensors it covers (`SnapshotDecoder.receive_chunk`),
   and a helper thread checks each chunk against its digest and the digests against the header's sha256,
   as a streamed pull is checked; a mismatch names the tensors.

A server with TLS wraps the transfer socket in TLS with the same certificate. A ticket reaches only a
caller that passed the token check, and it is the only thing the listener reads from a connection (a
fixed 32 bytes, within `HELLO_TIMEOUT_S`), so the listener asks no more of a stranger than the gRPC port
does. Clients that cannot reach the port (a firewall, a proxy) fall back to the gRPC stream.
"""

from __future__ import annotations

import logging
import secrets
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import mlx.core as mx

from lazarus.distributed import codec
from lazarus.distributed import parameter_server_pb2 as pb
from lazarus.errors import LazarusError

log = logging.getLogger(__name__)

TICKET_BYTES = 32
DIGEST_BYTES = 32
#: How long a ticket stays good: the client connects right after it gets one.
TICKET_TTL_S = 30.0
#: Tickets waiting for their connection; past this the oldest are dropped (each pins a snapshot).
MAX_TICKETS = 256
#: Connections served at once; more wait their turn (each sends at the speed of its socket).
MAX_SENDING = 8
#: A connection must send its ticket within this long.
HELLO_TIMEOUT_S = 10.0
#: A stalled receiver is dropped after this long without progress.
SEND_TIMEOUT_S = 60.0
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
OK, REFUSED = b"\x01", b"\x00"


class TransferError(LazarusError, ConnectionError):
    """A transfer that did not complete (refused ticket, connection lost); names the peer."""


class TransferUnreachable(TransferError):
    """The transfer port cannot be reached from here (a firewall, a proxy): stream over gRPC instead."""


class TransferListener:
    """The server's side: a listening socket that sends pinned snapshots to the holders of tickets."""

    def __init__(self, host: str, port: int = 0, ssl_context: ssl.SSLContext | None = None,
                 ttl_s: float = TICKET_TTL_S, max_tickets: int = MAX_TICKETS, max_sending: int = MAX_SENDING):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, backlog=64)
        self.host, self.port = host, self._listener.getsockname()[1]
        self.ssl_context, self.ttl_s, self.max_tickets = ssl_context, ttl_s, max_tickets
        self._tickets: OrderedDict[bytes, tuple[float, codec.EncodedSnapshot]] = OrderedDict()
        self._sending = threading.BoundedSemaphore(max_sending)
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        self.sent = 0  # snapshots sent whole
        self._thread = threading.Thread(target=self._accept, name="lazarus-transfer", daemon=True)
        self._thread.start()

    def issue(self, encoded: codec.EncodedSnapshot) -> bytes:
        """A new single-use ticket for `encoded` (held until used or expired)."""
        ticket = secrets.token_bytes(TICKET_BYTES)
        now = time.monotonic()
        with self._lock:
            while self._tickets and (len(self._tickets) >= self.max_tickets or self._oldest_expiry() < now):
                self._tickets.popitem(last=False)
            self._tickets[ticket] = (now + self.ttl_s, encoded)
        return ticket

    def _oldest_expiry(self) -> float:
        return next(iter(self._tickets.values()))[0]

    def outstanding(self) -> int:
        with self._lock:
            return len(self._tickets)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections, self._tickets = list(self._connections), OrderedDict()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)

    # -- serving ----------------------------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._connections.add(conn)
            threading.Thread(target=self._serve, args=(conn, peer), name="lazarus-transfer-send", daemon=True).start()

    def _take(self, ticket: bytes) -> codec.EncodedSnapshot | None:
        with self._lock:
            entry = self._tickets.pop(ticket, None)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def _serve(self, conn: socket.socket, peer) -> None:
        stream = conn
        try:
            conn.settimeout(HELLO_TIMEOUT_S)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                stream = self.ssl_context.wrap_socket(conn, server_side=True)
            ticket = bytearray(TICKET_BYTES)
            receive_exactly(stream, memoryview(ticket), f"transfer client {peer[0]}")
            encoded = self._take(bytes(ticket))
            if encoded is None:
                stream.sendall(REFUSED)
                log.warning("transfer: refused a ticket from %s (unknown, used or expired)", peer[0])
                return
            with self._sending:
                stream.settimeout(SEND_TIMEOUT_S)
                stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
                chunks = [codec.read_chunk(part) for part in encoded.parts[1:]]
                stream.sendall(OK + b"".join(chunk.sha256 for chunk in chunks))
                for chunk in chunks:
                    stream.sendall(chunk.data)
            with self._lock:
                self.sent += 1
        except (OSError, ssl.SSLError, TransferError) as e:
            if not self._closed:
                log.info("transfer to %s ended early: %s", peer[0], e)
        finally:
            with self._lock:
                self._connections.discard(conn)
            try:
                stream.close()
            finally:
                conn.close()


# -- the client's side -----------------------------------------------------------------------------------


def receive_exactly(sock: socket.socket, view: memoryview, peer: str) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:], len(view) - got)
        if n == 0:
            raise TransferError(f"{peer} closed the transfer after {got} of {len(view)} bytes")
        got += n


def receive(host: str, answer: pb.TransferTicket, deadline: float,
            ssl_context: ssl.SSLContext | None = None,
            accept_header: Callable[[pb.SnapshotHeader], None] | None = None) -> dict[str, mx.array]:
    """Fetch the snapshot `answer` announces from its listener on `host`, checked like a streamed pull.

    Raises `TransferError` when the connection fails or the ticket is refused, `codec.CodecError` when the
    bytes do not match their digests (naming the tensors), and socket.timeout past `deadline`.
    """
    header, peer = answer.header, f"transfer listener {_join(host, answer.port)}"
    decoder = codec.SnapshotDecoder(accept_header=accept_header)
    try:
        decoder.feed(pb.SnapshotPart(header=header))
        try:
            conn = socket.create_connection((host, answer.port), timeout=_left(deadline, peer))
        except OSError as e:
            raise TransferUnreachable(f"cannot connect to {peer}: {e.strerror or e}") from None
        with conn:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
            stream = ssl_context.wrap_socket(conn, server_hostname=host) if ssl_context is not None else conn
            with stream:
                stream.sendall(answer.ticket)
                status = bytearray(1)
                receive_exactly(stream, memoryview(status), peer)
                if status != OK:
                    raise TransferError(f"{peer} refused the ticket (used or expired)")
                digests = bytearray(DIGEST_BYTES * header.num_chunks)
                receive_exactly(stream, memoryview(digests), peer)

                def fill(piece: memoryview) -> None:
                    stream.settimeout(_left(deadline, peer))
                    receive_exactly(stream, piece, peer)

                for index in range(header.num_chunks):
                    digest = digests[DIGEST_BYTES * index:DIGEST_BYTES * (index + 1)]
                    decoder.receive_chunk(digest, fill)
        return decoder.finish()
    except (OSError, ssl.SSLError) as e:
        if isinstance(e, TransferError):
            raise
        raise TransferError(f"{peer}: {e.strerror or e}") from None
    finally:
        decoder.close()


def _left(deadline: float, peer: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TransferError(f"{peer}: the pull's deadline passed")
    return left


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
