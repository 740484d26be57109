"""Data-parallel learner replicas (`training.learners: N`) for every launcher.

The learner that runs the coordinator is replica 0, the *leader*. With N > 1 it opens a `ReplicaGroup`: a
second gRPC server (next to the actors' one) holding

- a parameter store in owner-stepped sync mode (distributed/server.py): it sums the gradients the
  replicas push for the current optimizer step; the leader takes their mean, steps its own optimizer
  (its schedule, clipping, non-finite policy and checkpointed state, training/data_parallel.py) and
  publishes the new trainable weights as the next version, which the followers pull;
- an Experience service with its own hub, used for membership only: followers `Join` (and fetch the
  model files from it, cached by sha256, as actors do) and heartbeat; the hub's last-seen times are the
  leases by which a dead follower is found;
- the Replicas service (protos/lazarus/v1/replicas.proto): `NextBatch` hands each follower the batch of
  the next learner step and its shard of it.

The leader starts the N - 1 followers through the launcher's `spawn`: processes on loopback for the local
and process launchers (`python -m lazarus.runtime.replicas`, the same machinery as `lazarus-actor`:
separate processes compute in parallel, which threads of one MLX process would not), Ray actors for the
Ray launcher. It waits for all of them to join before the first step.

A follower that stops heartbeating for `runtime.lease_s` (or whose process exits, when the launcher can
tell) while the leader waits for its gradient is dead: the step fails with `ReplicaTimeout` naming it, or
with `training.elastic: true` it is dropped, the step uses the shards that arrived (their mean rescaled
to the whole step) and later steps are cut into one shard fewer. A follower that is alive but never
pushes fails the step after `STUCK_AFTER_LEASES` leases.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc

from lazarus.config import Config, ConfigError, load_config_dict, to_dict
from lazarus.data.trajectory import Trajectory
from lazarus.distributed import replicas_pb2 as rpb
from lazarus.distributed import replicas_pb2_grpc
from lazarus.distributed.experience import RunSpec
from lazarus.distributed.hub import ExperienceHub
from lazarus.errors import LazarusError
from lazarus.training.data_parallel import FollowerStepper, LeaderStepper, ReplicaDropped, ReplicaTimeout

LEADER = "learner-0"
STUCK_AFTER_LEASES = 30  # a replica that heartbeats but has not pushed after this many leases is stuck
JOIN_TIMEOUT_S = 600.0
POLL_S = 0.1


class ReplicaStartError(LazarusError):
    """A learner replica did not start or join; names it and why."""


def check_data_parallel(cfg: Config) -> None:
    if cfg.training.learners > 1 and cfg.algorithm != "grpo":
        raise ConfigError(f"training.learners: {cfg.training.learners} data-parallel learners are implemented for "
                          f"algorithm grpo, not {cfg.algorithm}; set training.learners: 1")


def replica_ids(learners: int) -> list[str]:
    return [f"learner-{i}" for i in range(1, learners)]


class ReplicaGroup:
    """The leader's side: the replicas' server, their membership, each step's batch and its gradient sync."""

    def __init__(self, cfg: Config, learner, *, host: str = "127.0.0.1", token: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None, echo: Callable[[str], None] = print):
        from mlx.utils import tree_flatten

        from lazarus.distributed.server import ParameterStore, serve
        from lazarus.models.load import resolve_model_path

        check_data_parallel(cfg)
        self.cfg, self.learner, self.echo = cfg, learner, echo
        self.lease_s, self.elastic = cfg.runtime.lease_s, cfg.training.elastic
        self.store = ParameterStore(dict(tree_flatten(learner.model.trainable_parameters())), mode="sync",
                                    optimizer=None)
        self.hub = ExperienceHub(f"replicas-{uuid.uuid4().hex[:8]}", lambda: self.store.version,
                                 lease_s=self.lease_s)
        model_path = resolve_model_path(cfg.model.path)
        adapter = Path(cfg.model.adapter) if cfg.model.adapter else None
        run = RunSpec.from_paths(json.dumps(to_dict(cfg)).encode(), model_path, adapter, cfg.runtime.heartbeat_s)
        self.server = serve(self.store, host=host, port=0, token=token, tls_cert=tls_cert, tls_key=tls_key,
                            hub=self.hub, run=run, services=[ReplicaService(self).handler()])
        self.members: list[str] = []  # followers taking part, in shard order
        self.handles: dict[str, object] = {}  # what the launcher's spawn returned: `.poll()` -> exit code or None
        self.stopped = False
        self.dropped: set[str] = set()
        self._batch: tuple[int, dict[str, int], int, list[bytes]] | None = None  # step, shard by id, shards, data
        self._changed = threading.Condition()

    @property
    def address(self) -> str:
        return self.server.address

    # --- start ------------------------------------------------------------------------------------
    def start(self, spawn: Callable[[str, str], object], address: str | None = None,
              timeout: float = JOIN_TIMEOUT_S) -> None:
        """Start the followers with `spawn(address, replica_id)` and wait until every one has joined."""
        address = address or self.address
        expected = replica_ids(self.cfg.training.learners)
        for replica_id in expected:
            self.handles[replica_id] = spawn(address, replica_id)
        deadline = time.monotonic() + timeout
        while True:
            joined = set(self.hub.status()["actors"])
            if joined >= set(expected):
                break
            for replica_id, handle in self.handles.items():
                code = _exit_code(handle)
                if code is not None and replica_id not in joined:
                    raise ReplicaStartError(f"training.learners: replica {replica_id} exited with code {code} "
                                            f"before it joined")
            if time.monotonic() > deadline:
                missing = ", ".join(sorted(set(expected) - joined))
                raise ReplicaStartError(f"training.learners: replica {missing} did not join within {timeout:.0f} s")
            time.sleep(POLL_S)
        self.members = list(expected)
        self.echo(f"learner: {len(expected) + 1} data-parallel replicas joined (gradient sync on {self.address})")

    def attach(self, learner) -> None:
        """Make `learner` replica 0: its stepper steps on the mean of every replica's gradient."""
        cfg = self.cfg
        learner.stepper = LeaderStepper(learner.model, learner.optimizer, learner.loss, self,
                                        version=self.store.version, max_grad_norm=cfg.optim.max_grad_norm,
                                        compile=cfg.training.compile, on_nonfinite=cfg.training.on_nonfinite)
        learner.replicas = self

    # --- each step --------------------------------------------------------------------------------
    def share(self, step: int, trajectories: list[Trajectory]) -> tuple[int, int]:
        """Hand the step's batch to the live followers; returns the leader's (shard, shards)."""
        for replica_id in [m for m in self.members if not self.alive(m)]:
            self._lost(replica_id, f"step {step + 1} is about to start")
        payloads = [t.to_bytes() for t in trajectories]
        with self._changed:
            shards = {replica_id: i + 1 for i, replica_id in enumerate(self.members)}
            self._batch = (step, shards, len(self.members) + 1, payloads)
            self._changed.notify_all()
        return 0, len(self.members) + 1

    def gather(self, partial: dict, version: int) -> tuple[dict, int]:
        """The leader's `LeaderSync.gather`: push its own partial, wait for every live follower's, average."""
        store = self.store
        store.push(version, partial, worker_id=LEADER)
        step, assigned, shards, _ = self._batch
        expected = {LEADER, *assigned}
        started = time.monotonic()
        while True:
            pushed = set(store.wait_for_push(len(expected), POLL_S))
            if pushed >= expected:
                break
            missing = sorted(expected - pushed - {LEADER})
            dead = [r for r in missing if not self.alive(r)]
            if not dead and time.monotonic() - started > STUCK_AFTER_LEASES * self.lease_s:
                dead = missing
            for replica_id in dead:
                self._lost(replica_id, f"step {step + 1} waits for its gradient "
                                       f"({len(pushed)} of {len(expected)} replicas pushed)")
                expected.discard(replica_id)
        mean, _ = store.take_mean(version)
        return mean, shards

    def publish(self, weights: dict) -> int:
        return self.store.publish(weights)

    # --- membership -------------------------------------------------------------------------------
    def alive(self, replica_id: str) -> bool:
        if _exit_code(self.handles.get(replica_id)) is not None:
            return False
        seen = self.hub.status()["actors"].get(replica_id)
        return seen is not None and seen["alive"]

    def _lost(self, replica_id: str, when: str) -> None:
        code = _exit_code(self.handles.get(replica_id))
        why = (f"its process exited with code {code}" if code is not None else
               f"it has not been heard from for more than runtime.lease_s={self.lease_s:g} s")
        if not self.elastic:
            raise ReplicaTimeout(f"training.learners: replica {replica_id} is lost ({why}) while {when}; set "
                                 f"training.elastic: true to continue without it")
        with self._changed:
            if replica_id in self.members:
                self.members.remove(replica_id)
            self.dropped.add(replica_id)
            self._changed.notify_all()
        self.echo(f"learner: replica {replica_id} is lost ({why}); continuing with {len(self.members) + 1} of "
                  f"{self.cfg.training.learners} (training.elastic)")

    def next_batch(self, replica_id: str, after_step: int, wait_s: float) -> rpb.LearnerBatch:
        self.hub.heartbeat(replica_id, self.store.version)
        with self._changed:
            self._changed.wait_for(lambda: self.stopped or replica_id in self.dropped or
                                   (self._batch is not None and self._batch[0] > after_step), wait_s)
            if self.stopped:
                return rpb.LearnerBatch(stop=True)
            if replica_id in self.dropped:
                return rpb.LearnerBatch(dropped=True)
            if self._batch is None or self._batch[0] <= after_step or replica_id not in self._batch[1]:
                return rpb.LearnerBatch(available=False)
            step, assigned, shards, payloads = self._batch
        return rpb.LearnerBatch(available=True, step=step, shard=assigned[replica_id], shards=shards,
                                trajectories=payloads)

    # --- end ----------------------------------------------------------------------------------------
    def close(self, timeout: float = 30.0) -> None:
        """Tell the followers the run is over, give them `timeout` seconds to exit, stop the server."""
        with self._changed:
            self.stopped = True
            self._changed.notify_all()
        self.hub.stop()
        deadline = time.monotonic() + timeout
        for replica_id, handle in self.handles.items():
            # a live follower hears `stop` in its next call; a silent one (frozen, unreachable) is not waited for
            while _exit_code(handle) is None and time.monotonic() < deadline and self.alive(replica_id):
                time.sleep(POLL_S)
            if _exit_code(handle) is None and hasattr(handle, "kill"):
                handle.kill()
        self.server.stop(grace=1.0)


def _exit_code(handle) -> int | None:
    return None if handle is None else handle.poll()


class ReplicaService(replicas_pb2_grpc.ReplicasServicer):
    """The Replicas gRPC service over a `ReplicaGroup`; `handler()` mounts it on `serve(..., services=...)`."""

    MAX_WAIT_S = 10.0

    def __init__(self, group: ReplicaGroup):
        self.group = group

    def NextBatch(self, request, context):
        return self.group.next_batch(request.replica_id or context.peer(), request.after_step,
                                     min(max(request.wait_s, 0.0), self.MAX_WAIT_S))

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler("lazarus.v1.Replicas", {
            "NextBatch": grpc.unary_unary_rpc_method_handler(
                self.NextBatch, request_deserializer=rpb.BatchRequest.FromString,
                response_serializer=rpb.LearnerBatch.SerializeToString)})


# --- launchers: how followers start --------------------------------------------------------------------


def process_spawner(token_file: str | None = None, echo: Callable[[str], None] = print):
    """`spawn` for the local and process launchers: a `python -m lazarus.runtime.replicas` process each."""
    from lazarus.runtime.process import actor_environment

    def spawn(address: str, replica_id: str) -> subprocess.Popen:
        port = address.rpartition(":")[2]
        command = [sys.executable, "-m", "lazarus.runtime.replicas", "--learner", f"127.0.0.1:{port}",
                   "--id", replica_id]
        if token_file:
            command += ["--token-file", token_file]
        proc = subprocess.Popen(command, env=actor_environment())
        echo(f"learner: replica {replica_id} started as pid {proc.pid}")
        return proc

    return spawn


def open_replicas(cfg: Config, learner, spawn, *, host: str = "127.0.0.1", token: str | None = None,
                  tls_cert: str | None = None, tls_key: str | None = None,
                  advertise: Callable[[str], str] | None = None,
                  echo: Callable[[str], None] = print) -> ReplicaGroup | None:
    """With `training.learners` > 1: the group, its followers started and joined, `learner` made replica 0."""
    if cfg.training.learners <= 1:
        return None
    group = ReplicaGroup(cfg, learner, host=host, token=token, tls_cert=tls_cert, tls_key=tls_key, echo=echo)
    try:
        group.start(spawn, advertise(group.address) if advertise else None)
    except BaseException:
        group.close(timeout=5.0)
        raise
    group.attach(learner)
    return group


# --- the follower's side ---------------------------------------------------------------------------------


class RemoteSync:
    """`FollowerSync` over gRPC: push the partial gradient, wait for the leader's version, pull it."""

    def __init__(self, params, replica_id: str, step_timeout: float):
        self.params, self.replica_id, self.step_timeout = params, replica_id, step_timeout

    def pull(self, have_version: int) -> tuple[int, dict] | None:
        snapshot = self.params.pull_if_newer(have_version, scope="trainable")
        return None if snapshot is None else (snapshot.version, snapshot.weights)

    def exchange(self, partial: dict, version: int) -> tuple[int, dict]:
        from lazarus.distributed.client import ParameterServerError, ServerUnavailable

        try:
            self.params.push_gradients(partial, version, worker_id=self.replica_id, timeout=self.step_timeout)
        except ParameterServerError as e:
            if e.code == grpc.StatusCode.FAILED_PRECONDITION:  # the leader moved on without this replica
                raise ReplicaDropped(f"replica {self.replica_id}: the leader stepped past version {version} "
                                     f"without this replica's gradient ({e})") from None
            raise
        try:
            self.params.wait_for_version(version + 1, timeout=self.step_timeout)
        except ServerUnavailable:
            raise ReplicaTimeout(f"replica {self.replica_id}: the leader did not publish version {version + 1} "
                                 f"within {self.step_timeout:g} s") from None
        pulled = self.pull(version)
        if pulled is None:
            raise ReplicaTimeout(f"replica {self.replica_id}: version {version + 1} was published but not served")
        return pulled


def build_follower(cfg: Config):
    """The RL learner of a follower: the run's model and reference; no eval, no reward functions, no run dir."""
    import mlx.core as mx

    from lazarus.runtime.build import needs_reference, prepare_model
    from lazarus.training.rl import RLLearner

    mx.random.seed(cfg.training.seed)
    model, tokenizer = prepare_model(cfg)
    reference = prepare_model(cfg, for_reference=True)[0] if needs_reference(cfg) else None
    return RLLearner(cfg, model, tokenizer, reference)


def run_replica(address: str, replica_id: str, token: str | None = None, tls_cert: str | None = None,
                wait: float = JOIN_TIMEOUT_S, echo: Callable[[str], None] = print) -> int:
    """A follower joined to the leader's replica server at `address` until the run ends; returns the exit code.

    0: the run ended; 1: the leader became unreachable; 3: the leader dropped this replica (elastic)."""
    from lazarus.distributed.experience_client import ExperienceClient, LearnerError

    with ExperienceClient(address, replica_id, token=token, tls_cert=tls_cert) as client:
        spec = client.join(wait=wait)
        state = {"version": -1.0, "steps": 0.0}
        beating = threading.Event()

        def heartbeat() -> None:  # from joining on, also while the model loads and compiles
            while not beating.wait(spec.heartbeat_s):
                try:
                    client.heartbeat(int(state["version"]), {"steps": state["steps"]}, [],
                                     timeout=max(spec.heartbeat_s, 2.0))
                except LearnerError:
                    pass

        threading.Thread(target=heartbeat, daemon=True, name="lazarus-replica-heartbeat").start()
        try:
            return _follow(client, spec, replica_id, token, tls_cert, state, echo)
        except ReplicaDropped as e:
            echo(f"{e}; exiting")
            return 3
        finally:
            beating.set()


def _follow(client, spec, replica_id: str, token: str | None, tls_cert: str | None, state: dict,
            echo: Callable[[str], None]) -> int:
    """Build the learner from the leader's config and files, then learn every step's shard until told to stop."""
    import mlx.core as mx

    from lazarus.distributed import auth
    from lazarus.distributed.client import ParameterClient

    address = client.address
    paths = client.fetch_files(spec)
    data = json.loads(spec.config_json)
    data["model"].update(path=str(paths["model"]), init_arch=None,
                         adapter=str(paths["adapter"]) if "adapter" in paths else None)
    data["data"].update(eval=None)  # the leader evaluates; the eval file need not exist on this node
    cfg = load_config_dict(data, source=f"leader {address} config")
    learner = build_follower(cfg)
    with ParameterClient(address, token=token, tls_cert=tls_cert, timeout=60.0) as params:
        sync = RemoteSync(params, replica_id, step_timeout=STUCK_AFTER_LEASES * cfg.runtime.lease_s + 60)
        version, weights = sync.pull(-1)
        learner.model.load_weights(list(weights.items()), strict=False)
        mx.eval(learner.model.parameters())
        learner.stepper = FollowerStepper(learner.model, learner.loss, sync, version=version,
                                          compile=cfg.training.compile)
        echo(f"replica {replica_id}: joined leader {address} at gradient-sync version {version}")
        next_batch = replicas_pb2_grpc.ReplicasStub(client.channel).NextBatch
        metadata = auth.call_metadata(token)
        done, steps, unreachable_since = -1, 0, None
        while True:
            try:
                reply = next_batch(rpb.BatchRequest(replica_id=replica_id, after_step=done, wait_s=5.0),
                                   timeout=30.0, metadata=metadata)
                unreachable_since = None
            except grpc.RpcError as e:
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > max(30.0, 3 * cfg.runtime.lease_s):
                    echo(f"replica {replica_id}: leader {address} unreachable ({e.code().name}); giving up")
                    return 1
                time.sleep(0.5)
                continue
            if reply.stop:
                echo(f"replica {replica_id}: the run is over ({steps} steps)")
                return 0
            if reply.dropped:
                echo(f"replica {replica_id}: dropped by the leader (training.elastic)")
                return 3
            if not reply.available:
                continue
            learner.step = reply.step
            learner.shard = (reply.shard, reply.shards)
            learner.seed_step()
            learner.learn([Trajectory.from_bytes(b) for b in reply.trajectories])
            done, steps = reply.step, steps + 1
            state.update(version=float(learner.stepper.version), steps=float(steps))


def main(argv: list[str] | None = None) -> int:
    """`python -m lazarus.runtime.replicas --learner HOST:PORT --id learner-1`: one follower (started by launchers)."""
    import argparse

    from lazarus.distributed.auth import read_token

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--learner", required=True, help="HOST:PORT of the leader's replica server")
    parser.add_argument("--id", required=True, help="this replica's id (learner-1 ... learner-N-1)")
    parser.add_argument("--token-file")
    parser.add_argument("--tls-cert")
    args = parser.parse_args(argv)
    try:
        token = read_token(args.token_file) if args.token_file else None
        return run_replica(args.learner, args.id, token, args.tls_cert, echo=lambda line: print(line, flush=True))
    except LazarusError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
