"""The Ray launcher: the learner and its rollout actors as Ray actors, the data plane still gRPC.

`run_ray(cfg)` is `lazarus train --launcher ray [--address auto|HOST:PORT] --actors N`. Ray is the control
plane only: it places the learner (on a node with the custom resource `runtime.ray.learner_resource`, else
on the driver's node), places N rollout actors with `runtime.ray.actor_resources`, restarts a rollout actor
whose process dies (`max_restarts=-1`), and carries the learner's gRPC address and token to the actors as
return values of an actor method, never through a shared file. Everything else is the process runtime:
the learner actor runs `serve_and_learn`, each rollout actor runs the same `run_actor` loop as
`lazarus-actor`, so hand-started actors can join the same learner. A restarted actor rejoins and pulls the
current weights before it samples (`run_actor` does that); the task a dead actor held returns to the queue
when its lease expires, and the driver sees the death as a `RayActorError` and starts the loop again on the
restarted actor.

With `training.learners: N` the learner actor starts N - 1 data-parallel learner replicas as Ray actors
(`ReplicaRole`, runtime/replicas.py), reaching its replica server the same way the rollout actors reach it.

Without `runtime.ray.address` the driver starts a local Ray instance bound to 127.0.0.1, without the
dashboard. Ray workers get the platform set-up of the CLI (OpenBLAS preloaded, its thread count: Ray sets
OMP_NUM_THREADS=1) through `runtime_env`. This is the only module of lazarus that imports `ray`.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from lazarus.config import Config, load_config_dict, to_dict
from lazarus.errors import LazarusError

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class RayMissing(LazarusError):
    """`--launcher ray` without Ray installed."""


class RayLaunchError(LazarusError):
    """Ray could not start or join the cluster, place an actor, or the learner actor died."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise RayMissing("runtime.launcher: ray needs Ray; install it with `pip install lazarus[ray]`") from None
    return ray


def worker_env(overlap: bool = True) -> dict[str, str]:
    """Environment variables of every Ray worker: the BLAS preload and thread count of `lazarus.platform`,
    and the scheduling priority of the driver.

    The raylet starts workers `RAY_worker_niceness` (default 15) nicer than itself, so the learner and the
    rollout actors, which do all the work, would yield the CPU to Ray's own daemons and to anything else on
    the machine; with `lazarus-learner` and `lazarus-actor` they run at the launching shell's priority. Ray's
    job supervisor sets it to 0 for the same reason (a `RAY_worker_niceness` set by the user is kept).
    `overlap`: workers compute at the same time on a node's cores (async mode, env workers), so their idle
    BLAS threads sleep instead of spinning (`platform.share_blas_cores`); in sync mode they take turns."""
    from lazarus.platform import BLAS_SLEEP_TIMEOUT, BLAS_SPIN_TIMEOUT, preload_env

    threads = str(os.cpu_count() or 1)
    env = {"OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", threads),
           "OPENBLAS_THREAD_TIMEOUT": os.environ.get("OPENBLAS_THREAD_TIMEOUT",
                                                     BLAS_SLEEP_TIMEOUT if overlap else BLAS_SPIN_TIMEOUT),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads), "PYTHONUNBUFFERED": "1",
           "RAY_worker_niceness": os.environ.get("RAY_worker_niceness", "0")}
    env.update(preload_env())
    return env


def advertised_address(listen_host: str, port: int, node_ip: str) -> str:
    """The learner's address as actors on other nodes reach it: the node's IP when it listens on all interfaces."""
    host = node_ip if listen_host in ("0.0.0.0", "::", "[::]", "") else listen_host
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def local_num_cpus(cfg: Config) -> int:
    """Logical CPUs of a local Ray instance: enough for the learner and every rollout actor to be placed."""
    per_actor = float(cfg.runtime.ray.actor_resources.get("num_cpus", 1.0))
    needed = int(per_actor * cfg.runtime.actors + 0.999) + cfg.training.learners
    return max(os.cpu_count() or 1, needed)


class LearnerRole:
    """The learner as a Ray actor: `serve_and_learn` in a thread, its address and token for the actors."""

    def __init__(self, config: dict, resume: str | None, force: bool = False):
        import threading

        self.cfg = load_config_dict(config, source="ray launcher config")
        self.resume = resume
        self.force = force  # the learner takes the run directory's lock on its own node
        self._ready = threading.Event()
        self._address: str | None = None
        self._token: str | None = None
        self._error: BaseException | None = None

    def run(self) -> dict:
        """Train to the last step and export the model on this node; returns the final metrics."""
        import ray

        from lazarus.distributed.auth import read_token
        from lazarus.runtime.local import export
        from lazarus.runtime.process import serve_and_learn
        from lazarus.runtime.transports import parse_address

        cfg = self.cfg
        node_ip = ray.util.get_node_ip_address()

        def on_ready(bound: str) -> None:
            host = parse_address(cfg.runtime.listen)[0]
            self._address = advertised_address(host, parse_address(bound)[1], node_ip)
            self._token = read_token(cfg.runtime.token_file) if cfg.runtime.token_file else None
            self._ready.set()

        def advertise(bound: str) -> str:
            return advertised_address(parse_address(cfg.runtime.listen)[0], parse_address(bound)[1], node_ip)

        token = read_token(cfg.runtime.token_file) if cfg.runtime.token_file else None
        try:
            learner, result = serve_and_learn(cfg, self.resume, on_ready=on_ready, force=self.force,
                                              echo=lambda line: print(line, flush=True),
                                              replicas=(ray_replica_spawner(cfg, token), advertise))
            export(learner.model, cfg, Path(cfg.training.run_dir))
            return result
        except BaseException as e:
            self._error = e
            raise
        finally:
            self._ready.set()

    def endpoint(self, timeout: float) -> tuple[str, str | None]:
        """(address, token) once the gRPC server listens; raises the learner's error if it failed first."""
        if not self._ready.wait(timeout):
            raise RayLaunchError(f"ray launcher: the learner did not start listening within {timeout:.0f} s")
        if self._address is None:
            raise self._error or RayLaunchError("ray launcher: the learner stopped before it listened")
        return self._address, self._token


class RolloutRole:
    """A rollout actor as a Ray actor: the same loop as `lazarus-actor`, against the learner's address."""

    def __init__(self, actor_id: str):
        import ray

        self.actor_id = actor_id
        with warnings.catch_warnings():  # Ray deprecates the property but has no other public way to ask
            warnings.simplefilter("ignore")
            self.restarted = ray.get_runtime_context().was_current_actor_reconstructed

    def where(self) -> tuple[int, str, bool]:
        """(pid, node IP, whether Ray restarted this actor): for the driver's log and for tests."""
        import ray

        return os.getpid(), ray.util.get_node_ip_address(), self.restarted

    def run(self, address: str, token: str | None) -> int:
        from lazarus.runtime.transports import run_actor

        return run_actor(address, self.actor_id, token, echo=lambda line: print(line, flush=True),
                         scorer_pool=ray_scorer)


class ReplicaRole:
    """A data-parallel learner replica (`training.learners`) as a Ray actor: `run_replica` against the leader."""

    def where(self) -> tuple[int, str]:
        import ray

        return os.getpid(), ray.util.get_node_ip_address()

    def run(self, address: str, replica_id: str, token: str | None) -> int:
        from lazarus.runtime.replicas import run_replica

        return run_replica(address, replica_id, token, echo=lambda line: print(line, flush=True))


class RayReplica:
    """The leader's handle on a replica actor: `poll()` is None while its run call is going, else an exit code."""

    def __init__(self, ray, actor, ref):
        self.ray, self.actor, self.ref = ray, actor, ref

    def poll(self) -> int | None:
        ready, _ = self.ray.wait([self.ref], timeout=0)
        if not ready:
            return None
        try:
            return int(self.ray.get(self.ref))
        except Exception:  # the actor died (RayActorError) or its call raised: either way it is gone
            return -1

    def kill(self) -> None:
        self.ray.kill(self.actor, no_restart=True)


def ray_replica_spawner(cfg: Config, token: str | None):
    """`spawn` for the leader under Ray: each follower a Ray actor (one CPU, not restarted: a lost replica is
    failed or dropped by the leader, per training.elastic), placed by Ray like the rollout actors."""

    def spawn(address: str, replica_id: str) -> RayReplica:
        import ray

        actor = ray.remote(max_restarts=0)(ReplicaRole).options(num_cpus=1).remote()
        pid, node = ray.get(actor.where.remote(), timeout=600)  # before `run`: the actor runs one call at a time
        print(f"learner: replica {replica_id} started as pid {pid} on {node}", flush=True)
        return RayReplica(ray, actor, actor.run.remote(address, replica_id, token))

    return spawn


def run_ray(cfg: Config, resume: str | Path | None = None, echo: Callable[[str], None] = print,
            force: bool = False) -> dict:
    """`--launcher ray`: learner and `runtime.actors` rollout actors as Ray actors; returns the final metrics."""
    ray = import_ray()
    started = connect(ray, cfg, echo)
    try:
        return _drive(ray, cfg, str(resume) if resume else None, echo, force)
    finally:
        if started:
            ray.shutdown()


def connect(ray, cfg: Config, echo: Callable[[str], None]) -> bool:
    """Join `runtime.ray.address`, or start a local instance on 127.0.0.1; True when this run started it."""
    rc = cfg.runtime.ray
    runtime_env = {"env_vars": worker_env(overlap=cfg.runtime.mode == "async" and cfg.runtime.max_staleness > 0)}
    kwargs = {"runtime_env": runtime_env, "log_to_driver": True}
    try:
        if rc.address:
            node_ip = rc.node_ip_address or ("127.0.0.1" if rc.address.rpartition(":")[0] in LOOPBACK else None)
            if node_ip:
                kwargs["_node_ip_address"] = node_ip
            ray.init(address=rc.address, **kwargs)
            echo(f"ray: joined the cluster at {rc.address} ({_describe(ray.cluster_resources())})")
            return False
        # address="local": a new instance even when a `ray start` cluster on this machine would be found
        ray.init(address="local", num_cpus=local_num_cpus(cfg), include_dashboard=False, _node_ip_address="127.0.0.1",
                 resources={rc.learner_resource: 1}, **kwargs)
    except ConnectionError as e:
        raise RayLaunchError(f"runtime.ray.address: cannot join the Ray cluster at {rc.address}: {e}") from None
    echo(f"ray: started a local instance ({_describe(ray.cluster_resources())})")
    return True


def _describe(resources: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items())
                     if not k.startswith("node:") and k not in ("memory", "object_store_memory"))


def learner_placement(ray, cfg: Config) -> dict:
    """Ray options that place the learner: on a node with the learner resource, else on the driver's node."""
    name = cfg.runtime.ray.learner_resource
    if ray.cluster_resources().get(name, 0) >= 1:
        return {"resources": {name: 1}}
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)}


def actor_options(cfg: Config) -> dict:
    resources = dict(cfg.runtime.ray.actor_resources)
    options = {"num_cpus": resources.pop("num_cpus", 1.0)}
    if "num_gpus" in resources:
        options["num_gpus"] = resources.pop("num_gpus")
    if "memory" in resources:
        options["memory"] = resources.pop("memory")
    if resources:
        options["resources"] = resources
    return options


def _drive(ray, cfg: Config, resume: str | None, echo: Callable[[str], None], force: bool = False) -> dict:
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

    learner_cls = ray.remote(max_restarts=0, max_concurrency=4)(LearnerRole)
    rollout_cls = ray.remote(max_restarts=-1)(RolloutRole)
    learner = learner_cls.options(num_cpus=1, **learner_placement(ray, cfg)).remote(to_dict(cfg), resume, force)
    result_ref = learner.run.remote()
    try:
        address, token = _unwrap(ray, lambda: ray.get(learner.endpoint.remote(600.0), timeout=660))
    except GetTimeoutError:
        raise RayLaunchError("ray launcher: the learner actor was not placed within 600 s") from None
    echo(f"ray: learner listening on {address}")
    actors: dict[str, object] = {}
    running: dict[object, str] = {}  # the run_actor loop of each actor
    placed: dict[object, str] = {}  # where each (re)started actor runs, for the log

    def start(actor_id: str) -> None:
        placed[actors[actor_id].where.remote()] = actor_id
        running[actors[actor_id].run.remote(address, token)] = actor_id

    for i in range(cfg.runtime.actors):
        actor_id = f"ray-actor-{i}"
        actors[actor_id] = rollout_cls.options(**actor_options(cfg)).remote(actor_id)
        start(actor_id)
    try:
        while True:
            ready, _ = ray.wait([result_ref, *running, *placed], num_returns=1, timeout=1.0)
            if not ready:
                continue
            ref = ready[0]
            if ref == result_ref:
                result = _unwrap(ray, lambda: ray.get(result_ref))
                break
            if ref in placed:
                actor_id = placed.pop(ref)
                try:
                    pid, node, restarted = ray.get(ref)
                    echo(f"ray: actor {actor_id} {'restarted' if restarted else 'started'} as pid {pid} on {node}")
                except RayActorError:
                    pass  # it died again before answering; its run call says so
                continue
            actor_id = running.pop(ref)
            try:
                echo(f"ray: actor {actor_id} exited {ray.get(ref)}")
            except RayActorError as e:
                echo(f"ray: actor {actor_id} died ({type(e).__name__}); Ray restarts it and it rejoins")
                start(actor_id)
            except RayTaskError as e:
                echo(f"ray: actor {actor_id} failed: {_cause(e)}")
        deadline = time.monotonic() + 3 * cfg.runtime.heartbeat_s + 10
        if running:
            ray.wait(list(running), num_returns=len(running), timeout=max(0.0, deadline - time.monotonic()))
        return result
    finally:
        for handle in actors.values():
            ray.kill(handle, no_restart=True)
        ray.kill(learner, no_restart=True)


def _unwrap(ray, call):
    """`call()`, with a learner's own error raised as itself (one line in the CLI), not wrapped by Ray."""
    from ray.exceptions import RayActorError, RayTaskError

    try:
        return call()
    except RayTaskError as e:
        cause = _cause(e)
        if isinstance(cause, (LazarusError, KeyboardInterrupt)):
            raise cause from None
        raise RayLaunchError(f"ray launcher: the learner failed: {type(cause).__name__}: {cause}") from None
    except RayActorError as e:
        raise RayLaunchError(f"ray launcher: the learner actor died: {e}") from None


def _cause(error):
    cause = getattr(error, "cause", None)
    return cause if cause is not None else error


# --- the env worker pool under Ray -------------------------------------------------------------------------


class ScoringWorker:
    """One worker of the Ray scoring pool: calls what it is given (reward scoring) in its own process."""

    def call(self, fn, *args):
        return fn(*args)


class RayScoringPool:
    """An executor over N Ray actors (round robin) for `lazarus.env.pool.PooledScorer`: `submit` -> Future."""

    def __init__(self, workers: int, options: dict | None = None):
        ray = import_ray()
        worker_cls = ray.remote(max_restarts=-1, max_task_retries=-1)(ScoringWorker)
        self._ray = ray
        self.actors = [worker_cls.options(**(options or {"num_cpus": 0})).remote() for _ in range(workers)]
        self._next = 0

    def submit(self, fn, *args):
        actor = self.actors[self._next % len(self.actors)]
        self._next += 1
        return actor.call.remote(fn, *args).future()

    def shutdown(self, wait: bool = False, cancel_futures: bool = True) -> None:
        for actor in self.actors:
            self._ray.kill(actor, no_restart=True)


def ray_scorer(workers: int):
    """`runtime.env_workers` under the Ray launcher: a `PooledScorer` over N Ray scoring actors."""
    from lazarus.env.pool import PooledScorer

    return PooledScorer(RayScoringPool(workers), workers)


# --- expert env workers under Ray ----------------------------------------------------------------------------


class RayEnvShard:
    """An expert env worker as a Ray actor running `lazarus.experts.workers.EnvShard`, the function the
    process workers run; `collect` returns a Future, as `EnvWorkers` expects of every shard."""

    def __init__(self, ray, actor):
        self._ray, self.actor = ray, actor

    def collect(self, *args):
        return self.actor.collect.remote(*args).future()

    def close(self) -> None:
        try:
            self._ray.get(self.actor.close.remote(), timeout=30)
        finally:
            self._ray.kill(self.actor, no_restart=True)


@contextmanager
def ray_env_workers(workers: int, address: str | None = None, echo: Callable[[str], None] = print):
    """`open_shard` for `lazarus experts train --workers N --launcher ray`: joins `address` (or starts a local
    instance on 127.0.0.1, shut down on exit) and opens each shard of envs as a Ray actor (one CPU each)."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        kwargs = {"runtime_env": {"env_vars": worker_env()}, "log_to_driver": True}
        try:
            if address:
                node_ip = "127.0.0.1" if address.rpartition(":")[0] in LOOPBACK else None
                ray.init(address=address, **({"_node_ip_address": node_ip} if node_ip else {}), **kwargs)
                echo(f"ray: joined the cluster at {address} ({_describe(ray.cluster_resources())})")
            else:
                ray.init(address="local", num_cpus=max(os.cpu_count() or 1, workers), include_dashboard=False,
                         _node_ip_address="127.0.0.1", **kwargs)
                started = True
                echo(f"ray: started a local instance ({_describe(ray.cluster_resources())})")
        except ConnectionError as e:
            raise RayLaunchError(f"--address: cannot join the Ray cluster at {address}: {e}") from None
    from lazarus.experts.workers import EnvShard

    shard_actor = ray.remote(num_cpus=1)(EnvShard)
    try:
        yield lambda *args: RayEnvShard(ray, shard_actor.remote(*args))
    finally:
        if started:
            ray.shutdown()
