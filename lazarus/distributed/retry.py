"""The retry loop both gRPC clients share: call until an answer, a non-retryable error, or the deadline.

Each client decides which errors are worth another attempt and how long to back off; this loop only keeps
the deadline (every attempt gets what is left of it, or less) and counts attempts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import grpc

T = TypeVar("T")


class DeadlinePassed(Exception):
    """No answer within the deadline; `attempts` calls were made, the last failing with `last` (or none)."""

    def __init__(self, attempts: int, last: grpc.RpcError | None):
        super().__init__(f"{attempts} attempts")
        self.attempts, self.last = attempts, last


def call_with_retries(call: Callable[[float], T], deadline: float, *,
                      retryable: Callable[[grpc.RpcError, int], bool], backoff: Callable[[int], float],
                      attempt_timeout: float | None = None,
                      reconnect: Callable[[float], None] | None = None) -> T:
    """`call(timeout)` until it answers; an RpcError that is not `retryable(error, attempt)` is raised as is.

    `deadline` is a `time.monotonic()` instant; each attempt's timeout is what is left of it (at most
    `attempt_timeout`); between attempts it sleeps `backoff(attempt)`, never past the deadline, then gives
    `reconnect(seconds left)` the chance to wait for the channel: a channel in its reconnect backoff fails
    every call at once, so without it a few quick retries can all fall inside one backoff window.
    """
    attempt, last = 0, None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlinePassed(attempt, last)
        try:
            return call(remaining if attempt_timeout is None else min(remaining, attempt_timeout))
        except grpc.RpcError as e:
            attempt, last = attempt + 1, e
            if not retryable(e, attempt):
                raise
            time.sleep(max(0.0, min(backoff(attempt), deadline - time.monotonic())))
            if reconnect is not None:
                reconnect(max(0.0, deadline - time.monotonic()))
