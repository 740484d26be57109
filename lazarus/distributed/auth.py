"""Security for the gRPC listeners: bind rules, a shared-token interceptor, TLS credentials, size limits.

Secure by default: servers bind 127.0.0.1; binding any other address needs a token. The token travels
as `authorization: Bearer <token>` metadata and is compared in constant time; a missing or wrong token
ends the call with UNAUTHENTICATED before any handler runs, so nothing is applied. The health service
stays open so that probes need no secret (it reveals only SERVING / NOT_SERVING). Refused calls are
logged with the peer by `guard.CallGuard`, which runs outside this interceptor (rate-limited). A
certificate or key that does not load is reported with its file and the TLS library's reason before
the server tries to bind.
"""

from __future__ import annotations

import hmac
import ipaddress
import ssl
from pathlib import Path

import grpc

from lazarus.errors import LazarusError

AUTH_HEADER = "authorization"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
#: Largest single message either side accepts: a 4 MiB chunk plus framing, or a trajectory batch.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class InsecureBindError(LazarusError, ValueError):
    """A listener on a non-loopback address without a token."""


class TokenFileError(LazarusError, ValueError):
    """A token file that is missing or empty."""


class TLSFileError(LazarusError, ValueError):
    """A TLS certificate or key that cannot be read or does not load; names the file and the reason."""


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
    """Credentials from PEM files, checked first: gRPC itself only reports a failed bind."""
    server_ssl_context(cert_path, key_path)
    return grpc.ssl_server_credentials([(_read_pem(key_path, "key"), _read_pem(cert_path, "certificate"))])


def server_ssl_context(cert_path: str | Path, key_path: str | Path) -> ssl.SSLContext:
    """The same PEM files as a TLS server context for a plain socket (the weight transfer socket)."""
    _read_pem(cert_path, "certificate")  # a missing or non-PEM file is named before the TLS library's error
    _read_pem(key_path, "key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert_path), str(key_path))
    except ssl.SSLError as e:
        reason = e.reason or str(e)
        if reason in ("KEY_VALUES_MISMATCH", "X509_CHECK_PRIVATE_KEY", "KEY_TYPE_MISMATCH"):
            raise TLSFileError(f"TLS key {key_path} does not belong to certificate {cert_path} ({reason})") from None
        raise TLSFileError(f"TLS certificate {cert_path} / key {key_path} do not load: {reason} "
                           f"(expected PEM files: a certificate and its unencrypted private key)") from None
    return context


def _read_pem(path: str | Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise TLSFileError(f"TLS {what} file {path}: {e.strerror}") from None
    if b"-----BEGIN" not in data:
        raise TLSFileError(f"TLS {what} file {path} is not PEM (no '-----BEGIN' line)")
    return data


def channel_credentials(cert_path: str | Path) -> grpc.ChannelCredentials:
    """Trust the server's certificate (or the CA that signed it) from `cert_path`."""
    return grpc.ssl_channel_credentials(root_certificates=Path(cert_path).read_bytes())


def client_ssl_context(cert_path: str | Path) -> ssl.SSLContext:
    """The same trust as `channel_credentials`, for a plain socket (the weight transfer socket)."""
    return ssl.create_default_context(cadata=_read_pem(cert_path, "certificate").decode())


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
    """A handler of the same streaming kind that aborts before reading any request (`guard` logs the peer)."""

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
