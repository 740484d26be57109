"""The distributed runtime as a user runs it: a real `lazarus-learner` and real `lazarus-actor` processes on
loopback, killed with SIGKILL where the test says so.

Each run is GRPO on a micro random-init llama with a reward it learns in a few dozen steps (the completion
starts with a digit), so "the reward goes up" is a real learning signal crossing process boundaries.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REDUCED
from grpo_config import config_writer

BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent
STEPS = 16 if REDUCED else 30


def env() -> dict[str, str]:
    path = f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}


@pytest.fixture
def run_config(tmp_path, micro_model_dir):
    return config_writer(tmp_path, micro_model_dir, STEPS, training={"save_every": 2})


#: Runs argv[1:] with SIGINT at its default, as a terminal's foreground job has it. A suite started as a
#: background job of a script inherits SIGINT ignored, and Python then never raises KeyboardInterrupt: the
#: Ctrl-C test would wait out a 1000-step run. Not `preexec_fn`: that forks the pytest worker, whose gRPC
#: threads from earlier tests then broke the child's event engine ("epoll_wait error: Bad file descriptor").
TERMINAL_SIGINT = [sys.executable, "-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                   "os.execv(sys.argv[1], sys.argv[1:])"]


def start_learner(config: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """A `lazarus-learner` process and the address it printed."""
    proc = subprocess.Popen([*TERMINAL_SIGINT, str(BIN / "lazarus-learner"), "--config", str(config), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
    deadline = time.monotonic() + 120
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("listening on "):
            return proc, line.split()[-1]
    proc.kill()
    raise AssertionError("learner did not print its address:\n" + "".join(lines))


def start_actor(address: str, actor_id: str, *args: str, cache: Path,
                extra_env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "lazarus-actor"), "--learner", address, "--id", actor_id, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**env(), "LAZARUS_CACHE": str(cache), **(extra_env or {})})


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out or ""


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def steps(run_dir: Path) -> list[dict]:
    return [m for m in metrics(run_dir) if "reward_mean" in m]


def status(address: str) -> dict:
    out = subprocess.run([str(BIN / "lazarus"), "status", address, "--json"], capture_output=True, text=True,
                         timeout=60, env=env())
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def leased_by(address: str, actor_id: str) -> int:
    """Tasks `actor_id` holds now, per `lazarus status` (0 when the learner did not answer in time: poll again)."""
    out = subprocess.run([str(BIN / "lazarus"), "status", address, "--json"], capture_output=True, text=True,
                         timeout=60, env=env())
    if out.returncode != 0:
        return 0
    return json.loads(out.stdout)["actors"].get(actor_id, {}).get("tasks_leased", 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def reward_went_up(run_dir: Path) -> tuple[float, float]:
    rewards = [m["reward_mean"] for m in steps(run_dir)]
    return sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_learner_and_two_actor_processes_finish_the_run_and_the_reward_goes_up(run_config, tmp_path, mode):
    # given a learner and two actor processes
    config = run_config(runtime={"mode": mode, "max_staleness": 1, "heartbeat_s": 0.3, "lease_s": 3.0})
    learner, address = start_learner(config)
    actors = [start_actor(address, f"a{i}", cache=tmp_path / "cache") for i in range(2)]
    # when the run goes to the end
    seen = status(address)
    code, out = finish(learner)
    # then the learner and both actors exit 0, every step is logged and the reward went up
    assert code == 0, out[-3000:]
    assert all(finish(a)[0] == 0 for a in actors)
    history = steps(tmp_path / "run")
    assert [m["step"] for m in history] == list(range(1, STEPS + 1))
    first, last = reward_went_up(tmp_path / "run")
    assert last > first + 0.2, (first, last)
    # and the staleness rule held: on-policy in sync mode, at most one version behind in async
    assert max(m["staleness_max"] for m in history) <= (0 if mode == "sync" else 1)
    assert {"weight_sync_ms", "wait_for_batch_s", "generation_tokens_per_s", "queue_groups", "dropped_stale",
            "requeued_tasks"} <= history[-1].keys()
    assert seen["incarnation"] and "policy_version" in seen
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()


@pytest.mark.slow
def test_an_actor_killed_with_sigkill_mid_task_is_requeued_and_the_counts_add_up(run_config, tmp_path):
    # given a sync run with two actors whose tasks take over a second each (a slow reward), a0's a minute
    # (so that it is surely still inside its task when it is killed, however loaded the machine)
    config = run_config(generation={"num_generations": 8, "max_new_tokens": 16},
                        training={"max_steps": 8, "batch_size": 8, "save_every": 0},
                        rl={"rewards": [{"function": "runtime_rewards:slow_starts_with_a_digit"}]},
                        eval={"num_prompts": 4, "reward": "runtime_rewards:starts_with_a_digit"})
    # (a1 starts once a0 holds a task: started together on a loaded machine, a1 could do every task first)
    learner, address = start_learner(config)
    actors = {"a0": start_actor(address, "a0", cache=tmp_path / "cache",
                                extra_env={"LAZARUS_TEST_REWARD_SLEEP": "60"})}
    wait_until(lambda: leased_by(address, "a0") > 0, 300, "actor a0 to lease a task")
    actors["a1"] = start_actor(address, "a1", cache=tmp_path / "cache", extra_env={"LAZARUS_TEST_REWARD_SLEEP": "1"})
    # when actor a0 is killed with SIGKILL while it holds a task
    actors["a0"].send_signal(signal.SIGKILL)
    code, out = finish(learner)
    # then the run completes every step with the other actor
    assert code == 0, out[-3000:]
    assert finish(actors["a1"])[0] == 0
    history = steps(tmp_path / "run")
    assert [m["step"] for m in history] == list(range(1, 9))
    # and the dead actor's task went back to the queue once its lease expired
    last = history[-1]
    assert last["requeued_tasks"] >= 1
    # and nothing was counted twice: every trajectory received was learned on (sync: none stale, none left)
    learned = 8 * 8 * 8
    assert last["trajectories_received"] == learned + last["dropped_stale"]
    assert last["dropped_stale"] == 0


@pytest.mark.slow
def test_a_learner_killed_with_sigkill_resumes_and_running_actors_rejoin(run_config, tmp_path):
    # given a learner on a fixed port that checkpoints every 2 steps, and one actor
    port = free_port()
    config = run_config(training={"max_steps": 10, "batch_size": 8, "save_every": 2})
    learner, address = start_learner(config, "--listen", f"127.0.0.1:{port}")
    actor = start_actor(address, "a0", cache=tmp_path / "cache")
    # when the learner is killed with SIGKILL after its step-4 checkpoint
    wait_until(lambda: (tmp_path / "run/checkpoints/step_000004").exists(), 300, "the step-4 checkpoint")
    learner.send_signal(signal.SIGKILL)
    learner.wait()
    # and restarted with --resume on the same address
    resumed, _ = start_learner(config, "--listen", f"127.0.0.1:{port}", "--resume", str(tmp_path / "run"))
    code, out = finish(resumed)
    # then it continues from its checkpoint to the last step, and the actor rejoined by itself and ends cleanly
    assert code == 0, out[-3000:]
    a_code, a_out = finish(actor)
    assert a_code == 0 and "restarted" in a_out, a_out[-2000:]
    logged = [m["step"] for m in steps(tmp_path / "run")]
    assert logged == sorted(set(logged)) and logged[-1] == 10 and set(range(5, 11)) <= set(logged)


@pytest.mark.slow
def test_a_wrong_token_is_refused_in_one_line_and_the_learner_is_unaffected(run_config, tmp_path):
    # given a learner that requires a token
    (tmp_path / "token").write_text("the-right-token\n")
    (tmp_path / "wrong").write_text("not-it\n")
    config = run_config(training={"max_steps": 4})
    learner, address = start_learner(config, "--token-file", str(tmp_path / "token"))
    # when an actor brings the wrong token, and another none at all
    wrong = start_actor(address, "intruder", "--token-file", str(tmp_path / "wrong"), cache=tmp_path / "cache")
    _, wrong_err = wrong.communicate(timeout=120)
    missing = start_actor(address, "anonymous", cache=tmp_path / "cache")
    _, missing_err = missing.communicate(timeout=120)
    # then each exits 2 with one line naming the learner and the reason
    assert wrong.returncode == 2 and missing.returncode == 2
    for err, reason in ((wrong_err, "wrong auth token"), (missing_err, "missing auth token")):
        lines = err.strip().splitlines()
        assert len(lines) == 1 and address in lines[0] and reason in lines[0], err
    # and an actor with the right token finishes the run
    good = start_actor(address, "a0", "--token-file", str(tmp_path / "token"), cache=tmp_path / "cache")
    code, out = finish(learner)
    assert code == 0, out[-3000:]
    assert finish(good)[0] == 0
    joined = [line for line in out.splitlines() if "joined" in line]
    assert not any("intruder" in line or "anonymous" in line for line in joined)
    # and the learner logged the refused peer
    assert "refused" in out and "auth token" in out, out[-3000:]


@pytest.mark.slow
def test_an_actor_started_before_the_learner_joins_when_it_comes_up(run_config, tmp_path):
    # given an actor started first, on an address where nothing listens yet
    port = free_port()
    actor = start_actor(f"127.0.0.1:{port}", "early", cache=tmp_path / "cache")
    time.sleep(3)
    assert actor.poll() is None  # still waiting, with backoff
    # when the learner comes up there
    learner, _ = start_learner(run_config(training={"max_steps": 3}), "--listen", f"127.0.0.1:{port}")
    code, out = finish(learner)
    # then the actor joined, did the work, and exited 0 when the run ended
    assert code == 0, out[-3000:]
    a_code, a_out = finish(actor)
    assert a_code == 0 and "joined learner" in a_out


@pytest.mark.slow
def test_ctrl_c_on_the_learner_stops_the_actors_cleanly(run_config, tmp_path):
    # given a long run with one actor
    learner, address = start_learner(run_config(training={"max_steps": 1000}))
    actor = start_actor(address, "a0", cache=tmp_path / "cache")
    wait_until(lambda: (tmp_path / "run" / "metrics.jsonl").exists() and len(steps(tmp_path / "run")) >= 2, 300,
               "two steps")
    # when the learner gets SIGINT (Ctrl-C)
    learner.send_signal(signal.SIGINT)
    code, out = finish(learner, timeout=60)
    # then it exits promptly, and the actor hears the run is over and exits 0
    assert code == 130, out[-2000:]
    a_code, a_out = finish(actor, timeout=60)
    assert a_code == 0, a_out


@pytest.mark.slow
def test_lazarus_train_with_the_process_launcher_runs_its_own_actors_and_exports(run_config, tmp_path):
    # given a config and the real CLI
    config = run_config(training={"max_steps": 4}, lora={"enabled": True, "rank": 4})
    # when `lazarus train --launcher process --actors 2` runs it
    proc = subprocess.run([str(BIN / "lazarus"), "train", "grpo", "--config", str(config), "--launcher", "process",
                           "--actors", "2"], capture_output=True, text=True, timeout=600,
                          env={**env(), "LAZARUS_CACHE": str(tmp_path / "cache")})
    # then the learner ran every step with both actors, and the adapter was exported
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    history = steps(tmp_path / "run")
    assert [m["step"] for m in history] == [1, 2, 3, 4] and history[-1]["actors"] == 2
    assert (tmp_path / "run" / "adapter" / "adapters.safetensors").exists()
    assert proc.stdout.count("the run is over") == 2


@pytest.mark.slow
def test_runtime_env_workers_score_in_a_pool_of_worker_processes(run_config, tmp_path):
    # given a process-launcher run whose rewards are scored by 2 env workers per actor
    pids = tmp_path / "scorer-pids"
    config = run_config(training={"max_steps": 3}, runtime={"env_workers": 2, "heartbeat_s": 0.3, "lease_s": 3.0},
                        rl={"rewards": [{"function": "runtime_rewards:digit_in_worker_process"}]},
                        eval={"num_prompts": 4, "reward": "digit_in_worker_process"})
    proc = subprocess.run([str(BIN / "lazarus"), "train", "--config", str(config), "--launcher", "process",
                           "--actors", "1"], capture_output=True, text=True, timeout=600,
                          env={**env(), "LAZARUS_CACHE": str(tmp_path / "cache"),
                               "LAZARUS_TEST_SCORER_PIDS": str(pids)})
    # then the run completes, and the rewards were computed in two processes other than the learner and actor
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [m["step"] for m in steps(tmp_path / "run")] == [1, 2, 3]
    scorers = set(pids.read_text().split())
    assert len(scorers) >= 2, scorers
