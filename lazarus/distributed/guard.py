"""Server-side limits on every call: deadlines, idle timeouts, per-method concurrency, refused-peer logs.

gRPC's synchronous server runs each call on a thread of its pool for as long as the call lasts, so a
few stalled streams (a push that stops sending, a pull whose reader stops reading) or many watchers
would otherwise take every thread, and even the health check would queue behind them. `CallGuard`
wraps every handler except health's:

- at most `limit` calls of a method run at once, and all guarded calls together leave `reserved`
  threads of the pool free, so health and short calls always find one; a call over a limit is
  refused at once with UNAVAILABLE ("server busy"), which clients retry with backoff;
- a call lasting longer than its method's `deadline_s`, or that has waited on its peer (for a request
  message, or for a response to be taken) for `idle_s`, is cancelled by one watchdog thread, which
  frees its worker thread; time the server spends working on a call is never idle;
- refusals (busy, timed out, and every call a handler ends with an error status) are logged with the
  peer, at most one line per peer and reason every `log_every_s` seconds, with a count of the
  lines held back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import grpc

from lazarus.errors import LazarusError

log = logging.getLogger("lazarus.distributed")

HEALTH_PREFIX = "/grpc.health.v1.Health/"


@dataclass(frozen=True)
class MethodLimit:
    """How many calls of one method may run at once and for how long each may last."""

    limit: int = 8
    deadline_s: float = 300.0
    idle_s: float | None = 30.0  # None: a call may wait without moving a message until its deadline


#: Defaults by method name (the last part of the gRPC path). Pulls and pushes move up to a model's
#: bytes and may take minutes on a slow link; a watch waits idle by design and is reopened by the
#: client every minute; everything else is a short unary call.
DEFAULT_LIMITS: dict[str, MethodLimit] = {
    "PullWeights": MethodLimit(limit=8, deadline_s=600.0, idle_s=30.0),
    "PushGradients": MethodLimit(limit=4, deadline_s=600.0, idle_s=30.0),
    "WatchVersions": MethodLimit(limit=8, deadline_s=120.0, idle_s=None),
    "GetServerInfo": MethodLimit(limit=8, deadline_s=30.0, idle_s=None),
    "ShareWeights": MethodLimit(limit=8, deadline_s=30.0, idle_s=None),
    # the Experience service: many actors ask for tasks and heartbeat at once; model files stream for long
    "Join": MethodLimit(limit=16, deadline_s=30.0, idle_s=None),
    "NextTask": MethodLimit(limit=32, deadline_s=30.0, idle_s=None),
    "Heartbeat": MethodLimit(limit=32, deadline_s=30.0, idle_s=None),
    "PushTrajectories": MethodLimit(limit=16, deadline_s=120.0, idle_s=None),
    "FetchFile": MethodLimit(limit=8, deadline_s=1800.0, idle_s=60.0),
    "Status": MethodLimit(limit=8, deadline_s=30.0, idle_s=None),
}
OTHER = MethodLimit(limit=8, deadline_s=60.0, idle_s=None)


class LimitsError(LazarusError, ValueError):
    """Call limits that cannot work with the server's thread pool; names the method."""


class RefusalLog:
    """Logs refused peers, at most one line per (peer host, reason) every `every_s` seconds."""

    def __init__(self, every_s: float = 10.0, logger: logging.Logger = log):
        self.every_s, self.logger = every_s, logger
        self._last: dict[tuple[str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def refused(self, peer: str, method: str, reason: str) -> None:
        host = peer.rsplit(":", 1)[0]  # ipv4:127.0.0.1:54321 -> one entry per host, not per connection
        key, now = (host, reason.split(":", 1)[0]), time.monotonic()
        with self._lock:
            last, held = self._last.get(key, (-float("inf"), 0))
            if now - last < self.every_s:
                self._last[key] = (last, held + 1)
                return
            self._last[key] = (now, 0)
            if len(self._last) > 4096:  # a scan from many hosts must not grow this without bound
                self._last = {k: v for k, v in self._last.items() if now - v[0] < self.every_s}
        more = f" (and {held} more like it in the last {self.every_s:g}s)" if held else ""
        self.logger.warning("refused %s calling %s: %s%s", peer, method, reason, more)


class _Call:
    """One call in progress. The idle clock runs only while the call waits on its peer (for the next
    request message, or for a response to go out), never while the server itself works on it."""

    __slots__ = ("context", "peer", "method", "started", "waiting_since", "limit", "cancelled")

    def __init__(self, context: grpc.ServicerContext, method: str, limit: MethodLimit):
        self.context, self.method, self.limit = context, method, limit
        self.peer = context.peer()  # gRPC forgets it once the call is cancelled
        self.started = time.monotonic()
        self.waiting_since: float | None = None
        self.cancelled = ""

    def wait_for_peer(self) -> None:
        self.waiting_since = time.monotonic()

    def working(self) -> None:
        self.waiting_since = None


class CallGuard(grpc.ServerInterceptor):
    """The interceptor: concurrency limits, deadlines and idle timeouts for every non-health method."""

    def __init__(self, max_workers: int, limits: Mapping[str, MethodLimit] | None = None, reserved: int = 4,
                 refusals: RefusalLog | None = None, tick_s: float = 0.2):
        self.limits = {**DEFAULT_LIMITS, **(limits or {})}
        for method, limit in self.limits.items():
            if limit.limit < 1 or limit.deadline_s <= 0 or (limit.idle_s is not None and limit.idle_s <= 0):
                raise LimitsError(f"call limits for {method}: limit must be >= 1 and times > 0, got {limit}")
        if max_workers - reserved < 1:
            raise LimitsError(f"max_workers {max_workers} leaves no thread for calls after {reserved} reserved "
                              f"for health checks")
        self.capacity = max_workers - reserved
        self.refusals = refusals or RefusalLog()
        self._running: dict[str, int] = {}
        self._total = 0
        self._calls: set[_Call] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._tick_s = tick_s
        self._watchdog = threading.Thread(target=self._watch, name="lazarus-call-watchdog", daemon=True)
        self._watchdog.start()

    def running(self, method: str | None = None) -> int:
        """Calls in progress (of `method`, or all guarded ones)."""
        with self._lock:
            return self._total if method is None else self._running.get(method, 0)

    def stop(self) -> None:
        self._stopped.set()

    # -- the interceptor ---------------------------------------------------------------------------

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        path = handler_call_details.method
        if handler is None or path.startswith(HEALTH_PREFIX):
            return handler
        method = path.rsplit("/", 1)[-1]
        limit = self.limits.get(method, OTHER)
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(
                self._streaming(handler.stream_stream, method, limit, True),
                handler.request_deserializer, handler.response_serializer)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, method, limit, True),
                handler.request_deserializer, handler.response_serializer)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, method, limit, False),
                handler.request_deserializer, handler.response_serializer)
        return grpc.unary_unary_rpc_method_handler(
            self._unary(handler.unary_unary, method, limit, False),
            handler.request_deserializer, handler.response_serializer)

    def _unary(self, behavior: Callable, method: str, limit: MethodLimit, request_streaming: bool) -> Callable:
        def guarded(request, context):
            call = self._enter(context, method, limit)
            try:
                return behavior(self._touching(request, call) if request_streaming else request, context)
            except Exception:
                self._log_end(call)
                raise
            finally:
                self._leave(call)
        return guarded

    def _streaming(self, behavior: Callable, method: str, limit: MethodLimit, request_streaming: bool) -> Callable:
        def guarded(request, context):
            call = self._enter(context, method, limit)
            try:
                for response in behavior(self._touching(request, call) if request_streaming else request, context):
                    call.wait_for_peer()  # gRPC sends the message before it asks for the next one
                    yield response
                    call.working()
            except Exception:
                self._log_end(call)
                raise
            finally:
                self._leave(call)
        return guarded

    @staticmethod
    def _touching(requests: Iterator, call: _Call) -> Iterator:
        """The request messages, with the idle clock running while the next one is awaited."""
        requests = iter(requests)
        while True:
            call.wait_for_peer()
            try:
                request = next(requests)
            except StopIteration:
                return
            finally:
                call.working()
            yield request

    # -- admission -----------------------------------------------------------------------------------

    def _enter(self, context: grpc.ServicerContext, method: str, limit: MethodLimit) -> _Call:
        with self._lock:
            running = self._running.get(method, 0)
            busy = running >= limit.limit or self._total >= self.capacity
            if not busy:
                self._running[method] = running + 1
                self._total += 1
                call = _Call(context, method, limit)
                self._calls.add(call)
        if busy:
            reason = (f"server busy: {running} {method} calls in progress (limit {limit.limit})"
                      if running >= limit.limit else f"server busy: {self.capacity} calls in progress")
            self.refusals.refused(context.peer(), method, reason)
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{reason}; retry later")
        return call

    def _leave(self, call: _Call) -> None:
        with self._lock:
            if call in self._calls:
                self._calls.discard(call)
                self._running[call.method] -= 1
                self._total -= 1
        if call.cancelled:
            self.refusals.refused(call.peer, call.method, call.cancelled)

    def _log_end(self, call: _Call) -> None:
        """A handler that ended with an error status (context.abort raises): log who was refused and why."""
        code = call.context.code() if hasattr(call.context, "code") else None
        if call.cancelled or code in (None, grpc.StatusCode.OK):
            return
        details = call.context.details() if hasattr(call.context, "details") else ""
        details = details.decode(errors="replace") if isinstance(details, bytes) else (details or "")
        self.refusals.refused(call.peer, call.method, f"{code.name}: {details[:200]}")

    # -- the watchdog ----------------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stopped.wait(self._tick_s):
            now = time.monotonic()
            with self._lock:
                expired = [c for c in self._calls if not c.cancelled and _expired(c, now)]
                for call in expired:
                    call.cancelled = _expired(call, now)
            for call in expired:
                call.context.cancel()  # ends the call; its blocked read or write returns and frees the thread


def _expired(call: _Call, now: float) -> str:
    limit = call.limit
    if now - call.started > limit.deadline_s:
        return f"cancelled: {call.method} ran past its server deadline of {limit.deadline_s:g}s"
    waiting_since = call.waiting_since
    if limit.idle_s is not None and waiting_since is not None and now - waiting_since > limit.idle_s:
        return f"cancelled: {call.method} waited on its peer for {limit.idle_s:g}s"
    return ""
