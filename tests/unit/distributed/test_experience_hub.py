"""The Experience hub: leases, requeues, idempotent pushes, the byte cap, and counts that add up; and its
gRPC service refusing malformed pushes with INVALID_ARGUMENT naming the actor."""

import grpc
import numpy as np
import pytest

from lazarus.data.trajectory import RolloutTask, SamplingSettings, Trajectory
from lazarus.distributed import experience_pb2 as xpb
from lazarus.distributed import experience_pb2_grpc
from lazarus.distributed.hub import BadPush, ExperienceHub, QueueFull


def task(task_id: str, prompts: int = 2, group_size: int = 2) -> RolloutTask:
    return RolloutTask(task_id=task_id, prompts=[[1, 2, 3]] * prompts, rows=[{"answer": "1"}] * prompts,
                       group_ids=[f"{task_id}:{k}" for k in range(prompts)], group_size=group_size,
                       sampling=SamplingSettings(), max_tokens=4, policy_version=0)


def answer(t: RolloutTask, actor: str = "a0", version: int = 0) -> list[Trajectory]:
    return [Trajectory(prompt_ids=t.prompts[k], completion_ids=[4, 5], behavior_logprobs=[-0.5, -1.0],
                       loss_mask=None, reward=float(i), group_id=g, task_id=t.task_id, actor_id=actor,
                       policy_version=version)
            for k, g in enumerate(t.group_ids) for i in range(t.group_size)]


class Clock:
    """A settable clock, so lease expiry is tested without sleeping."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_a_learner_short_of_groups_requeues_a_silent_actors_task_and_sees_that_actor_as_not_alive():
    clock = Clock()
    hub = ExperienceHub(lease_s=10.0, clock=clock)
    hub.put_task(task("t0"))
    # given a0 leased t0, and a1 joined later; then a0 went silent past its lease while a1 kept beating
    assert hub.next_task("a0").task.task_id == "t0"
    clock.now = 6.0
    hub.heartbeat("a1", 0)
    assert {k: v["alive"] for k, v in hub.status()["actors"].items()} == {"a0": True, "a1": True}
    clock.now = 11.0
    hub.heartbeat("a1", 0)
    # when the learner asks for groups and none is waiting
    assert hub.take_groups(1, timeout=0) == []
    # then the hub has put t0 back in the queue, for the next actor that asks
    assert hub.counts.tasks_requeued == 1
    assert hub.next_task("a1").task.task_id == "t0"
    # and reports a0 as not alive, a1 as alive (heard from within a lease)
    assert {k: v["alive"] for k, v in hub.status()["actors"].items()} == {"a0": False, "a1": True}


def test_a_task_whose_lease_runs_out_is_requeued_first_and_its_late_push_is_a_duplicate():
    clock = Clock()
    hub = ExperienceHub(lease_s=10.0, clock=clock)
    t0, t1 = task("t0"), task("t1")
    hub.put_task(t0)
    hub.put_task(t1)
    # given a0 leased t0 and then went silent
    assert hub.next_task("a0").task.task_id == "t0"
    clock.now = 5.0
    hub.heartbeat("a0", 0, task_ids=["t0"])  # renewed until 15
    clock.now = 14.0
    assert hub.expire_leases() == []
    clock.now = 15.5
    # when its lease expires, then t0 goes back to the front of the queue
    assert hub.expire_leases() == ["t0"]
    assert hub.next_task("a1").task.task_id == "t0"
    # and the first complete push wins; the dead actor's late push is answered duplicate and not queued
    assert hub.push("a1", "t0", answer(t0, "a1")).accepted == 4
    late = hub.push("a0", "t0", answer(t0, "a0"))
    assert late.duplicate and late.accepted == 0
    groups = hub.take_groups(10, timeout=0)
    assert len(groups) == 2 and all(len(g) == 2 for g in groups)
    c = hub.counts
    assert (c.tasks_issued, c.tasks_completed, c.tasks_requeued, c.duplicate_pushes) == (2, 1, 1, 1)
    assert c.trajectories_received == c.trajectories_taken == 4


def test_a_retried_push_with_the_same_id_gets_the_first_answer():
    hub = ExperienceHub()
    t = task("t0")
    hub.put_task(t)
    hub.next_task("a0")
    first = hub.push("a0", "t0", answer(t), push_id="p1")
    again = hub.push("a0", "t0", answer(t), push_id="p1")
    assert first is again and not again.duplicate and hub.counts.trajectories_received == 4


def test_a_push_that_does_not_fit_the_byte_cap_is_refused_and_nothing_is_lost():
    hub = ExperienceHub(max_queue_bytes=1000)
    a, b = task("a"), task("b")
    for t in (a, b):
        hub.put_task(t)
        hub.next_task("a0")
    hub.push("a0", "a", answer(a), nbytes=800)
    with pytest.raises(QueueFull, match="max_queue_bytes"):
        hub.push("a0", "b", answer(b), nbytes=800)
    # the refused task is still leased (the actor retries); once the learner takes some, it fits
    assert len(hub.take_groups(10, timeout=0)) == 2
    assert hub.push("a0", "b", answer(b), nbytes=800).accepted == 4


@pytest.mark.parametrize("mangle,message", [
    (lambda ts: ts[:-1], "has 1 trajectories, expected group_size 2"),
    (lambda ts: [Trajectory(**{**vars(ts[0]), "group_id": "elsewhere"})] + ts[1:], "not a group of task"),
    (lambda ts: [Trajectory(**{**vars(ts[0]), "task_id": "other"})] + ts[1:], "names task 'other'"),
])
def test_trajectories_that_do_not_fit_their_task_are_refused_naming_the_actor(mangle, message):
    hub = ExperienceHub()
    t = task("t0")
    hub.put_task(t)
    hub.next_task("a7")
    with pytest.raises(BadPush, match=f"actor a7.*{message}"):
        hub.push("a7", "t0", mangle(answer(t, "a7")))
    assert hub.waiting_groups() == 0 and hub.counts.trajectories_received == 0


def test_the_grpc_service_refuses_malformed_trajectories_with_invalid_argument_naming_the_actor():
    from lazarus.distributed.server import ParameterStore, serve
    import mlx.core as mx

    hub = ExperienceHub("inc-1")
    t = task("t0")
    hub.put_task(t)
    store = ParameterStore({"w": mx.zeros((2,))})
    with serve(store, hub=hub) as server, grpc.insecure_channel(server.address) as channel:
        stub = experience_pb2_grpc.ExperienceStub(channel)
        leased = stub.NextTask(xpb.NextTaskRequest(actor_id="a9", incarnation="inc-1"), timeout=5)
        assert leased.available and RolloutTask.from_bytes(leased.payload).task_id == "t0"
        good = [x.to_bytes() for x in answer(t, "a9")]
        bad = Trajectory(**{**vars(answer(t, "a9")[0]), "behavior_logprobs": np.array([np.nan, 0.0])}).to_bytes()
        with pytest.raises(grpc.RpcError) as e:
            stub.PushTrajectories(xpb.TrajectoryBatch(actor_id="a9", task_id="t0", trajectories=[bad] + good[1:]),
                                  timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "actor a9" in e.value.details() and "behavior_logprobs" in e.value.details()
        ok = stub.PushTrajectories(xpb.TrajectoryBatch(actor_id="a9", task_id="t0", trajectories=good,
                                                       incarnation="inc-1"), timeout=5)
        assert ok.accepted == 4 and hub.waiting_groups() == 2
        # a push from a previous incarnation of the learner is dropped, not queued
        old = stub.PushTrajectories(xpb.TrajectoryBatch(actor_id="a9", task_id="t0", trajectories=good,
                                                        incarnation="inc-0"), timeout=5)
        assert old.accepted == 0 and "restarted" in old.detail
        beat = stub.Heartbeat(xpb.HeartbeatRequest(actor_id="a9", policy_version=0, stats={"tokens_per_s": 12.5},
                                                   incarnation="inc-1"), timeout=5)
        assert beat.incarnation == "inc-1" and not beat.stop
        assert hub.status()["actors"]["a9"]["tokens_per_s"] == 12.5
        hub.stop()
        assert stub.NextTask(xpb.NextTaskRequest(actor_id="a9"), timeout=5).stop
