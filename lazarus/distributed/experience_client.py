"""The actor's side of the Experience service: join, fetch the model files, take tasks, push trajectories.

Every call has a deadline. Transient failures (the learner restarting, a full queue) are retried with
jittered exponential backoff up to the call's deadline; a wrong token or a refused push is an error that
names the learner and the reason.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import grpc

from lazarus.data.io import atomic_writer
from lazarus.distributed import auth
from lazarus.distributed import experience_pb2 as xpb
from lazarus.distributed import experience_pb2_grpc
from lazarus.distributed.retry import DeadlinePassed, call_with_retries
from lazarus.errors import LazarusError

T = TypeVar("T")
TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED)


class LearnerError(LazarusError):
    """The learner refused a call (bad token, bad request); the message names the learner and the reason."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code


class LearnerUnavailable(LearnerError):
    """The learner did not answer within the deadline (not up yet, or gone)."""


def cache_root() -> Path:
    return Path(os.environ.get("LAZARUS_CACHE") or Path.home() / ".cache" / "lazarus")


class ExperienceClient:
    def __init__(self, address: str, actor_id: str, token: str | None = None, tls_cert: str | Path | None = None,
                 timeout: float = 30.0, max_backoff: float = 2.0):
        self.address, self.actor_id, self.timeout, self.max_backoff = address, actor_id, timeout, max_backoff
        self._metadata = auth.call_metadata(token)
        options = auth.message_options() + [("grpc.initial_reconnect_backoff_ms", 100),
                                            ("grpc.min_reconnect_backoff_ms", 100),
                                            ("grpc.max_reconnect_backoff_ms", int(max_backoff * 1000))]
        if tls_cert is not None:
            self.channel = grpc.secure_channel(address, auth.channel_credentials(tls_cert), options)
        else:
            self.channel = grpc.insecure_channel(address, options)
        self._stub = experience_pb2_grpc.ExperienceStub(self.channel)
        self.incarnation = ""

    # -- calls ---------------------------------------------------------------------------------------------

    def join(self, wait: float | None = None) -> xpb.RunSpec:
        """The run's spec; waits up to `wait` seconds (default: the client timeout) for the learner to be up."""
        spec = self._call("Join", wait, lambda t: self._stub.Join(xpb.JoinRequest(actor_id=self.actor_id),
                                                                  timeout=t, metadata=self._metadata))
        self.incarnation = spec.incarnation
        return spec

    def next_task(self, policy_version: int, timeout: float | None = None) -> xpb.Task:
        return self._call("NextTask", timeout, lambda t: self._stub.NextTask(
            xpb.NextTaskRequest(actor_id=self.actor_id, policy_version=policy_version, incarnation=self.incarnation),
            timeout=t, metadata=self._metadata))

    def push(self, task_id: str, payloads: list[bytes], stats: dict[str, float],
             timeout: float | None = None) -> xpb.PushTrajectoriesResult:
        """Push a task's trajectories; a retried push (same push id) is applied once by the learner."""
        request = xpb.TrajectoryBatch(actor_id=self.actor_id, task_id=task_id, trajectories=payloads,
                                      push_id=uuid.uuid4().hex, incarnation=self.incarnation, stats=stats)
        return self._call("PushTrajectories", timeout, lambda t: self._stub.PushTrajectories(
            request, timeout=t, metadata=self._metadata))

    def heartbeat(self, policy_version: int, stats: dict[str, float], task_ids: list[str],
                  timeout: float = 5.0) -> xpb.HeartbeatReply:
        return self._call("Heartbeat", timeout, lambda t: self._stub.Heartbeat(
            xpb.HeartbeatRequest(actor_id=self.actor_id, policy_version=policy_version, stats=stats,
                                 incarnation=self.incarnation, task_ids=task_ids), timeout=t, metadata=self._metadata))

    def status(self, timeout: float = 5.0) -> bytes:
        return self._call("Status", timeout, lambda t: self._stub.Status(
            xpb.StatusRequest(), timeout=t, metadata=self._metadata)).json

    def fetch_files(self, spec: xpb.RunSpec, root: Path | None = None) -> dict[str, Path]:
        """Every file of the run's model (and adapter), cached on disk by sha256; returns {root: local path}.

        A file already in the cache with the right digest is not fetched again; each is written to a temp
        name and renamed once its digest checks out, so a killed actor never leaves a bad cache entry.
        """
        root = root or cache_root()
        blobs = root / "blobs"
        blobs.mkdir(parents=True, exist_ok=True)
        listing = hashlib.sha256(b"".join(f"{f.root}/{f.name}".encode() + f.sha256 for f in spec.files)).hexdigest()
        trees = root / "runs" / listing[:32]
        for f in spec.files:
            blob = blobs / f.sha256.hex()
            if not (blob.exists() and blob.stat().st_size == f.size):
                self._fetch(f, blob)
            dest = trees / f.root / f.name
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(blob, dest)
                except OSError:
                    dest.write_bytes(blob.read_bytes())
        paths = {r: trees / r for r in {f.root for f in spec.files}}
        if spec.model_name:
            paths["model"] = trees / "model" / spec.model_name
        return paths

    def _fetch(self, f: xpb.ModelFile, blob: Path) -> None:
        digest = hashlib.sha256()
        with atomic_writer(blob, "wb") as out:
            deadline = max(self.timeout, f.size / 20e6)  # at least 20 MB/s
            stream = self._stub.FetchFile(xpb.FileRequest(root=f.root, name=f.name), timeout=deadline,
                                          metadata=self._metadata)
            try:
                for chunk in stream:
                    digest.update(chunk.data)
                    out.write(chunk.data)
            except grpc.RpcError as e:
                raise _error("FetchFile", self.address, e) from None
            if digest.digest() != f.sha256:
                raise LearnerError(f"{self.address}: file {f.root}/{f.name} arrived with a wrong sha256")

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- retries -----------------------------------------------------------------------------------------

    def _call(self, method: str, timeout: float | None, call: Callable[[float], T]) -> T:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            return call_with_retries(
                call, deadline, attempt_timeout=self.timeout, retryable=lambda e, attempt: e.code() in TRANSIENT,
                backoff=lambda attempt: min(0.05 * 2 ** attempt, self.max_backoff) * random.uniform(0.5, 1.0))
        except DeadlinePassed as d:
            raise LearnerUnavailable(f"learner {self.address}: {method} got no answer within the deadline "
                                     f"({d.attempts} attempts)", grpc.StatusCode.DEADLINE_EXCEEDED) from None
        except grpc.RpcError as e:
            raise _error(method, self.address, e) from None


def _error(method: str, address: str, e: grpc.RpcError) -> LearnerError:
    code = e.code()
    kind = LearnerUnavailable if code in TRANSIENT else LearnerError
    return kind(f"learner {address}: {method} failed with {code.name}: {e.details()}", code)
