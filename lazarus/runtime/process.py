"""The process launcher and the learner process: the coordinator and learner behind a gRPC server.

`serve_and_learn(cfg)` is `lazarus-learner`: it builds the learner, restores `--resume`, starts the
server at the learner's version (printing `listening on HOST:PORT`), and runs the coordinator until the
last step; actors that join at any time are given tasks. `run_process(cfg)` is `lazarus train
--launcher process --actors N`: the same learner in this process plus N `lazarus-actor` processes on
loopback, which exit by themselves when the run ends.

The process launcher's processes share one host's cores (`share_cores`): the actors, which generate at
the same time, split the cores between their BLAS threads; in async mode the learner's update runs while
they generate, and it is the pipeline's bottleneck (the next step waits for it, never for an actor that
is a batch ahead), so the actors run at a lower CPU priority and generate in the cycles the update leaves
idle; every process's idle BLAS threads then sleep at once instead of spinning
(`platform.share_blas_cores`), or those idle cycles would not exist. An OPENBLAS_NUM_THREADS set in the
environment is the user's choice and is kept.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lazarus.config import Config
from lazarus.distributed.hub import ExperienceHub
from lazarus.errors import LazarusError


class ActorsExited(LazarusError):
    """Every actor process the launcher started has exited while the learner still needs trajectories."""


def serve_and_learn(cfg: Config, resume: str | Path | None = None, *, listen: str | None = None,
                    token_file: str | None = None, tls_cert: str | None = None, tls_key: str | None = None,
                    on_ready: Callable[[str], None] | None = None, watchdog: Callable[[], None] | None = None,
                    echo: Callable[[str], None] = print, force: bool = False, replicas=None):
    """Run the learner with its gRPC server until the last step; returns (learner, final metrics).

    The run directory is locked for the run (a previous run there needs `resume` or `force`). With
    `training.learners` > 1, `replicas` = (spawn, advertise) starts the other learner replicas
    (runtime/replicas.py; default: processes on loopback)."""
    from lazarus.training.rundir import prepare_run_dir

    with prepare_run_dir(cfg, resume, force):
        return _serve_and_learn(cfg, resume, listen, token_file, tls_cert, tls_key, on_ready, watchdog, echo,
                                replicas)


def _serve_and_learn(cfg, resume, listen, token_file, tls_cert, tls_key, on_ready, watchdog, echo, replicas):
    from lazarus.distributed.auth import check_bind, read_token
    from lazarus.runtime.build import build_learner, ensure_data, read_rl_prompts
    from lazarus.runtime.coordinator import Coordinator, TaskSource
    from lazarus.runtime.replicas import check_data_parallel, open_replicas, process_spawner
    from lazarus.runtime.transports import LearnerServer, parse_address

    listen = listen or cfg.runtime.listen
    token_file = token_file or cfg.runtime.token_file
    token = read_token(token_file) if token_file else None
    check_bind(parse_address(listen)[0], token)  # before the slow model load
    check_data_parallel(cfg)
    ensure_data(cfg)
    learner = build_learner(cfg)
    records, prompt_ids = read_rl_prompts(cfg, learner.tokenizer)
    incarnation = uuid.uuid4().hex[:12]
    hub = ExperienceHub(incarnation, lambda: learner.policy_version, lease_s=cfg.runtime.lease_s,
                        max_queue_bytes=cfg.runtime.max_queue_bytes)
    coordinator = Coordinator(cfg, learner, TaskSource(cfg, records, prompt_ids, incarnation), hub,
                              watchdog=watchdog, echo=echo)
    version = coordinator.open(resume)
    server = LearnerServer(cfg, learner.model, hub, version, listen, token, tls_cert, tls_key,
                           log=lambda line: echo(f"learner: {line}"))
    coordinator.publish = server.publish
    spawn, advertise = replicas or (process_spawner(token_file, echo), None)
    try:
        group = open_replicas(cfg, learner, spawn, host=parse_address(listen)[0], token=token, tls_cert=tls_cert,
                              tls_key=tls_key, advertise=advertise, echo=echo)
    except BaseException:
        server.stop()
        learner.close()
        raise
    echo(f"listening on {server.address}")
    if server.server.transfer is not None:
        echo(f"weight transfers to actors on other hosts on port {server.server.transfer.port}")
    if on_ready is not None:
        on_ready(server.address)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
    try:
        result = coordinator.run()
    finally:
        if group is not None:
            group.close()
        hub.stop()  # actors hear it in their next call (also after Ctrl-C or an error)
        server.wait_for_actors_to_stop(timeout=3 * cfg.runtime.heartbeat_s + 2)
        server.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return learner, result


def run_process(cfg: Config, resume: str | Path | None = None, echo: Callable[[str], None] = print) -> dict:
    """`--launcher process`: the learner here, `runtime.actors` lazarus-actor processes on loopback."""
    from lazarus.runtime.local import export

    actors: list[subprocess.Popen] = []
    if cfg.runtime.listen.rpartition(":")[0] not in ("127.0.0.1", "localhost", "[::1]"):
        echo(f"process launcher: learner listens on {cfg.runtime.listen}; actors connect over loopback")

    from lazarus.platform import set_blas_threads, share_blas_cores, user_blas_threads

    shares = share_cores(cfg, os.cpu_count() or 1, explicit_threads=user_blas_threads())
    set_blas_threads(shares.learner_threads)
    share_blas_cores(shares.overlap)  # while the update and generation overlap, idle BLAS threads sleep

    def start_actors(address: str) -> None:
        port = address.rpartition(":")[2]
        command = [actor_executable(), "--learner", f"127.0.0.1:{port}"]
        if cfg.runtime.token_file:
            command += ["--token-file", cfg.runtime.token_file]
        env = {**actor_environment(), "OPENBLAS_NUM_THREADS": str(shares.actor_threads)}
        lower = (lambda: os.nice(shares.actor_niceness)) if shares.actor_niceness else None
        for i in range(cfg.runtime.actors):
            actors.append(subprocess.Popen(command + ["--id", f"actor-{i}"], env=env, preexec_fn=lower))

    def watchdog() -> None:
        if actors and all(p.poll() is not None for p in actors):
            codes = ", ".join(str(p.returncode) for p in actors)
            raise ActorsExited(f"all {len(actors)} actor processes exited (exit codes {codes}) before the run ended")

    try:
        learner, result = serve_and_learn(cfg, resume, on_ready=start_actors, watchdog=watchdog, echo=echo)
    finally:
        for p in actors:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    export(learner.model, cfg, Path(cfg.training.run_dir))
    return result


@dataclass(frozen=True)
class CoreShares:
    learner_threads: int
    actor_threads: int
    actor_niceness: int  # added to the actors' nice value (0: same priority as the learner)
    overlap: bool = False  # the learner updates while the actors generate (async mode)


#: How much lower the actors' CPU priority is than the learner's in async mode by default
#: (`runtime.actor_niceness`; nice 19: the actors run only in the cycles the learner leaves idle).
ACTOR_NICENESS_ASYNC = 19


def share_cores(cfg: Config, cores: int, explicit_threads: str | None = None) -> CoreShares:
    """BLAS threads and priorities for a learner and `runtime.actors` actor processes on one host.

    Actors generate at the same time, so they split the cores; the learner updates while actors wait (sync)
    and so may use every core. In async mode the learner updates while actors generate: the learner and
    the actors split the cores as if the learner were one more actor (any remainder is the learner's), and
    the actors yield to it (`ACTOR_NICENESS_ASYNC`). On 2 cores with one actor that is one BLAS thread each:
    10M GRPO async steps took 1.41-1.60 s against 1.57-1.88 s with the learner keeping both cores (six
    alternated pairs of 12-step CLI runs, five faster by 9-18%, one tie): its second thread sped its matmuls
    up less than it slowed the actor down. `overlap` also makes every process's idle BLAS threads sleep (in
    sync mode the processes take turns, and a spinning thread answers the next call sooner).
    `explicit_threads` (the user's OPENBLAS_NUM_THREADS) is used for every process as given.
    """
    actors = cfg.runtime.actors
    overlap = cfg.runtime.mode == "async" and cfg.runtime.max_staleness > 0
    niceness = cfg.runtime.actor_niceness
    if niceness is None:
        niceness = ACTOR_NICENESS_ASYNC if overlap else 0
    if explicit_threads:
        n = max(1, int(explicit_threads))
        return CoreShares(n, n, niceness, overlap)
    if overlap:  # the learner counts as one more actor; the actors yield to it
        actor_threads = max(1, cores // (actors + 1))
        return CoreShares(max(1, cores - actors * actor_threads), actor_threads, niceness, overlap)
    return CoreShares(max(1, cores), max(1, cores // actors), niceness, overlap)


def actor_executable() -> str:
    """`lazarus-actor` next to this Python (the venv's console script)."""
    candidate = Path(sys.executable).parent / "lazarus-actor"
    return str(candidate) if candidate.exists() else "lazarus-actor"


def actor_environment() -> dict[str, str]:
    """The launcher's environment for its actors, with the same BLAS set-up (`lazarus.platform`)."""
    from lazarus.platform import preload_env

    return {**os.environ, **preload_env(), "PYTHONUNBUFFERED": "1"}


def _raise_interrupt(*_):
    raise KeyboardInterrupt


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
