"""The coordinator: the RL loop that ties rollout actors to the learner.

    while version < max_steps:
        issue tasks          prompts -> RolloutTasks, as many as the staleness bound lets arrive in time
        assemble a batch     whole groups; a group sampled before version - max_staleness is dropped
        learn                advantages -> loss -> step; version += 1
        publish              the new weights for the actors
    stop the actors; final evaluation and checkpoint

It reads only an `ExperienceQueue` (tasks out, trajectories in, actor status) and a `publish()` callable, so
the same loop runs every launcher, whichever transport fills the queue; `pump()`, when given, runs an actor
in this process while the learner waits.

Modes: `sync` issues exactly one batch of tasks per version, so every trajectory of a batch was sampled at
the learner's current version (on-policy). `async` keeps up to (1 + max_staleness) batches in flight, so
actors generate the next batches while the learner updates; anything that would be too stale when used is
never issued (admission control), and what still arrives too stale is dropped and counted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from lazarus.config import Config, ConfigError
from lazarus.data.batching import BatchIterator
from lazarus.data.curriculum import DifficultySchedule, TaskMixture, curriculum_batch, level_pools, per_task_means
from lazarus.data.trajectory import RolloutTask, SamplingSettings, Trajectory
from lazarus.observe.signal import NoSignalMonitor
from lazarus.training.rl import RLLearner, rollout_metrics

WAIT_LOG_S = 30.0


class TaskSource:
    """The run's prompts cut into `RolloutTask`s; its position (and schedule) is checkpointed.

    Prompts come in seeded epoch order, or drawn per batch by the difficulty curriculum (data.curriculum:
    by step, or by the rolling accuracy of the current level) or by the task mixture (data.tasks weights).
    It remembers which row each issued group was sampled from, so that the groups that come back can feed
    the curriculum (`observe`) and the batch's metrics can be split per task (`step_metrics`).
    """

    def __init__(self, cfg: Config, records: list, prompt_ids: list[list[int]], incarnation: str):
        self.cfg, self.records, self.prompt_ids, self.incarnation = cfg, records, prompt_ids, incarnation
        self.iterator = BatchIterator(len(records), cfg.training.batch_size, seed=cfg.training.seed,
                                      shuffle=cfg.data.shuffle)
        self.pending: list[int] = []
        self.issued = 0  # tasks issued over the whole run (resumes continue the count)
        self.draws = 0  # batches of prompts drawn by the curriculum or the mixture (seeds each draw)
        g = cfg.generation
        self.sampling = SamplingSettings(g.temperature or 1.0, g.top_p, g.top_k, g.min_p)
        self.schedule, self.pools, self.mixture = self._curriculum(cfg, records), None, None
        if self.schedule is not None:
            self.pools = self._level_pools(cfg, records)
        elif cfg.data.tasks:
            names = np.array([r.columns["task"] for r in records])
            self.task_rows = {task.name: np.flatnonzero(names == task.name) for task in cfg.data.tasks}
            self.mixture = TaskMixture({name: len(rows) for name, rows in self.task_rows.items()},
                                       {task.name: task.weight for task in cfg.data.tasks}, seed=cfg.training.seed)
        self.in_flight: dict[str, int] = {}  # group id -> row, until the group comes back
        self.received: dict[str, int] = {}  # group id -> row, of the groups back since the last step

    @staticmethod
    def _curriculum(cfg: Config, records: list) -> DifficultySchedule | None:
        c = cfg.data.curriculum
        if c.schedule == "none":
            return None
        if cfg.data.tasks:
            raise ConfigError("data.curriculum: a difficulty schedule draws from the one prompt set of data.train; "
                              "with data.tasks give each level as a task instead")
        return DifficultySchedule(c.levels, c.schedule, c.steps, promote_at=c.promote_at, demote_at=c.demote_at,
                                  window=c.window)

    @staticmethod
    def _level_pools(cfg: Config, records: list) -> dict[int, np.ndarray]:
        try:
            return level_pools([r.columns.get("difficulty") for r in records], cfg.data.curriculum.levels)
        except ValueError as e:
            raise ConfigError(f"data.curriculum: {cfg.data.train}: {e}") from None

    def draw(self, policy_version: int) -> list[int]:
        """One batch of row indices: the next of the epoch, or drawn by the curriculum or the mixture."""
        n = self.cfg.training.batch_size
        if self.schedule is not None:
            rows = curriculum_batch(self.pools, self.schedule, policy_version, n, seed=self.cfg.training.seed,
                                    mix=self.cfg.data.curriculum.mix, draw=self.draws)
        elif self.mixture is not None:
            rows = [int(self.task_rows[name][i]) for name, i in self.mixture.batch(self.draws, n)]
        else:
            return self.iterator.next_indices()
        self.draws += 1
        return rows

    def next_task(self, num_prompts: int, policy_version: int) -> RolloutTask:
        while len(self.pending) < num_prompts:
            self.pending.extend(self.draw(policy_version))
        indices, self.pending = self.pending[:num_prompts], self.pending[num_prompts:]
        seq = self.issued
        self.issued += 1
        group_ids = [f"{self.incarnation}:{seq}:{k}" for k in range(len(indices))]
        self.in_flight.update(zip(group_ids, indices))
        env = self.cfg.env.model_dump() if getattr(self.cfg, "env", None) is not None and self.cfg.env.name else {}
        return RolloutTask(
            task_id=f"{self.incarnation}-{seq}", prompts=[self.prompt_ids[i] for i in indices],
            rows=[{"prompt": self.records[i].prompt, **self.records[i].columns} for i in indices],
            group_ids=group_ids,
            group_size=self.cfg.generation.num_generations, sampling=self.sampling,
            max_tokens=self.cfg.generation.max_new_tokens, policy_version=policy_version,
            seed=self.cfg.training.seed * 1_000_003 + seq, env=env)

    # --- groups back --------------------------------------------------------------------------
    def observe(self, group: list[Trajectory]) -> None:
        """A group came back (learned on or dropped): under the accuracy schedule, its rewards move the rolling
        accuracy when it is of the current level (the `accuracy` reward when the run has one, else the total)."""
        row = self.in_flight.pop(group[0].group_id, None)
        if row is None:
            return
        self.received[group[0].group_id] = row
        if self.schedule is None or self.schedule.schedule != "accuracy":
            return
        if self.records[row].columns.get("difficulty") == self.schedule.levels[self.schedule.index]:
            self.schedule.observe([t.reward_components.get("accuracy", t.reward) for t in group])

    def step_metrics(self, batch: list[Trajectory]) -> dict:
        """The batch's metrics per task (prompts, reward, accuracy, length) and the curriculum's level."""
        metrics: dict = {}
        if self.schedule is not None:
            metrics["curriculum_level"] = float(self.schedule.levels[self.schedule.index])
            accuracy = self.schedule.rolling_accuracy()
            if accuracy is not None:
                metrics["curriculum_rolling_accuracy"] = accuracy
        rows = [self.received.get(t.group_id) for t in batch]
        self.received.clear()  # every group back since the last step is in this batch or was dropped
        group_size = self.cfg.generation.num_generations
        if self.schedule is not None and None not in rows:
            levels = [self.records[row].columns["difficulty"] for row in rows]
            for level in self.schedule.levels:
                metrics[f"prompts_at_level/{level}"] = levels.count(level) / group_size
        if self.mixture is None or None in rows:
            return metrics
        tasks = [self.records[row].columns["task"] for row in rows]
        for task in dict.fromkeys(tasks):
            metrics[f"prompts/{task}"] = tasks.count(task) / group_size
        accuracy = [t.reward_components.get("accuracy", t.reward_components.get(f"accuracy/{task}", math.nan))
                    for t, task in zip(batch, tasks)]
        metrics.update(per_task_means([t.reward for t in batch], tasks, "reward_mean"))
        metrics.update(per_task_means(accuracy, tasks, "accuracy"))
        metrics.update(per_task_means([t.num_completion_tokens for t in batch], tasks, "completion_length_mean"))
        return metrics

    def state(self) -> dict:
        state = {"iterator": self.iterator.state(), "pending": list(self.pending), "issued": self.issued,
                 "draws": self.draws}
        if self.schedule is not None:
            state["curriculum"] = self.schedule.state()
        return state

    def restore(self, state: dict) -> None:
        self.iterator = BatchIterator.from_state(len(self.records), self.cfg.training.batch_size, state["iterator"])
        self.pending, self.issued = list(state["pending"]), int(state["issued"])
        self.draws = int(state.get("draws", 0))
        if self.schedule is not None and "curriculum" in state:
            self.schedule.load_state(state["curriculum"])


class ExperienceQueue(Protocol):
    """What the coordinator reads of the experience queue (`distributed.hub.ExperienceHub` under every launcher)."""

    @property
    def stopped(self) -> bool: ...

    def put_task(self, task: RolloutTask) -> None: ...

    def take_groups(self, max_groups: int, timeout: float) -> list[list[Trajectory]]: ...

    def status(self) -> dict: ...

    def stop(self) -> None: ...


class Coordinator:
    def __init__(self, cfg: Config, learner: RLLearner, tasks: TaskSource, hub: ExperienceQueue, *,
                 publish: Callable[[], dict] | None = None, pump: Callable[[], bool] | None = None,
                 watchdog: Callable[[], None] | None = None, echo: Callable[[str], None] = print,
                 actors: int | None = None):
        self.cfg, self.learner, self.tasks, self.hub = cfg, learner, tasks, hub
        self.publish = publish or dict
        self.pump = pump
        self.watchdog = watchdog or (lambda: None)
        self.echo = echo
        rt = cfg.runtime
        self.max_staleness = rt.max_staleness if rt.mode == "async" else 0
        self.batch_groups = cfg.training.batch_size
        self.prompts_per_task = rt.prompts_per_task or max(1, math.ceil(self.batch_groups / (actors or rt.actors)))
        self.groups_outstanding = 0  # issued and not yet learned on or dropped
        self.dropped_stale = 0  # trajectories
        self.dropped_no_signal = 0  # trajectories of groups that scored alike (rl.dynamic_sampling)
        self.dynamic_sampling = cfg.rl.dynamic_sampling
        self.max_sampling_rounds = cfg.rl.max_sampling_rounds
        self.no_signal = NoSignalMonitor(cfg.rl.no_signal_steps)
        self._actor_stats: dict[str, dict] = {}
        self._actor_rates: dict[str, float] = {}  # tokens/s of each actor's latest generation

    # --- the loop -----------------------------------------------------------------------------
    def open(self, resume: str | Path | None = None) -> int:
        """Restore the learner (and the data position) from `resume`; returns the version it starts at."""
        state = self.learner.open(resume)
        if "tasks" in state:
            self.tasks.restore(state["tasks"])
        self._opened = True
        return self.learner.policy_version

    def run(self, resume: str | Path | None = None) -> dict:
        learner = self.learner
        if not getattr(self, "_opened", False):
            self.open(resume)
        try:
            while learner.policy_version < self.cfg.training.max_steps:
                t0 = time.perf_counter()
                self.issue_tasks()
                batch = self.next_batch()
                t1 = time.perf_counter()
                learner.seed_step()
                metrics = learner.learn(batch)
                self.groups_outstanding -= self.batch_groups
                t2 = time.perf_counter()
                sync = self.publish()
                t3 = time.perf_counter()
                metrics.update(rollout_metrics(batch, [rf.name for rf in learner.reward_functions]))
                metrics.update(self.tasks.step_metrics(batch))
                metrics.update(self.runtime_metrics(batch, wait_s=t1 - t0, update_s=t2 - t1, publish_s=t3 - t2,
                                                    step_s=t3 - t0), **sync)
                warning = self.no_signal.update(learner.step, metrics["groups_with_zero_std"], metrics["reward_mean"])
                if warning:
                    self.echo(f"warning: {warning}")
                    metrics["no_signal_warning"] = 1.0
                if self.cfg.training.eval_every and learner.step % self.cfg.training.eval_every == 0:
                    metrics.update(learner.evaluate())
                learner.log(metrics)
                learner.checkpoint(self.checkpoint_state())
            self.hub.stop()
            return learner.finish(self.checkpoint_state())
        finally:
            self.hub.stop()
            learner.close()

    def checkpoint_state(self) -> dict:
        """Data position after the tasks issued so far. In sync mode none is in flight at a checkpoint, so a
        resume replays exactly; in async mode the prompts of tasks in flight are skipped on resume."""
        state = self.tasks.state()
        return {"tasks": state}

    # --- tasks out ----------------------------------------------------------------------------
    def issue_tasks(self) -> None:
        """Admission control: keep (1 + max_staleness) batches of groups in flight, never more."""
        target = self.batch_groups * (1 + self.max_staleness)
        version = self.learner.policy_version
        while self.groups_outstanding < target and not self.hub.stopped:
            n = min(self.prompts_per_task, target - self.groups_outstanding)
            self.hub.put_task(self.tasks.next_task(n, version))
            self.groups_outstanding += n

    # --- trajectories in ----------------------------------------------------------------------
    def next_batch(self) -> list[Trajectory]:
        """`batch_size` whole groups, none older than version - max_staleness."""
        groups: list[list[Trajectory]] = []
        waited_since = time.monotonic()
        no_signal_budget = self.batch_groups * (self.max_sampling_rounds - 1) if self.dynamic_sampling else 0
        while len(groups) < self.batch_groups:
            taken = self.hub.take_groups(self.batch_groups - len(groups), timeout=0.0 if self.pump else 0.2)
            if not taken:
                if self.pump is not None and self.pump():
                    continue
                self.watchdog()
                if time.monotonic() - waited_since > WAIT_LOG_S:
                    self.echo(f"learner: waiting for trajectories at version {self.learner.policy_version} "
                              f"({len(groups)}/{self.batch_groups} groups; {len(self.live_actors())} actors alive)")
                    waited_since = time.monotonic()
                continue
            for group in taken:
                self.tasks.observe(group)  # curriculum: every group of the current level counts, learned or not
                if self.is_stale(group):
                    self.dropped_stale += len(group)
                    self.groups_outstanding -= 1
                elif no_signal_budget > 0 and len({t.reward for t in group}) == 1:
                    # DAPO dynamic sampling: a group that scored alike has no advantage; sample another instead
                    # (at most max_sampling_rounds - 1 batches' worth per step, then train on what there is)
                    no_signal_budget -= 1
                    self.dropped_no_signal += len(group)
                    self.groups_outstanding -= 1
                else:
                    groups.append(group)  # outstanding until learned on
            self.issue_tasks()  # replace what was dropped
        return [t for group in groups for t in group]

    def is_stale(self, group: list[Trajectory]) -> bool:
        """Too old for the staleness bound, or from a version this learner never had (it restarted)."""
        version = self.learner.policy_version
        start = min(t.policy_version for t in group)
        newest = max(t.policy_version for t in group)
        return start < version - self.max_staleness or newest > version

    # --- metrics ------------------------------------------------------------------------------
    def live_actors(self) -> dict[str, dict]:
        return {k: v for k, v in self.hub.status()["actors"].items() if v["alive"]}

    def runtime_metrics(self, batch: list[Trajectory], *, wait_s: float, update_s: float, publish_s: float,
                        step_s: float) -> dict:
        status = self.hub.status()
        counts = status["counts"]
        tokens = sum(t.num_model_tokens for t in batch)
        metrics = {"wait_for_batch_s": wait_s, "update_s": update_s, "publish_s": publish_s, "step_s": step_s,
                   "tokens_per_s": tokens / max(step_s, 1e-9), "queue_groups": status["groups_waiting"],
                   "tasks_in_flight": status["tasks_queued"] + status["tasks_leased"],
                   "dropped_stale": self.dropped_stale, "requeued_tasks": counts["tasks_requeued"],
                   "dropped_no_signal": self.dropped_no_signal,
                   "trajectories_received": counts["trajectories_received"],
                   "duplicate_pushes": counts["duplicate_pushes"]}
        actors = status["actors"]
        generation_s, rates, syncs, sync_bytes, waits = [], [], [], [], []
        for actor_id, stats in actors.items():
            before = self._actor_stats.get(actor_id, {})
            d_tokens = stats.get("tokens", 0.0) - before.get("tokens", 0.0)
            d_gen = stats.get("generation_s", 0.0) - before.get("generation_s", 0.0)
            if d_gen > 0:
                generation_s.append(d_gen)
                self._actor_rates[actor_id] = d_tokens / d_gen
            if actor_id in self._actor_rates and stats["alive"]:
                # its rate over what it generated since the last step, or, when it generated nothing since
                # (an async actor that is a batch ahead), over its latest generation
                rates.append(self._actor_rates[actor_id])
                metrics[f"actor_{actor_id}_tokens_per_s"] = self._actor_rates[actor_id]
            if "weight_sync_ms" in stats:
                syncs.append(stats["weight_sync_ms"])
                sync_bytes.append(stats.get("weight_sync_bytes", 0.0))
                waits.append(stats.get("wait_for_weights_s", 0.0) - before.get("wait_for_weights_s", 0.0))
            self._actor_stats[actor_id] = dict(stats)
        metrics["actors"] = sum(1 for s in actors.values() if s["alive"])
        if generation_s:
            metrics["generation_s"] = max(generation_s)
        if rates:
            metrics["generation_tokens_per_s"] = float(sum(rates))
        if syncs:
            metrics["weight_sync_ms"] = float(np.mean(syncs))
            metrics["weight_sync_bytes"] = float(np.mean(sync_bytes))
            metrics["actor_wait_for_weights_s"] = float(np.sum(waits))
        return metrics
