"""Data-parallel learner replicas (`training.learners`) through the real CLI: real follower processes on
loopback, a real parameter server, SIGKILL for a replica that dies.

The runs are GRPO on a micro random-init llama with a reward that differs within groups (the completion
starts with a digit), so steps make real updates.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from background_run import BackgroundRun
from conftest import REDUCED

BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent
#: float32: the sum of two half-batch gradients vs the whole batch's, after 3 Adam steps
WEIGHT_TOLERANCE = 1e-5
#: Adam divides each gradient by its running RMS, so where a gradient is near zero a float32 rounding
#: difference in it moves the weight by up to lr: a few such elements may differ by more than
#: WEIGHT_TOLERANCE (measured: 1 of 8192, by 1.1e-5), never by more than this share of the largest move
ADAM_OUTLIER_SHARE, ADAM_OUTLIER_TOLERANCE = 1e-3, 0.05
GRAD_NORM_RTOL = 1e-4

pytestmark = pytest.mark.slow


def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "LAZARUS_CACHE": str(tmp_path / "cache"),
            "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.fixture
def config(tmp_path, micro_model_dir):
    from lazarus.data.math import write_math_dataset

    write_math_dataset(tmp_path / "data", n_train=64, n_eval=8, kinds=["arithmetic"], difficulty=1, seed=0)

    def make(name: str, **sections) -> Path:
        cfg = {
            "algorithm": "grpo",
            "model": {"path": str(micro_model_dir)},
            "data": {"train": str(tmp_path / "data/rl_train.jsonl"), "eval": str(tmp_path / "data/rl_eval.jsonl")},
            "optim": {"learning_rate": 0.003},
            "training": {"max_steps": 3, "batch_size": 4, "run_dir": str(tmp_path / name), "progress": False,
                         "save_every": 0},
            "generation": {"num_generations": 4, "max_new_tokens": 6},
            "rl": {"rewards": [{"function": "runtime_rewards:starts_with_a_digit"}]},
            "eval": {"num_prompts": 2, "reward": "starts_with_a_digit"},
            "runtime": {"heartbeat_s": 0.3, "lease_s": 3.0},
        }
        for section, values in sections.items():
            cfg.setdefault(section, {}).update(values)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return make


def train(config: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "lazarus"), "train", "grpo", "--config", str(config), *args],
                          capture_output=True, text=True, env=env(tmp_path), timeout=600)


def steps(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "reward_mean" in r]


def weights(run_dir: Path) -> dict[str, np.ndarray]:
    import mlx.core as mx

    return {k: np.array(v) for k, v in mx.load(str(run_dir / "model" / "model.safetensors")).items()}


@pytest.mark.parametrize("launcher", ["local", "process"])
def test_two_learners_on_halves_make_the_same_updates_as_one_learner_on_the_whole_batch(config, tmp_path,
                                                                                      launcher):
    # given the same run (seed, data, full fine-tuning with Adam and clipping) with one learner and with two
    one = config("one", runtime={"launcher": launcher, "heartbeat_s": 0.3, "lease_s": 3.0})
    two = config("two", training={"learners": 2, "max_steps": 3, "batch_size": 4, "run_dir": str(tmp_path / "two"),
                                  "progress": False, "save_every": 0},
                 runtime={"launcher": launcher, "heartbeat_s": 0.3, "lease_s": 3.0})
    # when both train 3 steps
    single, pair = train(one, tmp_path), train(two, tmp_path)
    # then both finish, and the pair's follower learned its shard of every step that made an update (a step
    # whose groups all scored alike makes none, and the leader does not wait for anyone) and exited at the end
    assert single.returncode == 0, single.stderr[-3000:]
    assert pair.returncode == 0, pair.stderr[-3000:] + pair.stdout[-3000:]
    a, b = steps(tmp_path / "one"), steps(tmp_path / "two")
    assert [m["step"] for m in b] == [1, 2, 3] and all(m["learners"] == 2 for m in b if not m["skipped_update"])
    updated = [(x, y) for x, y in zip(a, b) if not x["skipped_update"]]
    assert updated, "no step made an update: the comparison would be empty"
    followed = int(re.search(r"replica learner-1: the run is over \((\d+) steps\)", pair.stdout).group(1))
    assert followed >= len(updated), pair.stdout[-3000:]
    # and every step's global gradient norm and the final weights agree within float32 tolerance
    for x, y in updated:
        assert y["skipped_update"] == 0.0
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=GRAD_NORM_RTOL)
    expected, got = weights(tmp_path / "one"), weights(tmp_path / "two")
    initial = weights_of_model_dir(one)
    moved = max(float(np.abs(expected[k] - initial[k]).max()) for k in expected)
    assert moved > 100 * WEIGHT_TOLERANCE  # the comparison is not between two untouched copies
    for name in expected:
        difference = np.abs(got[name] - expected[name])
        assert (difference > WEIGHT_TOLERANCE).mean() <= ADAM_OUTLIER_SHARE, name
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=ADAM_OUTLIER_TOLERANCE * moved,
                                   err_msg=name)


def weights_of_model_dir(config_path: Path) -> dict[str, np.ndarray]:
    import mlx.core as mx

    model_dir = Path(yaml.safe_load(config_path.read_text())["model"]["path"])
    return {k: np.array(v) for k, v in mx.load(str(model_dir / "model.safetensors")).items()}


class Run(BackgroundRun):
    """`lazarus train` in the background, its output collected line by line."""

    def __init__(self, config: Path, tmp_path: Path):
        super().__init__([str(BIN / "lazarus"), "train", "grpo", "--config", str(config)], env(tmp_path))


def kill_replica_after_step(run: Run, run_dir: Path, step: int) -> int:
    pid = int(run.wait_for(r"learner: replica learner-1 started as pid (\d+)", 120).group(1))
    deadline = time.monotonic() + 300
    while not ((run_dir / "metrics.jsonl").exists() and len(steps(run_dir)) >= step):
        assert time.monotonic() < deadline and run.proc.poll() is None, run.output[-3000:]
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return pid


@pytest.mark.parametrize("launcher", ["local", "process"])
def test_a_killed_replica_fails_a_synchronous_run_with_an_error_naming_it(config, tmp_path, launcher):
    # given a synchronous two-learner run long enough to be killed in the middle
    path = config("sync", training={"learners": 2, "max_steps": 200, "batch_size": 4,
                                    "run_dir": str(tmp_path / "sync"), "progress": False, "save_every": 0},
                  runtime={"launcher": launcher, "heartbeat_s": 0.3, "lease_s": 3.0})
    run = Run(path, tmp_path)
    # when the follower replica's process is killed with SIGKILL after step 2
    kill_replica_after_step(run, tmp_path / "sync", 2)
    code = run.finish()
    # then the run stops with exit 2 and one line naming the replica and the way out
    assert code == 2, run.output[-3000:]
    error = [line for line in run.lines if line.startswith("error:")]
    assert len(error) == 1, run.output[-3000:]
    assert re.search(r"training.learners: replica learner-1 is lost \(its process exited with code -9\) while step "
                     r"\d+ .*set training.elastic: true", error[0]), error[0]
    assert len(steps(tmp_path / "sync")) < 200


def test_an_elastic_run_continues_with_one_learner_fewer_when_a_replica_is_killed(config, tmp_path):
    # given an elastic two-learner run
    max_steps = 8 if REDUCED else 14
    path = config("elastic", training={"learners": 2, "elastic": True, "max_steps": max_steps, "batch_size": 4,
                                       "run_dir": str(tmp_path / "elastic"), "progress": False, "save_every": 0},
                  runtime={"launcher": "process", "heartbeat_s": 0.3, "lease_s": 3.0})
    run = Run(path, tmp_path)
    # when the follower replica's process is killed with SIGKILL after step 2
    kill_replica_after_step(run, tmp_path / "elastic", 2)
    code = run.finish()
    # then the run completes every step, saying it continued with one of two replicas
    assert code == 0, run.output[-3000:]
    assert "learner: replica learner-1 is lost (its process exited with code -9); continuing with 1 of 2" in run.output
    history = steps(tmp_path / "elastic")
    assert [m["step"] for m in history] == list(range(1, max_steps + 1))
    # and the steps after the loss were cut into one shard (learners is logged where an update was made)
    shards = [m.get("learners", 1.0) for m in history if not m["skipped_update"]]
    assert shards[-1] == 1.0, history[-1]
    assert (tmp_path / "elastic" / "model" / "model.safetensors").exists()


def test_a_replica_that_stops_heartbeating_fails_the_step_after_its_lease(config, tmp_path):
    # given a synchronous two-learner run whose follower will freeze, not exit (as a hung node would)
    path = config("frozen", training={"learners": 2, "max_steps": 200, "batch_size": 4,
                                      "run_dir": str(tmp_path / "frozen"), "progress": False, "save_every": 0},
                  runtime={"launcher": "process", "heartbeat_s": 0.3, "lease_s": 3.0})
    run = Run(path, tmp_path)
    pid = int(run.wait_for(r"learner: replica learner-1 started as pid (\d+)", 120).group(1))
    deadline = time.monotonic() + 300
    while not ((tmp_path / "frozen" / "metrics.jsonl").exists() and len(steps(tmp_path / "frozen")) >= 2):
        assert time.monotonic() < deadline and run.proc.poll() is None, run.output[-3000:]
        time.sleep(0.05)
    # when its process is stopped with SIGSTOP after step 2 (alive to the launcher, silent to the leader)
    os.kill(pid, signal.SIGSTOP)
    try:
        code = run.finish()
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # then the run stops with exit 2 and one line saying the replica was not heard from within the lease
    assert code == 2, run.output[-3000:]
    error = [line for line in run.lines if line.startswith("error:")]
    assert len(error) == 1, run.output[-3000:]
    assert "training.learners: replica learner-1 is lost (it has not been heard from for more than " \
           "runtime.lease_s=3 s)" in error[0], error[0]
