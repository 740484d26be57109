"""The Ray launcher as a user runs it, on a real local Ray instance inside a loopback-only network namespace.

Ray listens on every interface and probes 8.8.8.8, so nothing of Ray runs in this machine's network: a
session fixture holds a fresh network namespace with only `lo` up (`unshare -n`) and starts ONE Ray head in
it (`ray start --head`, dashboard and usage stats off, auth off; stopped at the end by the pids in that
namespace). Every process of a test (`lazarus train --launcher ray --address ...`, a hand-started
`lazarus-actor`, `lazarus status`) enters that namespace with `nsenter`. PIDs are shared, so the test can
SIGKILL a Ray actor's process by the pid the launcher printed.

Each run is GRPO on a micro random-init llama learning a reward it gets in a few dozen steps (the
completion starts with a digit), as in test_runtime_processes.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from background_run import BackgroundRun
from conftest import REDUCED
from grpo_config import config_writer

pytest.importorskip("ray")

BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent
STEPS = 16 if REDUCED else 30
# `make test`'s xdist workers: each worker that runs a test here starts its own head in its own namespace, and
# `ray start` refuses an address that a running GCS process has on the command line, whatever its namespace
# (it found the other worker's at 6379), so each worker takes its own port.
RAY_PORT = 6379 + int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)

# One xdist group, so that these tests share one worker and its one Ray head where the scheduler allows.
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.xdist_group("ray")]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


class Namespace:
    """A loopback-only network namespace held open by a sleeping process; `enter(cmd)` runs a command in it."""

    def __init__(self):
        hold = "ip link set lo up && echo up && exec sleep 3600"
        self.holder = subprocess.Popen(["unshare", "-n", "bash", "-c", hold], stdout=subprocess.PIPE, text=True)
        if self.holder.stdout.readline().strip() != "up":
            raise RuntimeError("could not bring lo up in a new network namespace")

    def enter(self, command: list[str]) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-n", *command]

    def processes(self) -> list[int]:
        """Every process in this namespace but its holder: exactly what this session started in it."""
        net = os.readlink(f"/proc/{self.holder.pid}/ns/net")
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != self.holder.pid:
                try:
                    if os.readlink(entry / "ns" / "net") == net:
                        found.append(int(entry.name))
                except OSError:
                    pass
        return found

    def close(self) -> None:
        """Stop what runs in the namespace (SIGTERM, then SIGKILL), by pid, then the holder."""
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            for pid in self.processes():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.2)
        self.holder.kill()
        self.holder.wait()


def _can_unshare() -> bool:
    if not (shutil.which("unshare") and shutil.which("nsenter") and shutil.which("ip")):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def ray_head():
    """One Ray head for the whole session, in its own loopback-only namespace: (namespace, address)."""
    if not _can_unshare():
        pytest.skip("needs unshare -n and nsenter (root or user namespaces) to keep Ray off the network")
    ns = Namespace()
    start = ns.enter([str(BIN / "ray"), "start", "--head", f"--port={RAY_PORT}", "--node-ip-address=127.0.0.1",
                      "--num-cpus=4", '--resources={"learner": 1}', "--include-dashboard=false",
                      "--disable-usage-stats"])
    out = subprocess.run(start, capture_output=True, text=True, env=env(), timeout=300)
    if out.returncode != 0:
        ns.close()
        raise AssertionError(f"ray start failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    try:
        yield ns, f"127.0.0.1:{RAY_PORT}"
    finally:
        ns.close()  # Ray's own `ray stop` would stop every Ray on the machine by name; this stops ours by pid
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"  # what `ray stop` would remove
        if current.exists() and current.read_text().strip() == f"127.0.0.1:{RAY_PORT}":
            current.unlink()


class Run(BackgroundRun):
    """`lazarus train grpo --launcher ray` in the namespace, its output collected line by line."""

    def __init__(self, ns: Namespace, config: Path, ray_address: str, actors: int):
        command = [str(BIN / "lazarus"), "train", "grpo", "--config", str(config), "--launcher", "ray", "--actors",
                   str(actors), "--address", ray_address]
        super().__init__(ns.enter(command), env(), finish_timeout=900)


@pytest.fixture
def run_config(tmp_path, micro_model_dir):
    return config_writer(tmp_path, micro_model_dir, STEPS, training={"save_every": 0},
                         runtime={"ray": {"actor_resources": {"num_cpus": 1}}})


def steps(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if line.strip() and "reward_mean" in json.loads(line)]


def status(ns: Namespace, address: str) -> dict:
    out = subprocess.run(ns.enter([str(BIN / "lazarus"), "status", address, "--json"]), capture_output=True,
                         text=True, timeout=60, env=env())
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_grpo_run_with_two_ray_rollout_actors_finishes_and_the_reward_goes_up(ray_head, run_config, tmp_path):
    # given the session's Ray head and a GRPO config
    ns, ray_address = ray_head
    # when `lazarus train --launcher ray --actors 2` joins it and runs to the end
    run = Run(ns, run_config(), ray_address, actors=2)
    code = run.finish()
    # then it exits 0 with every step logged, both Ray actors took part and exited 0, the reward went up
    assert code == 0, run.output[-4000:]
    history = steps(tmp_path / "run")
    assert [m["step"] for m in history] == list(range(1, STEPS + 1))
    for i in range(2):
        assert f"ray: actor ray-actor-{i} started as pid" in run.output
        assert f"ray: actor ray-actor-{i} exited 0" in run.output, run.output[-4000:]
    rewards = [m["reward_mean"] for m in history]
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.2, (first, last)
    assert max(m["staleness_max"] for m in history) == 0  # sync: on-policy across Ray actors too
    # and the learner actor exported the model, as the other launchers do
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()


def test_a_killed_ray_actor_is_restarted_by_ray_and_the_run_completes_with_exact_counts(ray_head, run_config,
                                                                                        tmp_path):
    # given a sync run with two Ray actors whose tasks take over five seconds each (a slow reward)
    ns, ray_address = ray_head
    config = run_config(generation={"num_generations": 8, "max_new_tokens": 48},
                        training={"max_steps": 8, "batch_size": 8, "save_every": 0},
                        rl={"rewards": [{"function": "runtime_rewards:five_second_starts_with_a_digit"}]},
                        eval={"reward": "runtime_rewards:starts_with_a_digit"})
    run = Run(ns, config, ray_address, actors=2)
    learner = run.wait_for(r"ray: learner listening on (\S+)", 300).group(1)
    pid = int(run.wait_for(r"ray: actor ray-actor-0 started as pid (\d+)", 300).group(1))
    # when ray-actor-0's process is killed with SIGKILL while it holds a task
    wait_until(lambda: status(ns, learner)["actors"].get("ray-actor-0", {}).get("tasks_leased", 0) > 0, 300,
               "ray-actor-0 to lease a task")
    # (the actor runs at the priority of whoever started Ray, not the raylet's default +15 niceness)
    assert os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0)
    os.kill(pid, signal.SIGKILL)
    code = run.finish()
    # then Ray restarted it (a new process) and the run completed every step
    assert code == 0, run.output[-4000:]
    assert "ray: actor ray-actor-0 died" in run.output
    restarted = int(re.search(r"ray: actor ray-actor-0 restarted as pid (\d+)", run.output).group(1))
    assert restarted != pid
    history = steps(tmp_path / "run")
    assert [m["step"] for m in history] == list(range(1, 9))
    # and the dead actor's task went back to the queue, and nothing was counted twice
    last = history[-1]
    assert last["requeued_tasks"] >= 1
    assert last["trajectories_received"] == 8 * 8 * 8 + last["dropped_stale"]
    assert last["dropped_stale"] == 0


def test_a_hand_started_lazarus_actor_joins_a_ray_launched_learner(ray_head, run_config, tmp_path):
    # given a hand-started lazarus-actor waiting on the port the Ray-launched learner will listen on
    ns, ray_address = ray_head
    port = free_port()
    # (tasks of 2 prompts, so each step has 4 for the two actors, and each takes a second: the run lasts long
    # enough for the hand-started actor to join however slowly it starts)
    config = run_config(runtime={"heartbeat_s": 0.3, "lease_s": 3.0, "listen": f"127.0.0.1:{port}",
                                 "prompts_per_task": 2, "ray": {"actor_resources": {"num_cpus": 1}}},
                        training={"max_steps": 6, "batch_size": 8, "save_every": 0},
                        rl={"rewards": [{"function": "runtime_rewards:slow_starts_with_a_digit"}]},
                        eval={"reward": "runtime_rewards:starts_with_a_digit"})
    hand = subprocess.Popen(ns.enter([str(BIN / "lazarus-actor"), "--learner", f"127.0.0.1:{port}", "--id", "by-hand"]),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**env(), "LAZARUS_CACHE": str(tmp_path / "cache")})
    # when the Ray launcher starts the learner and one Ray actor
    run = Run(ns, config, ray_address, actors=1)
    code = run.finish()
    hand_out, _ = hand.communicate(timeout=120)
    # then the run completes, and the hand-started actor joined the same learner, did tasks and exited 0
    assert code == 0, run.output[-4000:]
    assert hand.returncode == 0, hand_out[-3000:]
    assert f"joined learner 127.0.0.1:{port}" in hand_out
    tasks = int(re.search(r"the run is over \((\d+) tasks", hand_out).group(1))
    assert tasks >= 1, hand_out[-2000:]
    assert "ray: actor ray-actor-0 started as pid" in run.output, run.output[-4000:]
    assert [m["step"] for m in steps(tmp_path / "run")] == list(range(1, 7))


SCORING_SCRIPT = """
import json, os, sys
import ray
from lazarus.env.rewards import RewardFunction, score
from lazarus.runtime.ray_launcher import ray_scorer
import runtime_rewards

ray.init(address=sys.argv[1], _node_ip_address="127.0.0.1", log_to_driver=False)
functions = [RewardFunction("digit", runtime_rewards.starts_with_a_digit)]
completions = [f"{i} apples" if i % 3 else f"apples {i}" for i in range(10)]
rows = [{"prompt": "count"} for _ in completions]
scorer = ray_scorer(2)
pooled, parts = scorer(functions, ["count"] * 10, completions, [[i] for i in range(10)], rows)
plain, _ = score(functions, ["count"] * 10, completions, [[i] for i in range(10)], rows)
workers = sorted({ray.get(a.call.remote(os.getpid)) for a in scorer.executor.actors})
scorer.close()
print(json.dumps({"pooled": pooled.tolist(), "plain": plain.tolist(), "workers": workers, "driver": os.getpid()}))
"""


def test_the_ray_scoring_pool_scores_in_ray_actors_exactly_as_in_process(ray_head):
    # given the session's Ray head and a reward function importable by its workers
    ns, ray_address = ray_head
    # when a driver scores 10 completions through a pool of 2 Ray scoring actors
    out = subprocess.run(ns.enter([sys.executable, "-c", SCORING_SCRIPT, ray_address]), capture_output=True,
                         text=True, env=env(), timeout=300)
    # then the totals equal in-process scoring, and two worker processes (not the driver) did the work
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["pooled"] == result["plain"]
    assert sorted(set(result["plain"])) == [0.0, 1.0]
    assert len(result["workers"]) == 2 and result["driver"] not in result["workers"]


def test_a_ray_run_with_two_data_parallel_learners_finishes_with_both_replicas_stepping(ray_head, run_config,
                                                                                       tmp_path):
    # given the session's Ray head and a GRPO config with training.learners: 2
    ns, ray_address = ray_head
    config = run_config(training={"max_steps": 6, "batch_size": 8, "save_every": 0, "learners": 2})
    # when `lazarus train --launcher ray --actors 1` runs it to the end
    run = Run(ns, config, ray_address, actors=1)
    code = run.finish()
    # then the learner actor started its follower replica as a Ray actor, and every update was made by both
    assert code == 0, run.output[-4000:]
    assert re.search(r"learner: replica learner-1 started as pid \d+ on 127.0.0.1", run.output), run.output[-4000:]
    assert "learner: 2 data-parallel replicas joined" in run.output
    history = steps(tmp_path / "run")
    assert [m["step"] for m in history] == list(range(1, 7))
    assert all(m["learners"] == 2 for m in history if not m["skipped_update"])
    assert re.search(r"replica learner-1: the run is over \(\d+ steps\)", run.output), run.output[-4000:]


def test_expert_training_with_ray_env_workers_writes_the_same_expert_as_one_process(ray_head, tmp_path):
    # given: the Ray head, and a short CartPole GRU run (2 updates of 8 envs x 128 steps)
    ns, address = ray_head
    runs = {"local": [], "ray": ["--workers", "2", "--launcher", "ray", "--address", address]}
    outputs = {}
    for name, extra in runs.items():
        # when: it trains in one process, then with 2 env workers as Ray actors (the process workers' EnvShard)
        command = [str(BIN / "lazarus"), "experts", "train", "--env", "CartPole-v1", "--arch", "gru", "--out",
                   str(tmp_path / name), "--total-steps", "2048", *extra]
        out = subprocess.run(ns.enter(command), capture_output=True, text=True, timeout=900,
                             env={**env(), "LAZARUS_EXPERTS_DIR": str(tmp_path / "registry")})
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        outputs[name] = out.stdout
    # then: the Ray run joined the cluster, and both wrote the same weights
    assert f"ray: joined the cluster at {address}" in outputs["ray"]
    assert (tmp_path / "local" / "last" / "weights.safetensors").read_bytes() == \
        (tmp_path / "ray" / "last" / "weights.safetensors").read_bytes()
