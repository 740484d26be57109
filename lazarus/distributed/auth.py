"""Security for the gRPC listeners: bind rules, a shared-token interceptor, TLS credentials, size limits.

Secure by default: servers bind 127.0.0.1; binding any other address needs a token. The token travels
as `authorization: Bearer <token>` metadata and is compared in constant time; a missing or wrong token
ends the call with UNAUTHENTICATED before any handler runs, so nothing is applied. The health service
stays open so that probes need no secret (it reveals only SERVING / NOT_SERVING).
"""

from __future__ import annotations

from lazarus.errors import LazarusError
import hmac
import ipaddress
from pathlib import Path

import grpc

AUTH_HEADER = "authorization"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
#: Largest single message either side accepts: a 4 MiB chunk plus framing, or a trajectory batch.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class InsecureBindError(LazarusError, ValueError):
    """A listener on a non-loopback address without a token."""


class TokenFileError(LazarusError, ValueError):
    """A token file that is missing or empty."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise InsecureBindError(f"refusing to bind {host} without an auth token: pass --token-file "
                                f"(and preferably --tls-cert/--tls-key), or bind 127.0.0.1")


def read_token(path: str | Path) -> str:
    path = Path(path)
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise TokenFileError(f"token file {path}: {e.strerror}") from None
    if not token:
        raise TokenFileError(f"token file {path} is empty")
    return token


def call_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return ((AUTH_HEADER, f"Bearer {token}"),) if token else ()


def message_options(max_message_bytes: int = MAX_MESSAGE_BYTES) -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)]


def server_credentials(cert_path: str | Path, key_path: str | Path) -> grpc.ServerCredentials:
    cert, key = Path(cert_path).read_bytes(), Path(key_path).read_bytes()
    return grpc.ssl_server_credentials([(key, cert)])


def channel_credentials(cert_path: str | Path) -> grpc.ChannelCredentials:
    """Trust the server's certificate (or the CA that signed it) from `cert_path`."""
    return grpc.ssl_channel_credentials(root_certificates=Path(cert_path).read_bytes())


class TokenInterceptor(grpc.ServerInterceptor):
    """Ends every call without the right bearer token with UNAUTHENTICATED (health checks excepted)."""

    def __init__(self, token: str):
        if not token:
            raise ValueError("TokenInterceptor needs a non-empty token")
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_PREFIX):
            return handler
        sent = dict(handler_call_details.invocation_metadata or ()).get(AUTH_HEADER, "")
        sent = sent.encode() if isinstance(sent, str) else bytes(sent)
        if hmac.compare_digest(sent, self._expected):
            return handler
        return _deny(handler, "missing auth token" if not sent else "wrong auth token")


def _deny(handler: grpc.RpcMethodHandler, detail: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind that aborts before reading any request."""

    def abort(request_or_iterator, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, detail)

    def abort_stream(request_or_iterator, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, detail)
        yield  # pragma: no cover  (makes this a generator, as streaming handlers are)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort_stream)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort_stream)
    return grpc.unary_unary_rpc_method_handler(abort)
