"""The Experience hub: tasks waiting for rollout actors, their leases, and trajectories waiting for the learner.

`ExperienceHub` holds plain dataclasses behind one lock, so it is both the in-process transport (the local
launcher calls it directly) and the state behind the gRPC `Experience` service (`distributed.experience`).
It imports nothing of gRPC: the coordinator and the local launcher, which read only the hub, never load it.

- A task is queued, then leased to one actor until its lease deadline; every heartbeat of that actor
  renews it. A lease that runs out (the actor died or hangs) puts the task back at the front of the queue
  and counts it as requeued.
- The first complete push of a task's trajectories is kept; any later push of the same task (a slow actor
  whose lease had expired, a retried call) is answered `duplicate` and counted, never queued twice. Push
  ids make a retried call return the first answer.
- Trajectories wait as whole groups (a task's prompts each give one group of `group_size`), capped by
  bytes: a push that does not fit raises `QueueFull` (the service answers RESOURCE_EXHAUSTED) and the actor
  retries later.

Counts that add up, at any moment: received = taken + waiting; issued tasks = completed + in flight +
queued (requeued tasks are counted again when reissued: `tasks_requeued` says how often).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lazarus.data.trajectory import RolloutTask, Trajectory
from lazarus.errors import LazarusError

RECENT_PUSHES = 4096
DONE_TASKS = 1 << 16  # completed task ids remembered, so a late push of one is a duplicate, not unknown


class QueueFull(LazarusError):
    """The trajectory queue has no room for this push (by bytes); retry later."""


class BadPush(LazarusError, ValueError):
    """Trajectories that do not fit the task they claim to answer; names the actor."""


@dataclass
class TaskLease:
    task: RolloutTask
    payload: bytes
    state: str = "queued"  # queued | leased (a completed task leaves the hub)
    actor_id: str = ""
    deadline: float = 0.0
    attempts: int = 0


@dataclass
class ActorState:
    actor_id: str
    first_seen: float
    last_seen: float
    policy_version: int = -1
    stats: dict[str, float] = field(default_factory=dict)
    tasks_completed: int = 0
    trajectories: int = 0


@dataclass
class Counts:
    tasks_issued: int = 0
    tasks_completed: int = 0
    tasks_requeued: int = 0
    trajectories_received: int = 0
    trajectories_taken: int = 0
    duplicate_pushes: int = 0
    unknown_task_pushes: int = 0
    queue_full_refusals: int = 0


@dataclass
class PushOutcome:
    accepted: int
    duplicate: bool = False
    detail: str = ""


@dataclass
class Group:
    trajectories: list[Trajectory]
    nbytes: int


class ExperienceHub:
    """Tasks, leases and trajectories of one run (one learner incarnation). Thread-safe."""

    def __init__(self, incarnation: str = "local", policy_version: Callable[[], int] = lambda: 0,
                 lease_s: float = 10.0, max_queue_bytes: int = 1 << 30, clock: Callable[[], float] = time.monotonic):
        self.incarnation = incarnation
        self.policy_version = policy_version
        self.lease_s = lease_s
        self.max_queue_bytes = max_queue_bytes
        self.clock = clock
        self.counts = Counts()
        self.actors: dict[str, ActorState] = {}
        self.stopped = False
        self._cv = threading.Condition()
        self._tasks: dict[str, TaskLease] = {}  # issued and not completed
        self._done: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._queue: collections.deque[str] = collections.deque()
        self._groups: collections.deque[Group] = collections.deque()
        self._queued_bytes = 0
        self._recent: collections.OrderedDict[str, PushOutcome] = collections.OrderedDict()
        self.extra_status: Callable[[], dict] = dict

    # -- tasks ------------------------------------------------------------------------------------------

    def put_task(self, task: RolloutTask) -> None:
        with self._cv:
            if task.task_id in self._tasks or task.task_id in self._done:
                raise ValueError(f"task id {task.task_id} was already issued")
            self._tasks[task.task_id] = TaskLease(task, task.to_bytes())
            self._queue.append(task.task_id)
            self.counts.tasks_issued += 1
            self._cv.notify_all()

    def next_task(self, actor_id: str) -> TaskLease | None:
        """Lease the oldest queued task to `actor_id`, or None when none is queued."""
        with self._cv:
            self._see(actor_id)
            self._expire_locked()
            while self._queue:
                lease = self._tasks.get(self._queue.popleft())
                if lease is None or lease.state != "queued":
                    continue
                lease.state, lease.actor_id = "leased", actor_id
                lease.deadline = self.clock() + self.lease_s
                lease.attempts += 1
                return lease
            return None

    def in_flight(self) -> int:
        """Tasks issued and not yet completed (queued or leased)."""
        with self._cv:
            return len(self._tasks)

    def expire_leases(self) -> list[str]:
        with self._cv:
            return self._expire_locked()

    def _expire_locked(self) -> list[str]:
        now, expired = self.clock(), []
        for task_id, lease in self._tasks.items():
            if lease.state == "leased" and lease.deadline < now:
                lease.state, lease.actor_id = "queued", ""
                expired.append(task_id)
        for task_id in reversed(expired):
            self._queue.appendleft(task_id)  # requeued work goes first: it is the oldest
        self.counts.tasks_requeued += len(expired)
        if expired:
            self._cv.notify_all()
        return expired

    # -- trajectories in --------------------------------------------------------------------------------

    def push(self, actor_id: str, task_id: str, trajectories: list[Trajectory], nbytes: int = 0,
             push_id: str = "", stats: dict | None = None) -> PushOutcome:
        """Queue the trajectories answering `task_id` (whole groups); idempotent per task and per push id."""
        with self._cv:
            if push_id and push_id in self._recent:
                return self._recent[push_id]
            actor = self._see(actor_id)
            lease = self._tasks.get(task_id)
            if task_id in self._done:
                self.counts.duplicate_pushes += 1
                outcome = PushOutcome(0, duplicate=True, detail=f"task {task_id} was already completed")
            elif lease is None:
                self.counts.unknown_task_pushes += 1
                outcome = PushOutcome(0, detail=f"task {task_id} is not a task of this learner "
                                                f"(incarnation {self.incarnation}); dropped")
            else:
                groups = _split_groups(lease.task, trajectories, actor_id)
                if self._queued_bytes + nbytes > self.max_queue_bytes and self._groups:
                    self.counts.queue_full_refusals += 1
                    raise QueueFull(f"trajectory queue holds {self._queued_bytes} bytes; {nbytes} more would pass "
                                    f"runtime.max_queue_bytes={self.max_queue_bytes}; retry later")
                share = nbytes // max(len(groups), 1)
                for group in groups:
                    self._groups.append(Group(group, share))
                self._queued_bytes += share * len(groups)
                del self._tasks[task_id]
                self._done[task_id] = None
                while len(self._done) > DONE_TASKS:
                    self._done.popitem(last=False)
                self.counts.tasks_completed += 1
                self.counts.trajectories_received += len(trajectories)
                actor.tasks_completed += 1
                actor.trajectories += len(trajectories)
                if stats:
                    actor.stats.update(stats)
                outcome = PushOutcome(len(trajectories))
                self._cv.notify_all()
            if push_id:
                self._recent[push_id] = outcome
                while len(self._recent) > RECENT_PUSHES:
                    self._recent.popitem(last=False)
            return outcome

    # -- trajectories out -------------------------------------------------------------------------------

    def take_groups(self, max_groups: int, timeout: float) -> list[list[Trajectory]]:
        """Up to `max_groups` whole groups, oldest first; waits at most `timeout` s for the first one."""
        with self._cv:
            self._cv.wait_for(lambda: self._groups or self.stopped, timeout)
            if not self._groups:
                self._expire_locked()  # the learner is short of work: hand a dead actor's tasks to the living
            taken = []
            while self._groups and len(taken) < max_groups:
                group = self._groups.popleft()
                self._queued_bytes -= group.nbytes
                self.counts.trajectories_taken += len(group.trajectories)
                taken.append(group.trajectories)
            return taken

    def waiting_groups(self) -> int:
        with self._cv:
            return len(self._groups)

    def wait(self, timeout: float) -> None:
        """Sleep until something changes (a push, a new task, stop) or `timeout` passes."""
        with self._cv:
            self._cv.wait(timeout)

    # -- actors -----------------------------------------------------------------------------------------

    def heartbeat(self, actor_id: str, policy_version: int, stats: dict | None = None,
                  task_ids: list[str] | None = None) -> None:
        """Record the actor alive and renew the leases of its tasks."""
        with self._cv:
            actor = self._see(actor_id)
            actor.policy_version = policy_version
            if stats:
                actor.stats.update(stats)
            deadline = self.clock() + self.lease_s
            for task_id in task_ids or []:
                lease = self._tasks.get(task_id)
                if lease is not None and lease.state == "leased" and lease.actor_id == actor_id:
                    lease.deadline = deadline

    def _see(self, actor_id: str) -> ActorState:
        now = self.clock()
        actor = self.actors.get(actor_id)
        if actor is None:
            actor = self.actors[actor_id] = ActorState(actor_id, now, now)
        actor.last_seen = now
        return actor

    def stop(self) -> None:
        with self._cv:
            self.stopped = True
            self._cv.notify_all()

    def status(self) -> dict:
        with self._cv:
            now = self.clock()
            queued = sum(1 for lease in self._tasks.values() if lease.state == "queued")
            leased = sum(1 for lease in self._tasks.values() if lease.state == "leased")
            holding: dict[str, int] = {}
            for lease in self._tasks.values():
                if lease.state == "leased":
                    holding[lease.actor_id] = holding.get(lease.actor_id, 0) + 1
            return {
                "incarnation": self.incarnation, "policy_version": self.policy_version(), "stopped": self.stopped,
                "tasks_queued": queued, "tasks_leased": leased, "groups_waiting": len(self._groups),
                "queued_bytes": self._queued_bytes, "counts": vars(self.counts).copy(),
                "actors": {a.actor_id: {"last_heartbeat_s_ago": round(now - a.last_seen, 3),
                                        "policy_version": a.policy_version, "tasks_completed": a.tasks_completed,
                                        "tasks_leased": holding.get(a.actor_id, 0),
                                        "trajectories": a.trajectories, **a.stats,
                                        "alive": now - a.last_seen <= self.lease_s}  # heard from within a lease
                           for a in self.actors.values()},
                **self.extra_status(),
            }


def _split_groups(task: RolloutTask, trajectories: list[Trajectory], actor_id: str) -> list[list[Trajectory]]:
    """The task's groups, each exactly `group_size` trajectories of the task's group ids, in task order."""
    by_group: dict[str, list[Trajectory]] = {g: [] for g in task.group_ids}
    for i, t in enumerate(trajectories):
        if t.task_id != task.task_id:
            raise BadPush(f"actor {actor_id}: trajectory {i} names task {t.task_id!r}, pushed for {task.task_id!r}")
        if t.group_id not in by_group:
            raise BadPush(f"actor {actor_id}: trajectory {i} has group {t.group_id!r}, not a group of task "
                          f"{task.task_id}")
        by_group[t.group_id].append(t)
    for group_id, members in by_group.items():
        if len(members) != task.group_size:
            raise BadPush(f"actor {actor_id}: task {task.task_id} group {group_id} has {len(members)} trajectories, "
                          f"expected group_size {task.group_size}")
    return list(by_group.values())
