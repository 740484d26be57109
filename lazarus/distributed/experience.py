"""The gRPC `Experience` service over an `ExperienceHub` (`distributed.hub`): tasks, leases, trajectories,
heartbeats and status for rollout actors in other processes, and what an actor needs to join a run (the
run's config and model files, `RunSpec`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from lazarus.data.trajectory import Trajectory, TrajectoryDecodeError
from lazarus.distributed import experience_pb2 as xpb
from lazarus.distributed import experience_pb2_grpc
from lazarus.distributed.hub import BadPush, ExperienceHub, QueueFull

FILE_CHUNK = 1 << 20


# -- what an actor needs to build the model: the run's config and the model files ---------------------------


@dataclass
class ServedFile:
    root: str  # "model" | "adapter"
    name: str
    path: Path
    size: int
    sha256: bytes


@dataclass
class RunSpec:
    """The run's config and the files an actor fetches once (cached by sha256) to build the base model."""

    config_json: bytes
    files: list[ServedFile]
    model_name: str = ""  # single-file model (a .gguf): its file name
    heartbeat_s: float = 1.0

    @classmethod
    def from_paths(cls, config_json: bytes, model_path: Path, adapter_path: Path | None = None,
                   heartbeat_s: float = 1.0) -> RunSpec:
        import hashlib

        files = []
        for root, base in (("model", model_path), ("adapter", adapter_path)):
            if base is None:
                continue
            paths = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
            for p in paths:
                digest = hashlib.sha256()
                with p.open("rb") as f:
                    while chunk := f.read(FILE_CHUNK * 8):
                        digest.update(chunk)
                name = p.name if base.is_file() else str(p.relative_to(base))
                files.append(ServedFile(root, name, p, p.stat().st_size, digest.digest()))
        return cls(config_json, files, model_path.name if model_path.is_file() else "", heartbeat_s)


# -- gRPC ---------------------------------------------------------------------------------------------------


class ExperienceService(experience_pb2_grpc.ExperienceServicer):
    """RPC handlers over an `ExperienceHub` (and the run's `RunSpec` for actors that join)."""

    def __init__(self, hub: ExperienceHub, run: RunSpec | None = None, log: Callable[[str], None] | None = None):
        self.hub = hub
        self.run = run
        self.log = log or (lambda line: None)

    def Join(self, request, context):
        if self.run is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this server runs no learner (nothing to join)")
        self.hub.heartbeat(request.actor_id or context.peer(), -1)
        self.log(f"actor {request.actor_id} joined from {context.peer()}")
        return xpb.RunSpec(
            incarnation=self.hub.incarnation, config_json=self.run.config_json,
            files=[xpb.ModelFile(name=f.name, size=f.size, sha256=f.sha256, root=f.root) for f in self.run.files],
            model_name=self.run.model_name, policy_version=self.hub.policy_version(),
            heartbeat_s=self.run.heartbeat_s, lease_s=self.hub.lease_s)

    def FetchFile(self, request, context):
        served = None if self.run is None else next(
            (f for f in self.run.files if f.root == request.root and f.name == request.name), None)
        if served is None:  # only the listed files, never an arbitrary path
            context.abort(grpc.StatusCode.NOT_FOUND, f"{request.root}/{request.name} is not a file of this run")
        with served.path.open("rb") as f:
            f.seek(request.offset)
            while context.is_active() and (data := f.read(FILE_CHUNK)):
                yield xpb.FileChunk(data=data)

    def NextTask(self, request, context):
        hub = self.hub
        if hub.stopped:
            return xpb.Task(available=False, stop=True, policy_version=hub.policy_version(),
                            incarnation=hub.incarnation)
        lease = hub.next_task(request.actor_id or context.peer())
        if lease is None:
            return xpb.Task(available=False, policy_version=hub.policy_version(), incarnation=hub.incarnation)
        return xpb.Task(available=True, task_id=lease.task.task_id, payload=lease.payload,
                        policy_version=hub.policy_version(), incarnation=hub.incarnation, lease_s=hub.lease_s)

    def PushTrajectories(self, request, context):
        who = f"actor {request.actor_id or '?'} ({context.peer()})"
        decoded = []
        for i, data in enumerate(request.trajectories):
            try:
                decoded.append(Trajectory.from_bytes(data))
            except TrajectoryDecodeError as e:
                self.log(f"refused trajectories from {who}: trajectory {i}: {e}")
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{who}: trajectory {i}: {e}")
        if request.incarnation and request.incarnation != self.hub.incarnation:
            self.hub.counts.unknown_task_pushes += 1
            return xpb.PushTrajectoriesResult(accepted=0, detail=f"learner restarted (incarnation "
                                              f"{self.hub.incarnation}); work of {request.incarnation} dropped")
        try:
            outcome = self.hub.push(request.actor_id, request.task_id, decoded,
                                    nbytes=sum(len(d) for d in request.trajectories), push_id=request.push_id,
                                    stats=dict(request.stats))
        except BadPush as e:
            self.log(f"refused trajectories: {e}")
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{context.peer()}: {e}")
        except QueueFull as e:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        return xpb.PushTrajectoriesResult(accepted=outcome.accepted, duplicate=outcome.duplicate, detail=outcome.detail)

    def Heartbeat(self, request, context):
        hub = self.hub
        if not request.incarnation or request.incarnation == hub.incarnation:
            hub.heartbeat(request.actor_id or context.peer(), request.policy_version, dict(request.stats),
                          list(request.task_ids))
        return xpb.HeartbeatReply(policy_version=hub.policy_version(), stop=hub.stopped, incarnation=hub.incarnation)

    def Status(self, request, context):
        return xpb.StatusReply(json=json.dumps(self.hub.status()).encode())
