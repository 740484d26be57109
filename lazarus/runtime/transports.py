"""The gRPC transport: a learner behind its server, and the loop of a rollout actor in another process.

(The in-process transport is the `ExperienceHub` called directly, with the actor sharing the learner's
model object: see `runtime.local.run_local`.)

Learner side, `LearnerServer`: the parameter server (`ParameterStore`) serves the trainable weights
(the LoRA adapters when training LoRA, everything otherwise) at the learner's `policy_version`; the
Experience service serves the run's config and model files to actors that join, tasks, trajectories,
heartbeats and status. `publish()` installs the learner's new weights as the next version.

Actor side, `run_actor`: join (waiting with backoff while the learner is not up), fetch the model files
once (cached by sha256), build the model as the learner did, then loop: take a task, pull weights if the
learner has newer ones (only between tasks), sample and score, push; a heartbeat thread renews the task's
lease and reports tokens/s and weight-sync times. The actor exits 0 when the learner says the run is over.
A learner that restarts (its incarnation changes) is rejoined: the actor pulls its weights again before
sampling, and its unfinished work is dropped by the learner.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from lazarus.config import Config, load_config_dict, to_dict
from lazarus.data.trajectory import RolloutTask, TrajectoryDecodeError
from lazarus.distributed.client import ParameterClient, ParameterServerError
from lazarus.distributed.experience import RunSpec
from lazarus.distributed.hub import ExperienceHub
from lazarus.distributed.experience_client import ExperienceClient, LearnerError, LearnerUnavailable
from lazarus.distributed.server import ParameterStore, serve
from lazarus.errors import LazarusError
from lazarus.runtime.roles import RolloutActor, env_worker_scorer


def parse_address(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise LazarusError(f"runtime.listen / --listen: {listen!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


class LearnerServer:
    """The learner's gRPC endpoints: weights at its version, and the Experience hub for its actors."""

    def __init__(self, cfg: Config, model: nn.Module, hub: ExperienceHub, version: int, listen: str,
                 token: str | None = None, tls_cert: str | None = None, tls_key: str | None = None,
                 log: Callable[[str], None] | None = None):
        trainable = [name for name, _ in tree_flatten(model.trainable_parameters())]
        self.store = ParameterStore(dict(tree_flatten(model.parameters())), trainable, version=version)
        self.model = model
        from lazarus.models.load import resolve_model_path

        model_path = resolve_model_path(cfg.model.path)
        adapter = Path(cfg.model.adapter) if cfg.model.adapter else None
        self.run = RunSpec.from_paths(json.dumps(to_dict(cfg)).encode(), model_path, adapter, cfg.runtime.heartbeat_s)
        host, port = parse_address(listen)
        transfer_port = cfg.runtime.transfer_port
        self.server = serve(self.store, host=host, port=port, token=token, tls_cert=tls_cert, tls_key=tls_key,
                            hub=hub, run=self.run, log=log, transfer_port=None if transfer_port < 0 else transfer_port)
        self.hub = hub

    @property
    def address(self) -> str:
        return self.server.address

    def publish(self) -> dict:
        """The learner's trainable weights as the next version (it must equal the learner's version)."""
        t0 = time.perf_counter()
        weights = dict(tree_flatten(self.model.trainable_parameters()))
        version = self.store.publish(weights)
        return {"publish_version": version, "publish_ms": 1000 * (time.perf_counter() - t0)}

    def wait_for_actors_to_stop(self, timeout: float) -> None:
        """After the run: keep answering until every live actor has heard `stop` (or `timeout` passes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [a for a in self.hub.status()["actors"].values()
                    if a["last_heartbeat_s_ago"] < 2 * self.run.heartbeat_s + 0.5]
            if not live:
                return
            time.sleep(0.1)

    def stop(self) -> None:
        self.server.stop(grace=1.0)


# --- the actor's side ------------------------------------------------------------------------------------


class GrpcWeights:
    """A `WeightSource` over the parameter server: pulls the trainable tensors when the version is newer."""

    def __init__(self, client: ParameterClient, latest: Callable[[], int]):
        self.client = client
        self._latest = latest

    def latest_version(self) -> int:
        return self._latest()

    def pull(self, model: nn.Module, have_version: int) -> tuple[int, int] | None:
        snapshot = self.client.pull_if_newer(have_version, scope="trainable")
        if snapshot is None:
            return None
        model.load_weights(list(snapshot.weights.items()), strict=False)
        mx.eval(model.parameters())
        return snapshot.version, sum(w.nbytes for w in snapshot.weights.values())


class _Heartbeat(threading.Thread):
    """Renews the leases of the actor's current task and reports its stats, every `interval` seconds."""

    def __init__(self, client: ExperienceClient, actor: RolloutActor, interval: float):
        super().__init__(daemon=True, name="lazarus-heartbeat")
        self.client, self.actor, self.interval = client, actor, interval
        self.task_ids: list[str] = []
        self.learner_version = -1
        self.learner_incarnation = ""
        self.stop_requested = False
        self.failures = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        try:
            reply = self.client.heartbeat(self.actor.version, actor_stats(self.actor), list(self.task_ids),
                                          timeout=max(self.interval, 2.0))
        except LearnerError:
            self.failures += 1
            return
        self.failures = 0
        self.learner_version, self.learner_incarnation = reply.policy_version, reply.incarnation
        self.stop_requested = self.stop_requested or reply.stop

    def close(self) -> None:
        self._done.set()


def actor_stats(actor: RolloutActor) -> dict[str, float]:
    return {**actor.stats.as_heartbeat(), "generation_s": actor.stats.generation_s}


def build_remote_actor(client: ExperienceClient, spec, actor_id: str, token: str | None,
                       tls_cert: str | None, echo: Callable[[str], None],
                       scorer_pool: Callable | None = None) -> tuple[RolloutActor, Config]:
    """The run's model, built from the learner's config and files (fetched once, cached by sha256)."""
    from lazarus.runtime.build import prepare_model, resolve_rewards

    data = json.loads(spec.config_json)
    paths = client.fetch_files(spec)
    data["model"].update(path=str(paths["model"]), init_arch=None,
                         adapter=str(paths["adapter"]) if "adapter" in paths else None)
    cfg = load_config_dict(data, source=f"learner {client.address} config")
    model, tokenizer = prepare_model(cfg, for_actor=True)
    params = ParameterClient(client.address, token=token, tls_cert=tls_cert, timeout=60.0)
    weights = GrpcWeights(params, lambda: -1)
    actor = RolloutActor(actor_id, model, tokenizer, resolve_rewards(cfg), weights, stop=list(cfg.generation.stop),
                         completion_batch_size=cfg.training.batch_size * cfg.generation.num_generations,
                         merge_adapters=cfg.lora.merge_for_sampling,
                         scorer=env_worker_scorer(cfg.runtime.env_workers, scorer_pool))
    size = sum(v.size for _, v in tree_flatten(model.parameters()))
    echo(f"actor {actor_id}: built {cfg.model.path} ({size / 1e6:.2f}M parameters) for learner {client.address}")
    return actor, cfg


def run_actor(address: str, actor_id: str | None = None, token: str | None = None, tls_cert: str | None = None,
              wait: float = 600.0, echo: Callable[[str], None] = print,
              scorer_pool: Callable[[int], Callable] | None = None) -> int:
    """A rollout actor joined to the learner at `address` until the run ends; returns the exit code (0).

    `scorer_pool(n)` makes the env-worker scorer when the run sets `runtime.env_workers` (default: processes).
    """
    actor_id = actor_id or f"actor-{uuid.uuid4().hex[:8]}"
    with ExperienceClient(address, actor_id, token=token, tls_cert=tls_cert) as client:
        spec = client.join(wait=wait)
        echo(f"actor {actor_id}: joined learner {address} at version {spec.policy_version}")
        actor, cfg = build_remote_actor(client, spec, actor_id, token, tls_cert, echo, scorer_pool)
        heartbeat = _Heartbeat(client, actor, spec.heartbeat_s)
        actor.weights._latest = lambda: heartbeat.learner_version
        heartbeat.start()
        idle = 0
        try:
            while True:
                try:
                    reply = client.next_task(actor.version, timeout=wait)
                except LearnerUnavailable as e:
                    echo(f"actor {actor_id}: {e}; giving up")
                    return 1
                if reply.stop or heartbeat.stop_requested:
                    echo(f"actor {actor_id}: the run is over ({actor.stats.tasks} tasks, {actor.stats.tokens} tokens)")
                    return 0
                if reply.incarnation and reply.incarnation != client.incarnation:
                    echo(f"actor {actor_id}: learner {address} restarted (incarnation {reply.incarnation}); rejoining")
                    client.join(wait=wait)
                    actor.version = -1  # its versions start again from its checkpoint: pull before sampling
                    continue
                if not reply.available:
                    idle += 1
                    time.sleep(min(0.02 * idle, 0.25))
                    continue
                idle = 0
                try:
                    task = RolloutTask.from_bytes(reply.payload)
                except TrajectoryDecodeError as e:
                    raise LearnerError(f"learner {address}: task {reply.task_id} does not decode: {e}") from None
                heartbeat.task_ids = [task.task_id]
                t0 = time.perf_counter()
                actor.sync_weights()
                actor.stats.wait_for_weights_s += time.perf_counter() - t0
                trajectories = actor.run_task(task)
                push_with_retries(client, task, trajectories, actor, wait, echo)
                heartbeat.task_ids = []
        finally:
            heartbeat.close()
            close = getattr(actor.scorer, "close", None)
            if close is not None:
                close()


def push_with_retries(client: ExperienceClient, task: RolloutTask, trajectories, actor: RolloutActor,
                      wait: float, echo: Callable[[str], None]) -> None:
    payloads = [t.to_bytes() for t in trajectories]
    try:
        result = client.push(task.task_id, payloads, actor_stats(actor), timeout=wait)
    except LearnerUnavailable as e:
        echo(f"actor {actor.actor_id}: could not push task {task.task_id}: {e}")
        return
    if result.detail:
        echo(f"actor {actor.actor_id}: task {task.task_id}: {result.detail}")


def actor_main(address: str, actor_id: str | None, token_file: str | None, tls_cert: str | None,
               wait: float) -> int:
    """`lazarus-actor`: one line on a user error (bad token, learner refused), exit 2."""
    from lazarus.distributed.auth import read_token

    try:
        token = read_token(token_file) if token_file else None
        return run_actor(address, actor_id, token, tls_cert, wait=wait,
                         echo=lambda line: print(line, flush=True))
    except (LazarusError, ParameterServerError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
